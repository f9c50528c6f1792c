// Host-side pieces shared by the three fused update ops: the dtype dispatch, argument checks
// (the same rules as decinv_fast/ops/_common.py) and the launcher declarations bindings.cpp
// registers. Compiled by both the host compiler and nvcc.
#pragma once

#include <optional>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

// fp32 / fp16 / bf16 storage (fp64 runs on the torch backend only), `scalar_t` inside.
#define DECINV_DISPATCH_LATENT(TYPE, NAME, ...)                 \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)   \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace decinv {

// `t` (argument `arg` of `op`) has z's shape, dtype and device and is contiguous.
inline void check_like_z(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& z) {
  TORCH_CHECK(t.sizes() == z.sizes() && t.scalar_type() == z.scalar_type() && t.device() == z.device(),
              op, ": ", arg, " must match the latents (", z.sizes(), ", ", z.scalar_type(), ", ", z.device(),
              "); got (", t.sizes(), ", ", t.scalar_type(), ", ", t.device(), ")");
  TORCH_CHECK(t.is_contiguous(), op, ": ", arg, " must be contiguous (got strides ", t.strides(), ")");
}

// z: (B, n) contiguous fp32/fp16/bf16 on `device_type`; sq_norm fp32 (B,), any stride; table fp32
// (steps, columns) contiguous; step int64 with one element; master optional fp32 like z.
inline void check_step_args(const char* op, const at::Tensor& z, const at::Tensor& sq_norm,
                            const at::Tensor& table, const at::Tensor& step, int64_t columns,
                            const std::optional<at::Tensor>& master, c10::DeviceType device_type) {
  const auto dtype = z.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": latents must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK(z.dim() == 2, op, ": latents must be viewed as (B, elements per sample), got shape ", z.sizes());
  TORCH_CHECK(z.device().type() == device_type, op, ": z must be on a ", device_type, " device, got ", z.device());
  TORCH_CHECK(z.is_contiguous(), op, ": z must be contiguous (got strides ", z.strides(), ")");
  TORCH_CHECK(sq_norm.scalar_type() == at::kFloat && sq_norm.dim() == 1 && sq_norm.size(0) == z.size(0) &&
                  sq_norm.device() == z.device(),
              op, ": sq_norm must be float32 of shape (", z.size(0), ",) on ", z.device());
  TORCH_CHECK(table.scalar_type() == at::kFloat && table.dim() == 2 && table.size(1) == columns &&
                  table.device() == z.device() && table.is_contiguous(),
              op, ": table must be contiguous float32 (steps, ", columns, ") on ", z.device());
  TORCH_CHECK(table.size(0) > 0, op, ": table must have at least one row");
  TORCH_CHECK(step.scalar_type() == at::kLong && step.numel() == 1 && step.device() == z.device(), op,
              ": step must be a one-element int64 tensor on ", z.device());
  if (master.has_value()) {
    const at::Tensor& mt = *master;
    TORCH_CHECK(mt.scalar_type() == at::kFloat && mt.sizes() == z.sizes() && mt.device() == z.device(), op,
                ": master must be float32 ", z.sizes(), " on ", z.device());
    TORCH_CHECK(mt.is_contiguous(), op, ": master must be contiguous");
  }
}

// The fp32 master copy's data pointer, or null.
inline float* master_ptr(const std::optional<at::Tensor>& master) {
  return master.has_value() ? master->data_ptr<float>() : nullptr;
}

// CUDA launchers (csrc/*_residual_step.cu); argument lists follow the op schemas defined in
// decinv_fast/ops/_library.py.
void adam_residual_step_cuda(const at::Tensor& edz, const at::Tensor& e_x, const at::Tensor& z,
                             const at::Tensor& m, const at::Tensor& v, const at::Tensor& sq_norm,
                             const at::Tensor& table, const at::Tensor& step,
                             const std::optional<at::Tensor>& master, double eps, double b1, double b2);

void fsm_residual_step_cuda(const at::Tensor& edz, const at::Tensor& e_x, const at::Tensor& z,
                            const at::Tensor& sq_norm, const at::Tensor& table, const at::Tensor& step,
                            const std::optional<at::Tensor>& master);

void km_residual_step_cuda(const at::Tensor& edz, const at::Tensor& e_x, const at::Tensor& y,
                           const at::Tensor& z, const at::Tensor& sq_norm, const at::Tensor& table,
                           const at::Tensor& step, const std::optional<at::Tensor>& master, double alpha);

}  // namespace decinv
