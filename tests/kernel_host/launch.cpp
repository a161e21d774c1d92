// Launches the host-compiled kernels of cuda/gru.cu with a given grid and block, the way the
// CUDA path does: the per-step gate kernel thread by thread (it has no barrier), the persistent
// kernel with one OS thread per CUDA thread, all blocks at once, and a std::barrier per block for
// __syncthreads (its grid barrier then runs as on the GPU, on atomics); the cluster kernels the
// same, with a std::barrier per cluster of `cluster` consecutive blocks.
#include <memory>
#include <thread>
#include <vector>

#include "shim.h"

namespace gru_host {
thread_local dim3 block_idx, thread_idx, block_dim, grid_dim;
thread_local unsigned char* smem = nullptr;
thread_local std::barrier<>* block_barrier = nullptr;
thread_local std::barrier<>* cluster_barrier = nullptr;
thread_local unsigned char* const* cluster_smem = nullptr;
thread_local unsigned int cluster_blocks = 0;
}  // namespace gru_host

extern "C" {
void gru_gate_f32(const float*, const float*, const float*, const unsigned int*, float*, int, int,
                  int, int, int, int, int);
void gru_gate_f64(const double*, const double*, const double*, const unsigned int*, double*, int,
                  int, int, int, int, int, int);
#define GRU_DECLARE(NAME, T)                                                                  \
    void NAME(const T*, const T*, const T*, const T*, const T*, const unsigned int*, T*, int, int, \
              int, int, int, int, int, int);
GRU_DECLARE(gru_persist_f32, float)
GRU_DECLARE(gru_persist_f64, double)
GRU_DECLARE(gru_persist_cluster2_f32, float)
GRU_DECLARE(gru_persist_cluster4_f32, float)
GRU_DECLARE(gru_persist_cluster8_f32, float)
GRU_DECLARE(gru_persist_cluster2_f64, double)
GRU_DECLARE(gru_persist_cluster4_f64, double)
GRU_DECLARE(gru_persist_cluster8_f64, double)
}

template <class F> static void launch_sequential(unsigned grid, unsigned block, F f) {
    using namespace gru_host;
    grid_dim = {grid, 1, 1};
    block_dim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t) {
            block_idx = {b, 0, 0};
            thread_idx = {t, 0, 0};
            f();
        }
}

// `cluster` 0: no clusters; else the grid runs as clusters of that many consecutive blocks.
template <class F>
static void launch_threads(unsigned grid, unsigned block, size_t smem_bytes, unsigned cluster, F f) {
    if (cluster != 0 && grid % cluster != 0) std::abort();
    std::vector<std::unique_ptr<std::barrier<>>> barriers, cluster_barriers;
    std::vector<std::vector<unsigned char>> smems;
    std::vector<unsigned char*> bases;
    for (unsigned b = 0; b < grid; ++b) {
        barriers.push_back(std::make_unique<std::barrier<>>(block));
        // Garbage, not zeros: the kernel must initialise what it reads.
        smems.emplace_back(smem_bytes + 16, (unsigned char)0xA5);
        auto* p = smems.back().data();
        bases.push_back(p + (16 - reinterpret_cast<uintptr_t>(p) % 16) % 16);
    }
    if (cluster != 0)
        for (unsigned c = 0; c < grid / cluster; ++c)
            cluster_barriers.push_back(std::make_unique<std::barrier<>>(cluster * block));
    std::vector<std::thread> threads;
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([&, b, t] {
                using namespace gru_host;
                grid_dim = {grid, 1, 1};
                block_dim = {block, 1, 1};
                block_idx = {b, 0, 0};
                thread_idx = {t, 0, 0};
                smem = bases[b];
                block_barrier = barriers[b].get();
                if (cluster != 0) {
                    cluster_barrier = cluster_barriers[b / cluster].get();
                    cluster_smem = bases.data() + b / cluster * cluster;
                    cluster_blocks = cluster;
                }
                f();
            });
    for (auto& th : threads) th.join();
}

extern "C" {
void launch_gate_f32(unsigned grid, unsigned block, const float* gi, const float* gh,
                     const float* b_hn, const unsigned int* lengths, float* buf, int B, int H,
                     int G, int offset, int t, int T_len, int p) {
    launch_sequential(grid, block, [&] { gru_gate_f32(gi, gh, b_hn, lengths, buf, B, H, G, offset, t, T_len, p); });
}
void launch_gate_f64(unsigned grid, unsigned block, const double* gi, const double* gh,
                     const double* b_hn, const unsigned int* lengths, double* buf, int B, int H,
                     int G, int offset, int t, int T_len, int p) {
    launch_sequential(grid, block, [&] { gru_gate_f64(gi, gh, b_hn, lengths, buf, B, H, G, offset, t, T_len, p); });
}
#define GRU_LAUNCH_PERSIST(T, SUFFIX)                                                             \
    void launch_persist_##SUFFIX(unsigned grid, unsigned block, size_t smem, unsigned cluster,     \
                                 const T* gi, const T* w_hh, const T* b_hn, const T* bias,         \
                                 const T* h0,                                                      \
                                 const unsigned int* lengths, T* buf, int T_len, int B, int H,     \
                                 int D, int U, int nb, int KS, int XA) {                           \
        auto kernel = cluster == 0   ? gru_persist_##SUFFIX                                        \
                      : cluster == 2 ? gru_persist_cluster2_##SUFFIX                               \
                      : cluster == 4 ? gru_persist_cluster4_##SUFFIX                               \
                      : cluster == 8 ? gru_persist_cluster8_##SUFFIX                               \
                                     : nullptr;                                                    \
        if (!kernel) std::abort();                                                                 \
        launch_threads(grid, block, smem, cluster, [&] {                                           \
            kernel(gi, w_hh, b_hn, bias, h0, lengths, buf, T_len, B, H, D, U, nb, KS, XA);         \
        });                                                                                        \
    }
GRU_LAUNCH_PERSIST(float, f32)
GRU_LAUNCH_PERSIST(double, f64)
}
