// Fused inertial Krasnoselskii-Mann step on CUDA: residual at the evaluation point y, update,
// extrapolation to the next evaluation point and the per-sample squared residual norm, in one pass.
//
//   g = edz - e_x                      (edz = E(D(y)))
//   z_new = y - rho_k * g              rho_k = table[step, 0]
//   y = z_new + alpha * (z_new - z_k)  (z_k: the stored z; the master copy, if any, holds y)
//   z = z_new ;  sq_norm[b] = sum_j g[b, j]^2   (fp32)
//
// Shapes: edz, e_x, y, z (B, n) contiguous, one dtype (fp32/fp16/bf16); sq_norm fp32 (B,);
// table fp32 (steps, 1); step int64 (1,) on the device; master optional fp32 (B, n).
#include "residual_step.cuh"
#include "residual_step.h"
#include "update_math.cuh"

namespace decinv {
namespace {

template <typename T>
struct KmOp {
  KmTensors<T> tensors;
  float alpha;
  const float* table;

  __device__ float row(int64_t k) const { return rho_row(table, k); }
  __device__ float operator()(int64_t i, float rho) const { return km_element(tensors, i, rho, alpha); }
};

}  // namespace

void km_residual_step_cuda(const at::Tensor& edz, const at::Tensor& e_x, const at::Tensor& y,
                           const at::Tensor& z, const at::Tensor& sq_norm, const at::Tensor& table,
                           const at::Tensor& step, const std::optional<at::Tensor>& master, double alpha) {
  constexpr const char* op = "km_residual_step";
  check_step_args(op, z, sq_norm, table, step, 1, master, c10::DeviceType::CUDA);
  check_like_z(op, "edz", edz, z);
  check_like_z(op, "e_x", e_x, z);
  check_like_z(op, "y", y, z);
  const float alpha_f = static_cast<float>(alpha);
  DECINV_DISPATCH_LATENT(z.scalar_type(), "km_residual_step", [&] {
    const KmTensors<scalar_t> tensors{edz.data_ptr<scalar_t>(), e_x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                      z.data_ptr<scalar_t>(), master_ptr(master)};
    launch_residual_step(KmOp<scalar_t>{tensors, alpha_f, table.data_ptr<float>()}, z, sq_norm, table, step);
  });
}

}  // namespace decinv
