// Per-channel batch-norm math shared by every backend (CPU, CUDA, SIMT emulator).
// Device-free: no torch headers, so nvcc and g++ both compile it quickly.
#pragma once

#include "kernels/target.h"

#include <cmath>
#include <cstdint>

// Under the SIMT emulator device code is host code: plain inline functions.
#if defined(__CUDACC__)
#define FASTBN_HD __host__ __device__ __forceinline__
#else
#define FASTBN_HD inline
#endif

namespace fastbn {
inline namespace FASTBN_TARGET_NS {

// Division and 1/sqrt. On the device (and under the SIMT emulator, which must run the same
// code) the IEEE-exact versions call slow-path subroutines whose register saves count as
// spills; the fast intrinsics are within 2 ulp, far inside batch norm's tolerance.
#if defined(__CUDA_ARCH__) || defined(FASTBN_SIMT)
FASTBN_HD float fast_div(float a, float b) { return __fdividef(a, b); }
#if defined(__CUDA_ARCH__)
// rcp.rn.f64 keeps an out-of-line slow path too: the hardware estimate refined by Newton
// steps instead, then one correction of the quotient (within an ulp of a / b).
FASTBN_HD double fast_div(double a, double b) {
  double r;
  asm("rcp.approx.ftz.f64 %0, %1;" : "=d"(r) : "d"(b));
  r = fma(r, fma(-b, r, 1.0), r);
  r = fma(r, fma(-b, r, 1.0), r);
  const double q = a * r;
  return fma(r, fma(-b, q, a), q);
}
#else  // the emulator: the same IEEE reciprocal, then the multiply
FASTBN_HD double fast_div(double a, double b) { return a * (1.0 / b); }
#endif
FASTBN_HD float fast_rsqrt(float v) { return rsqrtf(v); }
FASTBN_HD double fast_rsqrt(double v) { return rsqrt(v); }
#else
template <typename T> FASTBN_HD T fast_div(T a, T b) { return a / b; }
template <typename T> FASTBN_HD T fast_rsqrt(T v) { return T(1) / std::sqrt(v); }
#endif
#if defined(__CUDA_ARCH__)
FASTBN_HD float fast_exp(float v) { return __expf(v); }
FASTBN_HD double fast_exp(double v) { return exp(v); }
#else
template <typename T> FASTBN_HD T fast_exp(T v) { return std::exp(v); }
#endif

// Accumulation type: float for float/half/bfloat16, double for double.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

// Partial statistics of one piece of a channel: element count, mean and the centered sum of
// squares M2 = Σ(x − mean)². Merging pieces with Chan's formula stays exact for data far from
// zero (e.g. 1000 + small noise), which E[x²] − E[x]² is not.
template <typename T> struct Moments {
  T count;
  T mean;
  T m2;
};

template <typename T>
FASTBN_HD Moments<T> chan_merge(const Moments<T>& a, const Moments<T>& b) {
  const T count = a.count + b.count;
  if (count == T(0)) return a;
  const T delta = b.mean - a.mean;
  const T wb = fast_div(b.count, count);
  return {count, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.count * wb};
}

// Weight of the new batch in the running statistics: `momentum`, or the cumulative average
// 1/num_batches_tracked when momentum is None (num_batches_tracked already incremented).
// Read from the counter where it lives, so that no host synchronization is needed.
template <typename T>
FASTBN_HD T running_factor(bool cumulative, double momentum, const int64_t* num_batches_tracked) {
  if (!cumulative) return static_cast<T>(momentum);
  if (num_batches_tracked == nullptr) return T(0);  // no counter: no running stats to update
  const int64_t n = *num_batches_tracked;
  return n > 0 ? fast_div(T(1), static_cast<T>(n)) : T(1);
}

// The per-channel transform y = (x − center)·scale + shift. Training centers on the batch mean
// and eval on the running mean: centering before scaling keeps the precision that the fully
// folded x·scale + (b − mean·scale) loses for data far from zero, at the same cost.
template <typename T> struct ChannelAffine {
  T center;
  T scale;
  T shift;
};

template <typename T, typename P>
FASTBN_HD ChannelAffine<T> channel_affine(T mean, T invstd, const P* weight, const P* bias,
                                          int64_t c) {
  const T w = weight ? static_cast<T>(weight[c]) : T(1);
  const T b = bias ? static_cast<T>(bias[c]) : T(0);
  return {mean, w * invstd, b};
}

template <typename T>
FASTBN_HD T invstd_from_var(T var, double eps) {
  return fast_rsqrt(var + static_cast<T>(eps));
}

// running = (1 − f)·running + f·batch; running_var stores the unbiased variance n/(n−1)·var.
template <typename T, typename P>
FASTBN_HD void update_running_stats(P* running_mean, P* running_var, int64_t c, T mean,
                                    T biased_var, T count, T factor) {
  if (running_mean) {
    running_mean[c] = static_cast<P>(factor * mean + (T(1) - factor) * static_cast<T>(running_mean[c]));
  }
  if (running_var) {
    const T unbiased = count > T(1) ? fast_div(biased_var * count, count - T(1)) : biased_var;
    running_var[c] = static_cast<P>(factor * unbiased + (T(1) - factor) * static_cast<T>(running_var[c]));
  }
}

// Training backward, per channel: dx = scale·dy + coef·(x − mean) + shift, from the two
// reductions Σdy and Σdy·(x − mean).
template <typename T>
struct BackwardCoefs {
  T dy_scale;
  T xmu_scale;
  T shift;
};

template <typename T>
FASTBN_HD BackwardCoefs<T> train_backward_coefs(T weight, T invstd, T sum_dy, T sum_dy_xmu,
                                                T count) {
  const T scale = weight * invstd;
  const T inv_n = fast_div(T(1), count);
  return {scale, -scale * invstd * invstd * sum_dy_xmu * inv_n, -scale * sum_dy * inv_n};
}

// The activation fused after the normalization (and the residual add):
//   y = act(z),  z = (x − mean)·scale + shift [+ residual].
// The backward recomputes z from x, the saved statistics, weight and bias (and the residual)
// instead of keeping z or y: the same expression as the forward's, so a ReLU's mask is the one
// the forward applied. The values are the operator schemas' `activation` argument.
enum class Act : int { None = 0, ReLU = 1, SiLU = 2, LeakyReLU = 3 };

template <typename T>
FASTBN_HD T sigmoid(T z) {
  return fast_div(T(1), T(1) + fast_exp(-z));
}

template <typename T>
FASTBN_HD T act_value(Act act, T z, T slope) {
  switch (act) {
    case Act::ReLU: return z < T(0) ? T(0) : z;  // NaN stays NaN, as torch.relu
    case Act::SiLU: return z * sigmoid(z);
    case Act::LeakyReLU: return z < T(0) ? z * slope : z;
    default: return z;
  }
}

// dy·act'(z): the gradient with respect to z (and to the residual).
template <typename T>
FASTBN_HD T act_grad(Act act, T dy, T z, T slope) {
  switch (act) {
    case Act::ReLU: return z > T(0) ? dy : T(0);
    case Act::SiLU: {
      const T s = sigmoid(z);
      return dy * (s * (T(1) + z * (T(1) - s)));
    }
    case Act::LeakyReLU: return z > T(0) ? dy : dy * slope;
    default: return dy;
  }
}

}  // namespace FASTBN_TARGET_NS
}  // namespace fastbn
