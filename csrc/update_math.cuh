// Per-element math of the three fused update ops (Adam, forward step, inertial KM).
//
// Shared by the CUDA kernels (csrc/*_residual_step.cu) and by a CPU-only test build
// (tests/cpp/update_math_host.cpp), so one copy of the arithmetic is proven on the host.
//
// Storage is fp32, fp16 or bf16; every value is widened to fp32, the math runs in fp32 and only
// the stored state is rounded back (round to nearest even). The order of operations is that of
// decinv_fast/reference.py and decinv_fast/ops/_torch.py, one rounding per tensor op, so fp32
// results are bit-identical to the torch reference. On the device the explicit _rn intrinsics
// keep nvcc from contracting a*b+c into one FMA (which would round once instead of twice); host
// builds must use -ffp-contract=off for the same reason.
#pragma once

#include <cmath>
#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#ifdef __CUDACC__
#define DECINV_HD __host__ __device__
#else
#define DECINV_HD
#endif

namespace decinv {

// ---- IEEE fp32 primitives, each rounded once -------------------------------------------------

DECINV_HD inline float add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

DECINV_HD inline float sub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

DECINV_HD inline float mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

DECINV_HD inline float div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

DECINV_HD inline float sqrt_rn(float a) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// ---- storage <-> fp32 ------------------------------------------------------------------------

// Widen element i of fp32 / c10::Half / c10::BFloat16 storage to fp32 (exact).
template <typename T>
DECINV_HD inline float load(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// Round x to the storage type (nearest even) and write it to element i.
template <typename T>
DECINV_HD inline void store(T* p, int64_t i, float x) {
  p[i] = static_cast<T>(x);
}

// ---- per-step constants ----------------------------------------------------------------------

// Adam's scalar arguments as the fp32 values torch's kernels see: 1-b1 and 1-b2 are formed in
// double (Python arithmetic) and rounded once, exactly like `(1 - b1) * g` in the reference.
struct AdamConsts {
  float b1, one_minus_b1, b2, one_minus_b2, eps;
};

inline AdamConsts adam_consts(double eps, double b1, double b2) {
  return {static_cast<float>(b1), static_cast<float>(1.0 - b1), static_cast<float>(b2),
          static_cast<float>(1.0 - b2), static_cast<float>(eps)};
}

// Row k of the Adam table (steps, 3): lr_k, c1_k = 1 - b1^(k+1), c2_k = 1 - b2^(k+1).
struct AdamRow {
  float lr, c1, c2;
};

DECINV_HD inline AdamRow adam_row(const float* table, int64_t k) {
  const float* r = table + 3 * k;
  return {r[0], r[1], r[2]};
}

// Row k of the forward-step / KM table (steps, 1): the step size rho_k.
DECINV_HD inline float rho_row(const float* table, int64_t k) { return table[k]; }

// ---- the updates on one element, fp32 --------------------------------------------------------

// g = edz - e_x: the residual T(z) = E(D(z)) - E(x) used as the pseudo-gradient.
DECINV_HD inline float residual(float edz, float e_x) { return sub(edz, e_x); }

// m = b1*m + (1-b1)*g ; v = b2*v + (1-b2)*g*g ; z -= lr * (m/c1) / (sqrt(v/c2) + eps).
DECINV_HD inline void adam_math(float g, float& z, float& m, float& v, const AdamConsts& c,
                                const AdamRow& r) {
  m = add(mul(c.b1, m), mul(c.one_minus_b1, g));
  v = add(mul(c.b2, v), mul(c.one_minus_b2, mul(g, g)));
  const float m_hat = div(m, r.c1);
  const float denom = add(sqrt_rn(div(v, r.c2)), c.eps);
  z = sub(z, div(mul(r.lr, m_hat), denom));
}

// Forward step: z - rho * g.
DECINV_HD inline float fsm_math(float g, float z, float rho) { return sub(z, mul(rho, g)); }

// Inertial KM: z_new = y - rho*g ; y_next = z_new + alpha*(z_new - z_k). Returns z_new.
DECINV_HD inline float km_math(float g, float& y, float z_k, float rho, float alpha) {
  const float z_new = sub(y, mul(rho, g));
  y = add(z_new, mul(alpha, sub(z_new, z_k)));
  return z_new;
}

// ---- one element of each op: load, update, store; returns g for the norm -------------------
// `master`, when not null, is the fp32 copy of z (for KM: of the evaluation point y, so that the
// iterate z_new = y - rho*g is formed from full-precision values): the update is applied to it
// and z receives its rounding. All loads of element i happen before any store to it, so the
// buffers may alias element-wise (e.g. y and z of a non-inertial loop).

// The iterate: its fp32 master copy when there is one, else the stored value; a store writes the
// master copy (if any) and the storage dtype's rounding.
template <typename T>
DECINV_HD inline float load_iterate(const T* p, const float* master, int64_t i) {
  return master != nullptr ? master[i] : load(p, i);
}

template <typename T>
DECINV_HD inline void store_iterate(T* p, float* master, int64_t i, float x) {
  if (master != nullptr) master[i] = x;
  store(p, i, x);
}

template <typename T>
struct AdamTensors {
  const T* edz;
  const T* e_x;
  T* z;
  T* m;
  T* v;
  float* master;  // nullable
};

template <typename T>
DECINV_HD inline float adam_element(const AdamTensors<T>& t, int64_t i, const AdamConsts& c,
                                    const AdamRow& r) {
  const float g = residual(load(t.edz, i), load(t.e_x, i));
  float z = load_iterate(t.z, t.master, i);
  float m = load(t.m, i);
  float v = load(t.v, i);
  adam_math(g, z, m, v, c, r);
  store(t.m, i, m);
  store(t.v, i, v);
  store_iterate(t.z, t.master, i, z);
  return g;
}

template <typename T>
struct FsmTensors {
  const T* edz;
  const T* e_x;
  T* z;
  float* master;  // nullable
};

template <typename T>
DECINV_HD inline float fsm_element(const FsmTensors<T>& t, int64_t i, float rho) {
  const float g = residual(load(t.edz, i), load(t.e_x, i));
  store_iterate(t.z, t.master, i, fsm_math(g, load_iterate(t.z, t.master, i), rho));
  return g;
}

template <typename T>
struct KmTensors {
  const T* edz;
  const T* e_x;
  T* y;
  T* z;
  float* master;  // nullable; holds the evaluation point y in fp32
};

template <typename T>
DECINV_HD inline float km_element(const KmTensors<T>& t, int64_t i, float rho, float alpha) {
  const float g = residual(load(t.edz, i), load(t.e_x, i));
  const float z_k = load(t.z, i);
  float y = load_iterate(t.y, t.master, i);
  const float z_new = km_math(g, y, z_k, rho, alpha);
  store_iterate(t.y, t.master, i, y);
  store(t.z, i, z_new);
  return g;
}

}  // namespace decinv
