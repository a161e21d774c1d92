// The CUDA kernels of candle-gru, compiled at run time with NVRTC to a CUBIN for the device's own
// compute capability. The same text is compiled as host C++ by the test `cuda_kernel_source`
// (its shim header defines GRU_HOST_SHIM and the CUDA built-ins), so keep to what both accept.
//
// Layouts (row-major, T steps, B batch rows, H hidden units, D directions, G = D * 3H):
// - gi   (T, B, G): input projections; direction d at d * 3H, gates r|z|n. `gru_gate_*` reads
//                   them with b_ih and b_hr, b_hz folded in; `gru_persist_*` reads x @ W_ih^T
//                   alone and adds `bias` (D, 3H), the same fold, itself (one launch fewer).
// - b_hn (D, H) per launch of `gru_persist_*`, (H) for `gru_gate_*`.
// - lengths (B): step t of row b is valid iff t < lengths[b]; a row past its length keeps its
//                state and its output is zero (`gru_gate_*`: its buffer is allocated zeroed;
//                `gru_persist_*` writes the zeros). A null `lengths` means every row runs all
//                T steps.
// All index arithmetic that can exceed 2^31 is done in 64 bits; the host refuses sizes whose
// 32-bit arguments (B * H, B * 3H, ...) would overflow before launching.

#ifndef GRU_HOST_SHIM
#define GRU_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
// Volatile read of the barrier counter: never served from a stale L1 line.
__device__ __forceinline__ unsigned int gru_load_volatile(const unsigned int* p) {
    return *(const volatile unsigned int*)p;
}
// The grid barrier's fence: acquire-release at GPU scope is what publishing the block's h and
// reading the others' needs (__threadfence is the heavier sequentially consistent fence).
__device__ __forceinline__ void gru_fence_gpu() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }
#endif

template <typename T> __device__ __forceinline__ T sigm(T x) { return T(1) / (T(1) + exp(-x)); }

// --- Per-step gate update -----------------------------------------------------------------------
// One thread per (row, unit): r, z, n, h' and the mask, reading each input once.
// buf: (T + 2, B, H); outputs in rows 0..T, state read from row T + p, written to row T + 1 - p.
// gh = h @ W_hh^T of this step, (B, 3H).
template <typename T>
__device__ void gate(const T* gi, const T* gh, const T* b_hn, const unsigned int* lengths, T* buf,
                     int B, int H, int G, int offset, int t, int T_len, int p) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H;
    const long long BH = (long long)B * H;
    const T* h_in = buf + (T_len + p) * BH;
    T* h_out = buf + (T_len + 1 - p) * BH;
    T hp = h_in[idx];
    if (lengths && (unsigned int)t >= lengths[b]) { h_out[idx] = hp; return; }
    const T* gir = gi + ((long long)t * B + b) * G + offset;
    const T* ghr = gh + (long long)b * 3 * H;
    T r = sigm(gir[j] + ghr[j]);
    T z = sigm(gir[H + j] + ghr[H + j]);
    T n = tanh(gir[2 * H + j] + r * (ghr[2 * H + j] + b_hn[j]));
    T hn = n + z * (hp - n);
    h_out[idx] = hn;
    buf[(long long)t * BH + idx] = hn;
}

extern "C" __global__ void gru_gate_f32(const float* gi, const float* gh, const float* b_hn,
    const unsigned int* lengths, float* buf, int B, int H, int G, int offset, int t, int T_len, int p) {
    gate<float>(gi, gh, b_hn, lengths, buf, B, H, G, offset, t, T_len, p);
}
extern "C" __global__ void gru_gate_f64(const double* gi, const double* gh, const double* b_hn,
    const unsigned int* lengths, double* buf, int B, int H, int G, int offset, int t, int T_len, int p) {
    gate<double>(gi, gh, b_hn, lengths, buf, B, H, G, offset, t, T_len, p);
}

// --- Persistent layer ---------------------------------------------------------------------------
// One launch runs every step of one layer, both directions. Block `blk` serves direction
// d = blk / nb and owns hidden units [j0, j0 + U), j0 = (blk % nb) * U. Its rows of W_hh (gates
// r, z, n of its units: 3U rows) stay in shared memory for the whole sequence. Per step: each
// thread first fetches the input projections of its (unit, batch row) (independent of h, so their
// latency overlaps the rest), each thread computes one row of gh for 4 batch rows over one of KS
// slices of the columns (KS partial sums shorten the dependent chain of adds), each thread
// applies the gates to its (unit, batch row), summing the KS partials, and the blocks of a
// direction exchange the new h. Three ways to exchange it:
// - nb == 1: h stays in this block's shared memory.
// - gru_persist_*: every block writes its units of h to global memory and the nb blocks meet at
//   a barrier (a counter in global memory that only grows: nb arrivals per step; all blocks
//   co-resident by a cooperative launch), then read the whole h back. The exchanged h is kept
//   transposed, (H, B) per direction, as the blocks hold it in shared memory: the read-back is a
//   straight copy (coalesced loads, no bank conflicts) rather than a transpose on every step.
// - gru_persist_cluster<nb>_* (sm_90+, GRU_CLUSTER_KERNELS): the nb blocks of a direction are one
//   thread-block cluster; each block writes its units of h straight into the shared memory of
//   every block of the cluster (double-buffered: step s reads buffer s % 2 and fills the other),
//   and the cluster meets at the hardware cluster barrier. No global memory, no atomics. The
//   barrier's release is a GPU-wide memory fence on every step. With XA (GRU_PERSISTENT_ASYNC)
//   the stores are instead `st.async`, each counted by the receiving block's mbarrier of that
//   buffer (complete_tx), and a block waits on its own mbarrier until all B * H values of the
//   step have arrived: no cluster barrier, no fence. Peers cannot overwrite a buffer still being
//   read: a block fills buffer b at step s only after it has every block's h of step s - 1, which
//   each block sends only after it has read buffer b for the last time (at step s - 1). That
//   holds for blocks that send; a block with no units (U * nb > H) would not hold the others
//   back, so it leaves after setup and nobody sends to it.
// The host guarantees U * B <= blockDim.x and 3U * Bp / 4 * KS <= blockDim.x.
//
// w_hh: (D, 3H, H) as PyTorch stores weight_hh. h0: (D, B, H), or null for zeros. buf holds in
// order: (T, B, D * H) the layer's output (direction d in columns d * H .. (d + 1) * H), (2, D,
// H, B) the double-buffered state of the global exchange (step s >= 1 reads buffer s % 2), (D, B,
// H) h_n, and D barrier counters (one u32 at the start of each of D elements). The kernel writes
// every element of the output and of h_n, so buf need not be initialised, except the counters,
// which must be zero when the grid barrier runs (nb > 1, no cluster).
// Shared memory (elements): Ws (3U, S), hs (NH, H4, Bp), gs (KS, Bp, 3U), where H4 = H rounded
// up to 4, S = H4 (+ 4 when H4 / 4 is even, so that rows start on distinct bank groups), Bp = B
// rounded up to 4, NH = 2 for a cluster, else 1; the padding is zero; then, for a cluster, the
// two 8-byte mbarriers of the XA exchange (one per buffer; the elements before them are an even
// number, so they are 8-byte aligned).

// Thread-block clusters (sm_90+). Only the program built with GRU_CLUSTER_KERNELS (a second NVRTC
// program, for compute capability 9.0 and up) uses them; elsewhere the stubs are never reached.
#if defined(GRU_CLUSTER_KERNELS) && !defined(GRU_HOST_SHIM)
__device__ __forceinline__ unsigned int gru_cluster_size() {
    unsigned int n;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
    return n;
}
// Every thread of every block of the cluster. Arrive has release and wait acquire semantics
// (the defaults): shared-memory stores to any block of the cluster before it are visible to all
// threads of the cluster after it.
__device__ __forceinline__ void gru_cluster_sync() {
    asm volatile("barrier.cluster.arrive.aligned;" ::: "memory");
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
}
// The 32-bit shared-memory address of what `p` points to in this block's shared memory.
__device__ __forceinline__ unsigned int gru_smem_addr(const void* p) {
    unsigned int a;
    asm volatile("{\n\t.reg .u64 t;\n\tcvta.to.shared.u64 t, %1;\n\tcvt.u32.u64 %0, t;\n\t}"
                 : "=r"(a) : "l"(p));
    return a;
}
// The address, in the cluster's shared window, of what `p` points to in this block's shared
// memory, in the block of rank `rank`.
__device__ __forceinline__ unsigned int gru_peer_addr(const void* p, unsigned int rank) {
    unsigned int remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(gru_smem_addr(p)), "r"(rank));
    return remote;
}
__device__ __forceinline__ void gru_store_peer(float* p, unsigned int rank, float v) {
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(gru_peer_addr(p, rank)), "f"(v) : "memory");
}
__device__ __forceinline__ void gru_store_peer(double* p, unsigned int rank, double v) {
    asm volatile("st.shared::cluster.f64 [%0], %1;" ::"r"(gru_peer_addr(p, rank)), "d"(v) : "memory");
}
// st.async needs PTX ISA 8.1 (CUDA 12.1). With an older NVRTC the XA flag is ignored (the cluster
// barrier exchange runs) rather than the whole cluster program being refused.
#if __CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 1)
#define GRU_HAS_ST_ASYNC 1
#endif
// The XA exchange's mbarriers (one per buffer, in this block's shared memory).
// `count` arrivals a phase; visible to the cluster's stores after gru_mbar_init_fence and a
// cluster barrier.
__device__ __forceinline__ void gru_mbar_init(unsigned long long* bar, unsigned int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(gru_smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void gru_mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// This block's one arrival of the phase, expecting `bytes` of st.async stores in it (some may
// have completed already: the transaction count may run below zero until then).
__device__ __forceinline__ void gru_mbar_expect(unsigned long long* bar, unsigned int bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(gru_smem_addr(bar)), "r"(bytes)
                 : "memory");
}
// Until the phase of parity `parity` has completed. Acquire at cluster scope: the st.async
// stores it counted come from other blocks of the cluster (st.async runs in the generic proxy:
// no proxy fence is needed before ordinary loads of them).
__device__ __forceinline__ void gru_mbar_wait(unsigned long long* bar, unsigned int parity) {
    asm volatile(
        "{\n\t.reg .pred done;\n"
        "GRU_MBAR_WAIT:\n\t"
        "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], %1;\n\t"
        "@!done bra GRU_MBAR_WAIT;\n\t}" ::"r"(gru_smem_addr(bar)), "r"(parity) : "memory");
}
// `v` into what `p` points to in the block of rank `rank`, counted by that block's `bar`.
#ifdef GRU_HAS_ST_ASYNC
__device__ __forceinline__ void gru_store_peer_async(float* p, unsigned long long* bar,
                                                     unsigned int rank, float v) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];"
                 ::"r"(gru_peer_addr(p, rank)), "r"(__float_as_uint(v)), "r"(gru_peer_addr(bar, rank))
                 : "memory");
}
__device__ __forceinline__ void gru_store_peer_async(double* p, unsigned long long* bar,
                                                     unsigned int rank, double v) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b64 [%0], %1, [%2];"
                 ::"r"(gru_peer_addr(p, rank)), "l"(__double_as_longlong(v)), "r"(gru_peer_addr(bar, rank))
                 : "memory");
}
#else
template <typename T>
__device__ __forceinline__ void gru_store_peer_async(T*, unsigned long long*, unsigned int, T) { __trap(); }
#endif
#elif !defined(GRU_HOST_SHIM)
__device__ __forceinline__ unsigned int gru_cluster_size() { return 0; }
__device__ __forceinline__ void gru_cluster_sync() { __trap(); }
template <typename T> __device__ __forceinline__ void gru_store_peer(T*, unsigned int, T) { __trap(); }
__device__ __forceinline__ void gru_mbar_init(unsigned long long*, unsigned int) { __trap(); }
__device__ __forceinline__ void gru_mbar_init_fence() { __trap(); }
__device__ __forceinline__ void gru_mbar_expect(unsigned long long*, unsigned int) { __trap(); }
__device__ __forceinline__ void gru_mbar_wait(unsigned long long*, unsigned int) { __trap(); }
template <typename T>
__device__ __forceinline__ void gru_store_peer_async(T*, unsigned long long*, unsigned int, T) { __trap(); }
#endif

// Four consecutive values, 16-byte aligned.
template <typename T> struct Four { T v[4]; };
__device__ __forceinline__ Four<float> load4(const float* p) {
    float4 q = *(const float4*)p;
    return Four<float>{{q.x, q.y, q.z, q.w}};
}
__device__ __forceinline__ Four<double> load4(const double* p) {
    double2 a = *(const double2*)p, b = *(const double2*)(p + 2);
    return Four<double>{{a.x, a.y, b.x, b.y}};
}

__device__ __forceinline__ void store4(float* p, Four<float> v) {
    *(float4*)p = float4{v.v[0], v.v[1], v.v[2], v.v[3]};
}
__device__ __forceinline__ void store4(double* p, Four<double> v) {
    *(double2*)p = double2{v.v[0], v.v[1]};
    *(double2*)(p + 2) = double2{v.v[2], v.v[3]};
}
// load4 from global memory around L1 (other blocks wrote it).
__device__ __forceinline__ Four<float> ldcg4(const float* p) {
    float4 q = __ldcg((const float4*)p);
    return Four<float>{{q.x, q.y, q.z, q.w}};
}
__device__ __forceinline__ Four<double> ldcg4(const double* p) {
    double2 a = __ldcg((const double2*)p), b = __ldcg((const double2*)(p + 2));
    return Four<double>{{a.x, a.y, b.x, b.y}};
}

// Columns of W_hh h summed in one chain of fused multiply-adds (a multiple of 4: the loads'
// width), as the CPU kernel's `CHAIN`.
#define GRU_CHAIN 64

// a0..a3 += the products of row `wr` and h of 4 batch rows (`hk`, columns of stride Bp) over
// columns k_lo .. k_hi (multiples of 4), one chain of fused multiply-adds per batch row.
template <typename T>
__device__ __forceinline__ void row_sums(const T* wr, const T* hk, int Bp, int k_lo, int k_hi, T& a0,
                                         T& a1, T& a2, T& a3) {
    for (int k = k_lo; k < k_hi; k += 4) {
        // Every load of the 4 columns first, then the arithmetic: the loads' latencies overlap
        // instead of adding up (a block has few warps to hide them behind).
        Four<T> w = load4(wr + k);
        Four<T> h[4];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) h[kk] = load4(hk + (long long)(k + kk) * Bp);
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            a0 += w.v[kk] * h[kk].v[0];
            a1 += w.v[kk] * h[kk].v[1];
            a2 += w.v[kk] * h[kk].v[2];
            a3 += w.v[kk] * h[kk].v[3];
        }
    }
}

template <typename T, bool CLUSTER>
__device__ void persist(const T* gi, const T* w_hh, const T* b_hn, const T* bias, const T* h0,
                        const unsigned int* lengths, T* buf, int T_len, int B, int H, int D, int U,
                        int nb, int KS, int XA) {
    GRU_DYNAMIC_SMEM(smem_raw);
    const int R = 3 * U;
    const int H4 = (H + 3) & ~3;
    const int S = ((H4 / 4) % 2 == 0) ? H4 + 4 : H4;
    const int Bp = (B + 3) & ~3;
    const int G4 = Bp / 4;
    // The launch must give every gate item and every row item a thread (see PersistentPlan),
    // and a cluster kernel must run as clusters of nb blocks.
    if (KS < 1 || U * B > (int)blockDim.x || R * G4 * KS > (int)blockDim.x) __trap();
    if (CLUSTER && gru_cluster_size() != (unsigned int)nb) __trap();
#if defined(GRU_HAS_ST_ASYNC) || defined(GRU_HOST_SHIM)
    const bool xa = CLUSTER && XA != 0;  // the st.async exchange (a cluster kernel only)
#else
    const bool xa = false;
    (void)XA;
#endif
    // Columns per row item: a multiple of 4 (16-byte loads); the last slices may be short or empty.
    const int KC = ((H4 / 4 + KS - 1) / KS) * 4;
    const bool local_h = CLUSTER || nb == 1;  // h lives in shared memory between steps
    const long long HB = (long long)H4 * Bp;
    T* Ws = (T*)smem_raw;
    T* hs = Ws + (long long)R * S;
    T* gs = hs + (CLUSTER ? 2 : 1) * HB;
    unsigned long long* mbar = (unsigned long long*)(gs + (long long)KS * Bp * R);  // [2]
    const unsigned int step_bytes = (unsigned int)(B * H) * (unsigned int)sizeof(T);
    const int d = blockIdx.x / nb;
    const int rank = blockIdx.x % nb;
    const int j0 = rank * U;
    const int tid = threadIdx.x, nt = blockDim.x;
    const long long DH = (long long)D * H;
    const long long G = 3 * DH;
    const long long row_stride = (long long)B * DH;  // one time row of buf
    T* state = buf + T_len * row_stride;  // (2, D, H, B)
    T* h_n = state + 2 * row_stride + (long long)d * B * H;
    // This direction's barrier counter: the first 4 bytes of element d of the counter region.
    unsigned int* bar = (unsigned int*)(state + 2 * row_stride + (long long)D * B * H + d);
    if (h0) h0 += (long long)d * B * H;

    // This block's weights (row r = g * U + u is gate g of unit j0 + u), zero past H.
    for (long long i = tid; i < (long long)R * S; i += nt) {
        int r = (int)(i / S), k = (int)(i - (long long)r * S);
        int g = r / U, u = r - g * U;
        int j = j0 + u;
        Ws[i] = (j < H && k < H) ? w_hh[((long long)d * 3 * H + g * H + j) * H + k] : T(0);
    }
    for (long long i = tid; i < (CLUSTER ? 2 : 1) * HB; i += nt) hs[i] = T(0);
    __syncthreads();
    if (local_h && h0)  // the state lives in shared memory from here on (buffer 0 first)
        for (int i = tid; i < B * H; i += nt) {
            int b = i / H, k = i - b * H;
            hs[(long long)k * Bp + b] = h0[i];
        }

    // This thread's gate item (unit u, batch row gb) and row item (row mr, batch group mg,
    // column slice mk).
    const int gu = tid % U, gb = tid / U;
    const int gj = j0 + gu;
    const bool has_gate = gb < B && gj < H;
    const T bhn = has_gate ? b_hn[(long long)d * H + gj] : T(0);
    const T* bias_d = bias + (long long)d * 3 * H + gj;
    const T br = has_gate ? bias_d[0] : T(0);
    const T bz = has_gate ? bias_d[H] : T(0);
    const T bn = has_gate ? bias_d[2 * H] : T(0);
    const unsigned int glen = !has_gate ? 0u : lengths ? lengths[gb] : (unsigned int)T_len;
    const T* gi_d = gi + (long long)d * 3 * H + gj;
    // This thread's input projections of step t (gates r, z, n), or zeros when not valid.
    auto fetch = [&](int t, T& r, T& z, T& n) {
        if (has_gate && (unsigned int)t < glen) {
            const T* g = gi_d + ((long long)t * B + gb) * G;
            r = g[0] + br; z = g[H] + bz; n = g[2 * H] + bn;
        }
    };
    T nr = 0, nz = 0, nn = 0;
    fetch(d == 0 ? 0 : T_len - 1, nr, nz, nn);
    const int mr = tid % R, mrest = tid / R;
    const int mg = mrest % G4, mk = mrest / G4;
    const bool has_row = mk < KS;
    const int k_lo = mk * KC;
    const int k_hi = k_lo + KC < H4 ? k_lo + KC : H4;
    // The XA exchange's mbarriers, one arrival (this block's expect_tx) a phase.
    if (xa && tid == 0) {
        gru_mbar_init(&mbar[0], 1);
        gru_mbar_init(&mbar[1], 1);
        gru_mbar_init_fence();
    }
    // Peers write into this block's second buffer from step 0 on: not before it is zeroed (and
    // its mbarrier initialised).
    if (CLUSTER) gru_cluster_sync(); else __syncthreads();
    // The blocks that own units; with XA the others leave (see above).
    const int nb_live = (H + U - 1) / U;
    if (xa && rank >= nb_live) return;

    for (int s = 0; s < T_len; ++s) {
        const int t = d == 0 ? s : T_len - 1 - s;
        const int p = s & 1;
        T* h_out = state + (1 - p) * row_stride + (long long)d * H * B;  // (H, B)
        T* hcur = hs + (CLUSTER ? p * HB : 0);

        // This step's input projections were fetched during the previous step; fetch the next
        // step's now: they do not depend on h, so their latency hides behind this step.
        const bool valid = has_gate && (unsigned int)t < glen;
        const T xr = nr, xz = nz, xn = nn;
        if (s + 1 < T_len) fetch(d == 0 ? s + 1 : T_len - 2 - s, nr, nz, nn);
        if (xa) {
            // This step's h (sent at step s - 1: fill (s - 1) / 2 of buffer p) must have arrived.
            if (s > 0) gru_mbar_wait(&mbar[p], (unsigned int)((s - 1) >> 1) & 1u);
            // The other buffer's next phase: the fill of this step (its previous phase, step
            // s - 2's, completed before this block passed step s - 1's wait).
            if (tid == 0 && s + 1 < T_len) gru_mbar_expect(&mbar[1 - p], step_bytes);
        }
        // h of every batch row, transposed: hs[k * Bp + b]. Consecutive threads take consecutive
        // b: consecutive shared-memory addresses (no bank conflicts) and, from the exchange
        // buffer, consecutive global ones.
        if (!local_h) {
            const T* src = state + p * row_stride + (long long)d * H * B;  // (H, B)
            if (s == 0) {
                for (int i = tid; i < B * H; i += nt) {
                    int k = i / B, b = i - k * B;
                    hs[(long long)k * Bp + b] = h0 ? h0[(long long)b * H + k] : T(0);
                }
            } else if (B == Bp) {  // hs's rows are src's rows: a straight copy, 4 at a time
#pragma unroll 4
                for (int i = 4 * tid; i < B * H; i += 4 * nt) store4(hs + i, ldcg4(src + i));
            } else {
#pragma unroll 4
                for (int i = tid; i < B * H; i += nt) {
                    int k = i / B, b = i - k * B;
                    hs[(long long)k * Bp + b] = __ldcg(src + i);
                }
            }
            __syncthreads();
        }

        // gh of row mr for batch rows 4 mg .. 4 mg + 3, over columns k_lo .. k_hi.
        if (has_row) {
            const T* wr = Ws + (long long)mr * S;
            const T* hk = hcur + mg * 4;
            T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            if (sizeof(T) == 4) {
                // f32: chains of GRU_CHAIN columns, each chain's sums added to the sums before
                // it, as the CPU kernel sums: one chain of H fused multiply-adds carries about
                // sqrt(H) roundings and left wide layers twice as far from the exact answer as
                // PyTorch (issue 28). The adds cost 4 per 64 columns.
                for (int c = k_lo; c < k_hi; c += GRU_CHAIN) {
                    const int c_hi = c + GRU_CHAIN < k_hi ? c + GRU_CHAIN : k_hi;
                    T c0 = 0, c1 = 0, c2 = 0, c3 = 0;
                    row_sums(wr, hk, Bp, c, c_hi, c0, c1, c2, c3);
                    a0 += c0; a1 += c1; a2 += c2; a3 += c3;
                }
            } else {
                // f64 needs no chains (the f32 answer is its rounding) and, in one, keeps its
                // registers (96 on sm_80, not 128).
                row_sums(wr, hk, Bp, k_lo, k_hi, a0, a1, a2, a3);
            }
            // gs[mk][b][row]: consecutive rows (threads) at consecutive addresses, here and in
            // the gate reads below.
            T* o = gs + ((long long)mk * Bp + mg * 4) * R + mr;
            o[0] = a0; o[R] = a1; o[2 * R] = a2; o[3 * R] = a3;
        }
        __syncthreads();

        // The gates of this thread's (unit, batch row). Its output element (zero past the row's
        // length, as pad_packed_sequence pads) is stored after this step's barrier, below.
        T* out = nullptr;
        T out_v = T(0);
        if (has_gate) {
            T hp = hcur[(long long)gj * Bp + gb];
            T hn = hp;
            out = buf + (long long)t * row_stride + (long long)gb * DH + (long long)d * H + gj;
            if (valid) {
                T ar = 0, az = 0, an = 0;
                for (int m = 0; m < KS; ++m) {
                    const T* g = gs + ((long long)m * Bp + gb) * R + gu;
                    ar += g[0];
                    az += g[U];
                    an += g[2 * U];
                }
                T r = sigm(xr + ar);
                T z = sigm(xz + az);
                T n = tanh(xn + r * (an + bhn));
                hn = n + z * (hp - n);
                out_v = hn;
            }
            if (CLUSTER) {
                // Into the other buffer of every block of the cluster (none after the last step:
                // a block may then exit, and its shared memory with it).
                if (s + 1 < T_len) {
                    T* dst = hs + (1 - p) * HB + (long long)gj * Bp + gb;
                    if (xa)
                        for (int q = 0; q < nb_live; ++q)
                            gru_store_peer_async(dst, &mbar[1 - p], (unsigned int)q, hn);
                    else
                        for (int q = 0; q < nb; ++q) gru_store_peer(dst, (unsigned int)q, hn);
                }
            } else if (nb == 1) {
                hs[(long long)gj * Bp + gb] = hn;
            } else {
                h_out[(long long)gj * B + gb] = hn;
            }
            if (s + 1 == T_len) {
                h_n[(long long)gb * H + gj] = hn;
                *out = out_v;
            }
        }

        if (s + 1 == T_len) break;
        if (xa) {
            // This block's reads of gs before the next step's writes; h arrives by mbarrier.
            __syncthreads();
        } else if (CLUSTER) {
            // Publishes this step's h to every block of the cluster, and orders this step's reads
            // of gs and hcur before the next step's writes (peers fill hcur's buffer at step
            // s + 1). The warp reconverges first: the barrier is the .aligned form.
            __syncwarp();
            gru_cluster_sync();
        } else {
            // Barrier of this direction's nb blocks: publish this step's h, wait for everyone's.
            __syncthreads();
            if (nb > 1) {
                if (tid == 0) {
                    gru_fence_gpu();
                    atomicAdd(bar, 1u);
                    const unsigned int target = (unsigned int)(s + 1) * (unsigned int)nb;
                    while (gru_load_volatile(bar) < target) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
                        __nanosleep(20);  // sm_70+; older GPUs just spin
#endif
                    }
                    gru_fence_gpu();
                }
                __syncthreads();
            }
        }
        // This step's output, after the barrier: the barrier's memory fence (a cluster barrier's
        // release, the grid barrier's fence) waits until every store issued before it
        // has reached the GPU's memory, so a store of the output there would add a global
        // store's round trip to every step; here it completes during the next step.
        if (out) *out = out_v;
    }
}

#define GRU_PERSIST_ARGS(T)                                                                      \
    const T *gi, const T *w_hh, const T *b_hn, const T *bias, const T *h0,                     \
        const unsigned int *lengths, T *buf, int T_len, int B, int H, int D, int U, int nb, int KS, \
        int XA
#define GRU_PERSIST_CALL gi, w_hh, b_hn, bias, h0, lengths, buf, T_len, B, H, D, U, nb, KS, XA

// Register caps on the f32 kernels: the plans' thread counts (up to 768, e.g. medium's column
// split of 4, the fastest measured) need at most 80 registers a thread; uncapped, ptxas takes 96
// and a block could run only 672 threads. At this cap it spills nothing (scripts/nvrtc_check.py
// prints both).
extern "C" __global__ void __launch_bounds__(768) gru_persist_f32(GRU_PERSIST_ARGS(float)) {
    persist<float, false>(GRU_PERSIST_CALL);
}
extern "C" __global__ void gru_persist_f64(GRU_PERSIST_ARGS(double)) {
    persist<double, false>(GRU_PERSIST_CALL);
}

// One kernel per cluster size: the size is fixed at compile time (`__cluster_dims__`), so that a
// plain launch runs the grid as clusters of that many blocks.
#ifdef GRU_CLUSTER_KERNELS
#define GRU_CLUSTER_KERNEL(N, T, SUFFIX, BOUNDS)                                                  \
    extern "C" __global__ void __cluster_dims__(N, 1, 1) BOUNDS                                   \
        gru_persist_cluster##N##_##SUFFIX(GRU_PERSIST_ARGS(T)) {                                  \
        persist<T, true>(GRU_PERSIST_CALL);                                                       \
    }
#define GRU_F32_BOUNDS __launch_bounds__(768)
#define GRU_NO_BOUNDS
GRU_CLUSTER_KERNEL(2, float, f32, GRU_F32_BOUNDS)
GRU_CLUSTER_KERNEL(4, float, f32, GRU_F32_BOUNDS)
GRU_CLUSTER_KERNEL(8, float, f32, GRU_F32_BOUNDS)
GRU_CLUSTER_KERNEL(2, double, f64, GRU_NO_BOUNDS)
GRU_CLUSTER_KERNEL(4, double, f64, GRU_NO_BOUNDS)
GRU_CLUSTER_KERNEL(8, double, f64, GRU_NO_BOUNDS)
#endif
