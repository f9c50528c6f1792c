// The CUDA skeleton shared by the three fused update ops.
//
// Latents are viewed as (B, n) contiguous. Grid: x = blocks over the n elements of one sample
// (grid-stride loop), y = samples (looping when B exceeds the grid's y limit). Each thread runs
// the op's per-element update (csrc/update_math.cuh) on its elements and sums g*g in fp32; each
// block writes its sum to partials[b, block]; a second kernel adds a sample's partials in a fixed
// order into sq_norm[b]. No atomics, so the norms are bit-for-bit reproducible.
//
// Block rule: kThreads threads per block, blocks_x = clamp(ceil(n / (kThreads * kItemsPerThread)),
// 1, kMaxBlocksPerSample). It depends on n alone, so the summation order (hence sq_norm) is the
// same on every GPU. The step counter and the per-step table row are read on the device, the
// only allocation (partials) depends on shapes alone, and the launches go to the current stream:
// the ops can be captured in a CUDA graph and replayed with `step` advanced on the device.
#pragma once

#include <algorithm>
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>

namespace decinv {

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 4;
constexpr int64_t kMaxBlocksPerSample = 1024;
constexpr int64_t kMaxGridY = 65535;

__device__ inline float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;
}

// Sum of x over the block in a fixed order; the result is valid in thread 0. Every thread of the
// block must call it (it synchronises).
__device__ inline float block_sum(float x) {
  __shared__ float warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  x = warp_sum(x);
  if (lane == 0) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) x = warp_sum(lane < kThreads / 32 ? warp_sums[lane] : 0.f);
  __syncthreads();  // warp_sums is reused by the caller's next iteration
  return x;
}

// Op: `row(k)` reads row k of the step table; `op(i, row)` updates element i in place and
// returns its residual g (fp32). partials: (B, gridDim.x) fp32.
template <typename Op>
__global__ void __launch_bounds__(kThreads)
    residual_step_kernel(Op op, const int64_t* step, int64_t steps, float* partials, int64_t batch, int64_t n) {
  const int64_t k = *step;
  CUDA_KERNEL_ASSERT(k >= 0 && k < steps);
  const auto row = op.row(k);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const int64_t base = b * n;
    float acc = 0.f;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < n; j += stride) {
      const float g = op(base + j, row);
      acc += g * g;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[b * gridDim.x + blockIdx.x] = acc;
  }
}

// sq_norm[b * norm_stride] = sum over j of partials[b, j], in a fixed order. (static: one copy
// per .cu file)
static __global__ void __launch_bounds__(kThreads)
    reduce_partials_kernel(const float* partials, float* sq_norm, int64_t norm_stride, int64_t batch, int64_t blocks) {
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    float acc = 0.f;
    for (int64_t j = threadIdx.x; j < blocks; j += kThreads) acc += partials[b * blocks + j];
    acc = block_sum(acc);
    if (threadIdx.x == 0) sq_norm[b * norm_stride] = acc;
  }
}

// Launch `op` over z's (B, n) elements on the current stream of z's device, then the norms.
template <typename Op>
void launch_residual_step(const Op& op, const at::Tensor& z, const at::Tensor& sq_norm, const at::Tensor& table,
                          const at::Tensor& step) {
  const int64_t batch = z.size(0);
  const int64_t n = z.size(1);
  if (batch == 0) return;
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t per_block = static_cast<int64_t>(kThreads) * kItemsPerThread;
  const int64_t blocks = std::clamp<int64_t>((n + per_block - 1) / per_block, 1, kMaxBlocksPerSample);
  const int64_t rows = std::min(batch, kMaxGridY);
  at::Tensor partials = at::empty({batch, blocks}, z.options().dtype(at::kFloat));
  // c10's current stream is what at::cuda::getCurrentCUDAStream returns; ATen/cuda/CUDAContext.h
  // is avoided because it needs the cuBLAS / cuSPARSE headers, which a minimal toolkit lacks.
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  residual_step_kernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(rows)), kThreads, 0, stream>>>(
      op, step.data_ptr<int64_t>(), table.size(0), partials.data_ptr<float>(), batch, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  reduce_partials_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      partials.data_ptr<float>(), sq_norm.data_ptr<float>(), sq_norm.stride(0), batch, blocks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace decinv
