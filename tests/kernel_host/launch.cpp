// Launches the host-compiled kernels of kernels/gru.cu with a given grid and block, the way the
// CUDA path does: the per-step gate kernel thread by thread (it has no barrier), the persistent
// kernel with one OS thread per CUDA thread, all blocks at once, and a std::barrier per block for
// __syncthreads (its grid barrier then runs as on the GPU, on atomics).
#include <memory>
#include <thread>
#include <vector>

#include "shim.h"

namespace gru_host {
thread_local dim3 block_idx, thread_idx, block_dim, grid_dim;
thread_local unsigned char* smem = nullptr;
thread_local std::barrier<>* block_barrier = nullptr;
}  // namespace gru_host

extern "C" {
void gru_gate_f32(const float*, const float*, const float*, const unsigned int*, float*, int, int,
                  int, int, int, int, int);
void gru_gate_f64(const double*, const double*, const double*, const unsigned int*, double*, int,
                  int, int, int, int, int, int);
void gru_persist_f32(const float*, const float*, const float*, const float*, const unsigned int*,
                     float*, int, int, int, int, int, int);
void gru_persist_f64(const double*, const double*, const double*, const double*,
                     const unsigned int*, double*, int, int, int, int, int, int);
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

template <class F> static void launch_threads(unsigned grid, unsigned block, size_t smem_bytes, F f) {
    std::vector<std::unique_ptr<std::barrier<>>> barriers;
    std::vector<std::vector<unsigned char>> smems;
    for (unsigned b = 0; b < grid; ++b) {
        barriers.push_back(std::make_unique<std::barrier<>>(block));
        // Garbage, not zeros: the kernel must initialise what it reads.
        smems.emplace_back(smem_bytes + 16, (unsigned char)0xA5);
    }
    std::vector<std::thread> threads;
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([&, b, t] {
                using namespace gru_host;
                grid_dim = {grid, 1, 1};
                block_dim = {block, 1, 1};
                block_idx = {b, 0, 0};
                thread_idx = {t, 0, 0};
                auto* p = smems[b].data();
                smem = p + (16 - reinterpret_cast<uintptr_t>(p) % 16) % 16;
                block_barrier = barriers[b].get();
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
void launch_persist_f32(unsigned grid, unsigned block, size_t smem, const float* gi,
                        const float* w_hh, const float* b_hn, const float* h0,
                        const unsigned int* lengths, float* buf, int T_len, int B, int H, int D,
                        int U, int nb) {
    launch_threads(grid, block, smem, [&] { gru_persist_f32(gi, w_hh, b_hn, h0, lengths, buf, T_len, B, H, D, U, nb); });
}
void launch_persist_f64(unsigned grid, unsigned block, size_t smem, const double* gi,
                        const double* w_hh, const double* b_hn, const double* h0,
                        const unsigned int* lengths, double* buf, int T_len, int B, int H, int D,
                        int U, int nb) {
    launch_threads(grid, block, smem, [&] { gru_persist_f64(gi, w_hh, b_hn, h0, lengths, buf, T_len, B, H, D, U, nb); });
}
}
