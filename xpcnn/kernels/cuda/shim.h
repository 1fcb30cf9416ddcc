// CPU shim: compile the package's .cu sources with a host C++ compiler so their logic runs on the CPU.
//
// Force-included (g++ -include shim.h) before a .cu file; xpcnn/kernels/cuda/shim.py generates, per
// kernel, an extern "C" launcher that loops over the grid's blocks and, within a block, over its
// threads (sequentially for kernels without __syncthreads; one std::thread per CUDA thread and a
// barrier for kernels with it).  __shared__ becomes a function-local static: one block runs at a time,
// so the block's threads share it, as on the GPU.  Compiled with -ffp-contract=off (no FMA
// contraction), so __fadd_rn/__fmul_rn/... and plain float arithmetic round like the GPU's.
#pragma once
#include <barrier>
#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

struct shim_dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local shim_dim3 threadIdx, blockIdx;
static shim_dim3 blockDim, gridDim;
static std::barrier<>* shim_block_barrier = nullptr;

#define __global__
#define __device__ static
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

static inline void __syncthreads() { shim_block_barrier->arrive_and_wait(); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return std::sqrt(a); }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }

// Run body() for every thread of every block.
static void shim_launch(shim_dim3 grid, shim_dim3 block, bool cooperative, const std::function<void()>& body)
{
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                const shim_dim3 b{bx, by, bz};
                if (!cooperative) {
                    blockIdx = b;
                    for (unsigned tz = 0; tz < block.z; ++tz)
                        for (unsigned ty = 0; ty < block.y; ++ty)
                            for (unsigned tx = 0; tx < block.x; ++tx) {
                                threadIdx = shim_dim3{tx, ty, tz};
                                body();
                            }
                    continue;
                }
                const unsigned nthreads = block.x * block.y * block.z;
                std::barrier<> sync(nthreads);
                shim_block_barrier = &sync;
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx)
                            threads.emplace_back([=, &body] {
                                blockIdx = b;
                                threadIdx = shim_dim3{tx, ty, tz};
                                body();
                            });
                for (auto& th : threads) th.join();
                shim_block_barrier = nullptr;
            }
}
