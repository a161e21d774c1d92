// The CUDA kernels of candle-gru, compiled at run time with NVRTC to a CUBIN for the device's own
// compute capability. The same text is compiled as host C++ by the test `cuda_kernel_source`
// (its shim header defines GRU_HOST_SHIM and the CUDA built-ins), so keep to what both accept.
//
// Layouts (row-major, T steps, B batch rows, H hidden units, D directions, G = D * 3H):
// - gi   (T, B, G): input projections, b_ih and b_hr, b_hz folded in; direction d at d * 3H,
//                   gates r|z|n.
// - b_hn (D, H) per launch of `gru_persist_*`, (H) for `gru_gate_*`.
// - lengths (B): step t of row b is valid iff t < lengths[b]; a row past its length keeps its
//                state and its output stays zero (buffers are allocated zeroed).
// All index arithmetic that can exceed 2^31 is done in 64 bits; the host refuses sizes whose
// 32-bit arguments (B * H, B * 3H, ...) would overflow before launching.

#ifndef GRU_HOST_SHIM
#define GRU_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
// Volatile read of the barrier counter: never served from a stale L1 line.
__device__ __forceinline__ unsigned int gru_load_volatile(const unsigned int* p) {
    return *(const volatile unsigned int*)p;
}
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
    if ((unsigned int)t >= lengths[b]) { h_out[idx] = hp; return; }
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
// One launch runs every step of one layer, both directions. The grid is D * nb blocks, all
// co-resident (cooperative launch); block `blk` serves direction d = blk / nb and owns hidden
// units [j0, j0 + U), j0 = (blk % nb) * U. Its rows of W_hh (gates r, z, n of its units, 3U rows
// of H) stay in shared memory for the whole sequence, transposed so that a warp reads consecutive
// rows at one k. Per step: load h (B, H) of its direction, each thread computes one row for 4
// batch rows (gh), the block applies the gates to its units, then the blocks of that direction
// meet at a barrier (a counter in global memory that only grows: nb arrivals per step).
//
// w_hh: (D, 3H, H) as PyTorch stores weight_hh. buf: (T + 2, B, D * H): rows 0..T the layer's
// output, rows T and T + 1 the double-buffered state (step s reads row T + s % 2), direction d
// in columns d * H .. (d + 1) * H. bar: (D) zeroed counters.
// Shared memory: Ws (H, 3U), hs (H, Bp), gs (3U, Bp), Bp = B rounded up to 4.
template <typename T>
__device__ void persist(const T* gi, const T* w_hh, const T* b_hn, const unsigned int* lengths,
                        T* buf, unsigned int* bar, int T_len, int B, int H, int D, int U, int nb) {
    GRU_DYNAMIC_SMEM(smem_raw);
    T* Ws = (T*)smem_raw;
    const int R = 3 * U;
    const int Bp = (B + 3) & ~3;
    T* hs = Ws + (long long)H * R;
    T* gs = hs + (long long)H * Bp;
    const int d = blockIdx.x / nb;
    const int j0 = (blockIdx.x % nb) * U;
    const int tid = threadIdx.x, nt = blockDim.x;
    const long long DH = (long long)D * H;
    const long long G = 3 * DH;
    const long long row_stride = (long long)B * DH;  // one time row of buf

    // This block's weights, zero for units past H (the last block may be partial).
    for (long long i = tid; i < (long long)R * H; i += nt) {
        int r = (int)(i / H), k = (int)(i - (long long)r * H);
        int g = r / U, u = r - g * U;
        int j = j0 + u;
        Ws[(long long)k * R + r] = j < H ? w_hh[((long long)d * 3 * H + g * H + j) * H + k] : T(0);
    }
    // Padding batch columns of hs stay zero.
    for (long long i = tid; i < (long long)H * Bp; i += nt) hs[i] = T(0);
    __syncthreads();

    const int groups = Bp / 4;
    for (int s = 0; s < T_len; ++s) {
        const int t = d == 0 ? s : T_len - 1 - s;
        const int p = s & 1;
        const T* h_in = buf + (T_len + p) * row_stride + (long long)d * H;
        T* h_out = buf + (T_len + 1 - p) * row_stride + (long long)d * H;

        // h of every batch row, transposed: hs[k * Bp + b]. Read around L1: other blocks wrote it.
        for (int i = tid; i < B * H; i += nt) {
            int b = i / H, k = i - b * H;
            hs[(long long)k * Bp + b] = __ldcg(h_in + (long long)b * DH + k);
        }
        __syncthreads();

        // gh for this block's rows: thread -> (row r, batch group of 4).
        for (int item = tid; item < R * groups; item += nt) {
            int bg = item / R, r = item - bg * R;
            const T* hk = hs + bg * 4;
            T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            for (int k = 0; k < H; ++k) {
                T w = Ws[(long long)k * R + r];
                const T* hv = hk + (long long)k * Bp;
                a0 += w * hv[0];
                a1 += w * hv[1];
                a2 += w * hv[2];
                a3 += w * hv[3];
            }
            T* o = gs + (long long)r * Bp + bg * 4;
            o[0] = a0; o[1] = a1; o[2] = a2; o[3] = a3;
        }
        __syncthreads();

        // Gates of this block's units.
        for (int item = tid; item < U * B; item += nt) {
            int b = item / U, u = item - b * U;
            int j = j0 + u;
            if (j >= H) continue;
            T hp = hs[(long long)j * Bp + b];
            if ((unsigned int)t >= lengths[b]) {
                h_out[(long long)b * DH + j] = hp;
                continue;
            }
            const T* gir = gi + ((long long)t * B + b) * G + (long long)d * 3 * H;
            T r = sigm(gir[j] + gs[(long long)u * Bp + b]);
            T z = sigm(gir[H + j] + gs[(long long)(U + u) * Bp + b]);
            T n = tanh(gir[2 * H + j] + r * (gs[(long long)(2 * U + u) * Bp + b] + b_hn[(long long)d * H + j]));
            T hn = n + z * (hp - n);
            h_out[(long long)b * DH + j] = hn;
            buf[(long long)t * row_stride + (long long)b * DH + (long long)d * H + j] = hn;
        }

        if (s + 1 == T_len) break;
        // Barrier of this direction's nb blocks: publish this step's h, wait for everyone's.
        __syncthreads();
        if (nb > 1 && tid == 0) {
            __threadfence();
            atomicAdd(bar + d, 1u);
            const unsigned int target = (unsigned int)(s + 1) * (unsigned int)nb;
            while (gru_load_volatile(bar + d) < target) __nanosleep(20);
            __threadfence();
        }
        __syncthreads();
    }
}

extern "C" __global__ void gru_persist_f32(const float* gi, const float* w_hh, const float* b_hn,
    const unsigned int* lengths, float* buf, unsigned int* bar, int T_len, int B, int H, int D,
    int U, int nb) {
    persist<float>(gi, w_hh, b_hn, lengths, buf, bar, T_len, B, H, D, U, nb);
}
extern "C" __global__ void gru_persist_f64(const double* gi, const double* w_hh, const double* b_hn,
    const unsigned int* lengths, double* buf, unsigned int* bar, int T_len, int B, int H, int D,
    int U, int nb) {
    persist<double>(gi, w_hh, b_hn, lengths, buf, bar, T_len, B, H, D, U, nb);
}
