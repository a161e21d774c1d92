// Host stand-ins for the CUDA built-ins that kernels/gru.cu uses, so that the exact source NVRTC
// compiles also builds as host C++ (test `cuda_kernel_source`). Each CUDA thread of a launch is
// an OS thread (persistent kernel) or an iteration (per-step kernel): see launch.cpp. The cluster
// kernels are built too: a cluster is a group of consecutive blocks sharing one std::barrier, and
// a store into a peer block's shared memory goes to the same offset in that block's buffer.
#pragma once
#define GRU_HOST_SHIM 1
#define GRU_CLUSTER_KERNELS 1
#include <atomic>
#include <barrier>
#include <cmath>
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
inline void __syncthreads() { gru_host::block_barrier->arrive_and_wait(); }
// Threads of a warp run independently here: nothing to reconverge.
inline void __syncwarp() {}
inline void gru_fence_gpu() { std::atomic_thread_fence(std::memory_order_acq_rel); }
inline void __nanosleep(unsigned int) { std::this_thread::yield(); }
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
template <typename T> inline void gru_store_peer(T* p, unsigned int rank, T v) {
    using namespace gru_host;
    auto offset = reinterpret_cast<unsigned char*>(p) - smem;
    if (rank >= cluster_blocks || offset < 0) std::abort();
    *reinterpret_cast<T*>(cluster_smem[rank] + offset) = v;
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
