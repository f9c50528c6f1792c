// CPU build of csrc/update_math.cuh for tests/test_cuda_math_host.py: the per-element code the
// CUDA kernels run, looped over CPU tensors in order, registered as torch.ops.decinv_math_host.*
// with the argument lists (and checks) of the CUDA ops. Compile with -ffp-contract=off.
#include <torch/library.h>

#include "residual_step.h"
#include "update_math.cuh"

namespace {

using namespace decinv;

// Run `element(i)` (which updates element i and returns its residual g) over z's (B, n) elements;
// sq_norm[b] = sum of g*g over sample b, in fp32.
template <typename Element>
void for_each_element(const at::Tensor& z, const at::Tensor& sq_norm, Element element) {
  const int64_t batch = z.size(0);
  const int64_t n = z.size(1);
  float* out = sq_norm.data_ptr<float>();
  const int64_t stride = sq_norm.stride(0);
  for (int64_t b = 0; b < batch; ++b) {
    float acc = 0.f;
    for (int64_t j = 0; j < n; ++j) {
      const float g = element(b * n + j);
      acc += g * g;
    }
    out[b * stride] = acc;
  }
}

int64_t host_step(const char* op, const at::Tensor& table, const at::Tensor& step) {
  const int64_t k = step.data_ptr<int64_t>()[0];
  TORCH_CHECK(k >= 0 && k < table.size(0), op, ": step ", k, " is outside the table's ", table.size(0), " rows");
  return k;
}

void adam_host(const at::Tensor& edz, const at::Tensor& e_x, const at::Tensor& z, const at::Tensor& m,
               const at::Tensor& v, const at::Tensor& sq_norm, const at::Tensor& table, const at::Tensor& step,
               const std::optional<at::Tensor>& master, double eps, double b1, double b2) {
  constexpr const char* op = "adam_residual_step";
  check_step_args(op, z, sq_norm, table, step, 3, master, c10::DeviceType::CPU);
  check_like_z(op, "edz", edz, z);
  check_like_z(op, "e_x", e_x, z);
  check_like_z(op, "m", m, z);
  check_like_z(op, "v", v, z);
  const AdamRow row = adam_row(table.data_ptr<float>(), host_step(op, table, step));
  const AdamConsts consts = adam_consts(eps, b1, b2);
  DECINV_DISPATCH_LATENT(z.scalar_type(), "adam_host", [&] {
    const AdamTensors<scalar_t> t{edz.data_ptr<scalar_t>(), e_x.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                  m.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), master_ptr(master)};
    for_each_element(z, sq_norm, [&](int64_t i) { return adam_element(t, i, consts, row); });
  });
}

void fsm_host(const at::Tensor& edz, const at::Tensor& e_x, const at::Tensor& z, const at::Tensor& sq_norm,
              const at::Tensor& table, const at::Tensor& step, const std::optional<at::Tensor>& master) {
  constexpr const char* op = "fsm_residual_step";
  check_step_args(op, z, sq_norm, table, step, 1, master, c10::DeviceType::CPU);
  check_like_z(op, "edz", edz, z);
  check_like_z(op, "e_x", e_x, z);
  const float rho = rho_row(table.data_ptr<float>(), host_step(op, table, step));
  DECINV_DISPATCH_LATENT(z.scalar_type(), "fsm_host", [&] {
    const FsmTensors<scalar_t> t{edz.data_ptr<scalar_t>(), e_x.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                 master_ptr(master)};
    for_each_element(z, sq_norm, [&](int64_t i) { return fsm_element(t, i, rho); });
  });
}

void km_host(const at::Tensor& edz, const at::Tensor& e_x, const at::Tensor& y, const at::Tensor& z,
             const at::Tensor& sq_norm, const at::Tensor& table, const at::Tensor& step,
             const std::optional<at::Tensor>& master, double alpha) {
  constexpr const char* op = "km_residual_step";
  check_step_args(op, z, sq_norm, table, step, 1, master, c10::DeviceType::CPU);
  check_like_z(op, "edz", edz, z);
  check_like_z(op, "e_x", e_x, z);
  check_like_z(op, "y", y, z);
  const float rho = rho_row(table.data_ptr<float>(), host_step(op, table, step));
  const float alpha_f = static_cast<float>(alpha);
  DECINV_DISPATCH_LATENT(z.scalar_type(), "km_host", [&] {
    const KmTensors<scalar_t> t{edz.data_ptr<scalar_t>(), e_x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                z.data_ptr<scalar_t>(), master_ptr(master)};
    for_each_element(z, sq_norm, [&](int64_t i) { return km_element(t, i, rho, alpha_f); });
  });
}

}  // namespace

TORCH_LIBRARY(decinv_math_host, m) {
  m.def("adam(Tensor edz, Tensor e_x, Tensor(a!) z, Tensor(b!) m, Tensor(c!) v, Tensor(d!) sq_norm, Tensor table, "
        "Tensor step, Tensor(e!)? master, float eps, float b1, float b2) -> ()",
        &adam_host);
  m.def("fsm(Tensor edz, Tensor e_x, Tensor(a!) z, Tensor(b!) sq_norm, Tensor table, Tensor step, "
        "Tensor(c!)? master) -> ()",
        &fsm_host);
  m.def("km(Tensor edz, Tensor e_x, Tensor(a!) y, Tensor(b!) z, Tensor(c!) sq_norm, Tensor table, Tensor step, "
        "Tensor(d!)? master, float alpha) -> ()",
        &km_host);
}
