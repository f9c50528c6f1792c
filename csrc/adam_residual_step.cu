// Fused gradient-free Adam step on CUDA: residual, moments, update of z (or its fp32 master copy)
// and the per-sample squared residual norm, in one pass over the latents.
//
//   g = edz - e_x
//   m = b1*m + (1-b1)*g ;  v = b2*v + (1-b2)*g*g
//   z = z - lr_k * (m / c1_k) / (sqrt(v / c2_k) + eps)      (lr_k, c1_k, c2_k) = table[step]
//   sq_norm[b] = sum_j g[b, j]^2                              (fp32)
//
// Shapes: edz, e_x, z, m, v (B, n) contiguous, one dtype (fp32/fp16/bf16); sq_norm fp32 (B,);
// table fp32 (steps, 3); step int64 (1,) on the device; master optional fp32 (B, n).
#include "residual_step.cuh"
#include "residual_step.h"
#include "update_math.cuh"

namespace decinv {
namespace {

template <typename T>
struct AdamOp {
  AdamTensors<T> tensors;
  AdamConsts consts;
  const float* table;

  __device__ AdamRow row(int64_t k) const { return adam_row(table, k); }
  __device__ float operator()(int64_t i, const AdamRow& r) const { return adam_element(tensors, i, consts, r); }
};

}  // namespace

void adam_residual_step_cuda(const at::Tensor& edz, const at::Tensor& e_x, const at::Tensor& z,
                             const at::Tensor& m, const at::Tensor& v, const at::Tensor& sq_norm,
                             const at::Tensor& table, const at::Tensor& step,
                             const std::optional<at::Tensor>& master, double eps, double b1, double b2) {
  constexpr const char* op = "adam_residual_step";
  check_step_args(op, z, sq_norm, table, step, 3, master, c10::DeviceType::CUDA);
  check_like_z(op, "edz", edz, z);
  check_like_z(op, "e_x", e_x, z);
  check_like_z(op, "m", m, z);
  check_like_z(op, "v", v, z);
  const AdamConsts consts = adam_consts(eps, b1, b2);
  DECINV_DISPATCH_LATENT(z.scalar_type(), "adam_residual_step", [&] {
    const AdamTensors<scalar_t> tensors{edz.data_ptr<scalar_t>(), e_x.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                        m.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), master_ptr(master)};
    launch_residual_step(AdamOp<scalar_t>{tensors, consts, table.data_ptr<float>()}, z, sq_norm, table, step);
  });
}

}  // namespace decinv
