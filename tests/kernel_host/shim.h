// Host stand-ins for the CUDA built-ins that cuda/gru.cu uses, so that the exact source NVRTC
// compiles also builds as host C++ (test `cuda_kernel_source`). Each CUDA thread of a launch is
// an OS thread (persistent kernel) or an iteration (per-step kernel): see launch.cpp. The cluster
// kernels are built too: a cluster is a group of consecutive blocks sharing one std::barrier, a
// store into a peer block's shared memory goes to the same offset in that block's buffer, and an
// mbarrier (the st.async exchange) is its 8 bytes updated by compare-and-swap.
#pragma once
#define GRU_HOST_SHIM 1
#define GRU_CLUSTER_KERNELS 1
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>

using std::exp;
using std::tanh;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
#define __align__(n) alignas(n)
#define __cluster_dims__(...)
#define __launch_bounds__(...)

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};

struct dim3 {
    unsigned int x = 0, y = 0, z = 0;
};

namespace gru_host {
// What the launcher sets for each emulated thread.
extern thread_local dim3 block_idx, thread_idx, block_dim, grid_dim;
extern thread_local unsigned char* smem;
extern thread_local std::barrier<>* block_barrier;
// Cluster launches only: the barrier of every thread of this block's cluster, and the shared
// memory of each block of the cluster by rank.
extern thread_local std::barrier<>* cluster_barrier;
extern thread_local unsigned char* const* cluster_smem;
extern thread_local unsigned int cluster_blocks;
}  // namespace gru_host

#define blockIdx (gru_host::block_idx)
#define threadIdx (gru_host::thread_idx)
#define blockDim (gru_host::block_dim)
#define gridDim (gru_host::grid_dim)
#define GRU_DYNAMIC_SMEM(name) unsigned char* name = gru_host::smem

[[noreturn]] inline void __trap() { std::abort(); }
namespace gru_host {
// One wait of a kernel thread (on the grid barrier's counter or an mbarrier): one that lasts
// 120 s is taken for a deadlock, and the test fails with a message instead of hanging.
struct Wait {
    const char* what;
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    unsigned long spins = 0;
    void spin() {
        std::this_thread::yield();
        if (++spins % 4096 == 0 && std::chrono::steady_clock::now() - start > std::chrono::seconds(120)) {
            std::fprintf(stderr, "kernel deadlocked: block %u thread %u waited 120 s on %s\n",
                         block_idx.x, thread_idx.x, what);
            std::abort();
        }
    }
};
// The grid barrier's wait: its spin sleeps with __nanosleep, between two gru_fence_gpu.
inline thread_local Wait grid_wait{"the grid barrier"};
}  // namespace gru_host
inline void __syncthreads() { gru_host::block_barrier->arrive_and_wait(); }
// Threads of a warp run independently here: nothing to reconverge.
inline void __syncwarp() {}
inline void gru_fence_gpu() {
    std::atomic_thread_fence(std::memory_order_acq_rel);
    gru_host::grid_wait = gru_host::Wait{"the grid barrier"};
}
inline void __nanosleep(unsigned int) { gru_host::grid_wait.spin(); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned int gru_load_volatile(const unsigned int* p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
inline unsigned int gru_cluster_size() { return gru_host::cluster_blocks; }
inline void gru_cluster_sync() {
    if (!gru_host::cluster_barrier) std::abort();
    gru_host::cluster_barrier->arrive_and_wait();
}
// The XA exchange's mbarriers: the whole state in the barrier's 8 bytes, updated by CAS: the
// transaction count (signed, bits 0-31), arrivals pending (32-47), arrivals a phase (48-62),
// the phase's parity (63). A phase completes when both counts are zero.
namespace gru_host {
struct Mbar {
    int tx;
    unsigned pending, count, phase;
};
inline unsigned long long mbar_pack(Mbar m) {
    return (unsigned long long)(unsigned)m.tx | (unsigned long long)m.pending << 32 |
           (unsigned long long)m.count << 48 | (unsigned long long)m.phase << 63;
}
inline Mbar mbar_unpack(unsigned long long v) {
    return Mbar{(int)(unsigned)v, (unsigned)(v >> 32) & 0xffffu, (unsigned)(v >> 48) & 0x7fffu,
                (unsigned)(v >> 63)};
}
inline void mbar_update(unsigned long long* bar, int dtx, unsigned arrivals) {
    std::atomic_ref<unsigned long long> a(*bar);
    unsigned long long old = a.load(std::memory_order_relaxed);
    for (;;) {
        Mbar m = mbar_unpack(old);
        if (arrivals > m.pending || m.count == 0) std::abort();  // more arrivals than the phase has
        m.tx += dtx;
        m.pending -= arrivals;
        if (m.pending == 0 && m.tx == 0) {
            m.phase ^= 1;
            m.pending = m.count;
        }
        if (a.compare_exchange_weak(old, mbar_pack(m), std::memory_order_acq_rel,
                                    std::memory_order_relaxed))
            return;
    }
}
// What `p` (in this block's shared memory) points to in the block of rank `rank`.
template <typename T> inline T* peer(T* p, unsigned int rank) {
    auto offset = reinterpret_cast<unsigned char*>(p) - smem;
    if (rank >= cluster_blocks || offset < 0) std::abort();
    return reinterpret_cast<T*>(cluster_smem[rank] + offset);
}
}  // namespace gru_host
template <typename T> inline void gru_store_peer(T* p, unsigned int rank, T v) {
    *gru_host::peer(p, rank) = v;
}
inline void gru_mbar_init(unsigned long long* bar, unsigned int count) {
    std::atomic_ref<unsigned long long>(*bar).store(gru_host::mbar_pack({0, count, count, 0}),
                                                    std::memory_order_release);
}
inline void gru_mbar_init_fence() { std::atomic_thread_fence(std::memory_order_release); }
inline void gru_mbar_expect(unsigned long long* bar, unsigned int bytes) {
    gru_host::mbar_update(bar, (int)bytes, 1);
}
inline void gru_mbar_wait(unsigned long long* bar, unsigned int parity) {
    std::atomic_ref<unsigned long long> a(*bar);
    gru_host::Wait wait{"an mbarrier"};
    while (gru_host::mbar_unpack(a.load(std::memory_order_acquire)).phase == parity) wait.spin();
}
template <typename T>
inline void gru_store_peer_async(T* p, unsigned long long* bar, unsigned int rank, T v) {
    *gru_host::peer(p, rank) = v;
    gru_host::mbar_update(gru_host::peer(bar, rank), -(int)sizeof(T), 0);
}
template <typename T> inline T __ldcg(const T* p) {
    T v;
    __atomic_load(p, &v, __ATOMIC_RELAXED);
    return v;
}
// The vector loads element by element (each one atomic, as a GPU's 16-byte load is per element
// with respect to other blocks' stores).
inline float4 __ldcg(const float4* p) {
    const float* f = &p->x;
    return float4{__ldcg(f), __ldcg(f + 1), __ldcg(f + 2), __ldcg(f + 3)};
}
inline double2 __ldcg(const double2* p) {
    const double* f = &p->x;
    return double2{__ldcg(f), __ldcg(f + 1)};
}
