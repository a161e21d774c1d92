// Host stand-ins for the CUDA built-ins that kernels/gru.cu uses, so that the exact source NVRTC
// compiles also builds as host C++ (test `cuda_kernel_source`). Each CUDA thread of a launch is
// an OS thread (persistent kernel) or an iteration (per-step kernel): see launch.cpp.
#pragma once
#define GRU_HOST_SHIM 1
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
}  // namespace gru_host

#define blockIdx (gru_host::block_idx)
#define threadIdx (gru_host::thread_idx)
#define blockDim (gru_host::block_dim)
#define gridDim (gru_host::grid_dim)
#define GRU_DYNAMIC_SMEM(name) unsigned char* name = gru_host::smem

[[noreturn]] inline void __trap() { std::abort(); }
inline void __syncthreads() { gru_host::block_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned int) { std::this_thread::yield(); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned int gru_load_volatile(const unsigned int* p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <typename T> inline T __ldcg(const T* p) {
    T v;
    __atomic_load(p, &v, __ATOMIC_RELAXED);
    return v;
}
