// Fused forward step on CUDA: residual, update of z (or its fp32 master copy) and the per-sample
// squared residual norm, in one pass over the latents.
//
//   g = edz - e_x ;  z = z - rho_k * g      rho_k = table[step, 0]
//   sq_norm[b] = sum_j g[b, j]^2            (fp32)
//
// Shapes: edz, e_x, z (B, n) contiguous, one dtype (fp32/fp16/bf16); sq_norm fp32 (B,);
// table fp32 (steps, 1); step int64 (1,) on the device; master optional fp32 (B, n).
#include "residual_step.cuh"
#include "residual_step.h"
#include "update_math.cuh"

namespace decinv {
namespace {

template <typename T>
struct FsmOp {
  FsmTensors<T> tensors;
  const float* table;

  __device__ float row(int64_t k) const { return rho_row(table, k); }
  __device__ float operator()(int64_t i, float rho) const { return fsm_element(tensors, i, rho); }
};

}  // namespace

void fsm_residual_step_cuda(const at::Tensor& edz, const at::Tensor& e_x, const at::Tensor& z,
                            const at::Tensor& sq_norm, const at::Tensor& table, const at::Tensor& step,
                            const std::optional<at::Tensor>& master) {
  constexpr const char* op = "fsm_residual_step";
  check_step_args(op, z, sq_norm, table, step, 1, master, c10::DeviceType::CUDA);
  check_like_z(op, "edz", edz, z);
  check_like_z(op, "e_x", e_x, z);
  DECINV_DISPATCH_LATENT(z.scalar_type(), "fsm_residual_step", [&] {
    const FsmTensors<scalar_t> tensors{edz.data_ptr<scalar_t>(), e_x.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                       master_ptr(master)};
    launch_residual_step(FsmOp<scalar_t>{tensors, table.data_ptr<float>()}, z, sq_norm, table, step);
  });
}

}  // namespace decinv
