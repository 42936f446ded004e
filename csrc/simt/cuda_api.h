// The CUDA device-side names kernels use, implemented by the emulator. Include through
// csrc/kernels/device_compat.cuh, which first defines __shared__ and includes the CUDA headers
// that compile under g++ (vector types, __half, __nv_bfloat16).
//
// Device functions take a defaulted trailing simt::Site so that error messages name the
// kernel's call site.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>  // before __noinline__ is defined: libstdc++ spells __attribute__((__noinline__))

#include "barrier.h"
#include "launch.h"
#include "memory.h"
#include "warp.h"

// ---- geometry ---------------------------------------------------------------------------------
#define threadIdx (::simt::detail::self("threadIdx").idx)
#define blockIdx (::simt::detail::self("blockIdx").block->idx)
#define blockDim (::simt::detail::self("blockDim").block->launch->block_dim)
#define gridDim (::simt::detail::self("gridDim").block->launch->grid_dim)
constexpr int warpSize = 32;

// CUDA's host_defines.h leaves these undefined outside nvcc. A standard header included after
// this point that spells __attribute__((__noinline__)) would break: <memory> is included above.
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif

// ---- block barriers ---------------------------------------------------------------------------
inline void __syncthreads(simt::Site s = simt::Site::here()) {
  simt::detail::block_barrier("__syncthreads", s, false);
}
inline int __syncthreads_count(int pred, simt::Site s = simt::Site::here()) {
  return int(simt::detail::block_barrier("__syncthreads_count", s, pred != 0));
}
inline int __syncthreads_and(int pred, simt::Site s = simt::Site::here()) {
  uint64_t n = simt::detail::block_barrier("__syncthreads_and", s, pred != 0);
  return n == simt::detail::self("__syncthreads_and").block->threads.size();
}
inline int __syncthreads_or(int pred, simt::Site s = simt::Site::here()) {
  return simt::detail::block_barrier("__syncthreads_or", s, pred != 0) != 0;
}

// ---- warp collectives -------------------------------------------------------------------------
inline void __syncwarp(unsigned mask = 0xffffffffu, simt::Site s = simt::Site::here()) {
  simt::detail::warp_collective(simt::detail::WarpKind::Sync, mask, 32, 0, 0, s);
}
template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
              simt::Site s = simt::Site::here()) {
  return simt::detail::shuffle(simt::detail::WarpKind::Idx, mask, var, src_lane, width, s);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 simt::Site s = simt::Site::here()) {
  return simt::detail::shuffle(simt::detail::WarpKind::Up, mask, var, int(delta), width, s);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   simt::Site s = simt::Site::here()) {
  return simt::detail::shuffle(simt::detail::WarpKind::Down, mask, var, int(delta), width, s);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  simt::Site s = simt::Site::here()) {
  return simt::detail::shuffle(simt::detail::WarpKind::Xor, mask, var, lane_mask, width, s);
}
inline unsigned __ballot_sync(unsigned mask, int pred, simt::Site s = simt::Site::here()) {
  return unsigned(
      simt::detail::warp_collective(simt::detail::WarpKind::Ballot, mask, 32, pred != 0, 0, s));
}
inline int __any_sync(unsigned mask, int pred, simt::Site s = simt::Site::here()) {
  return int(
      simt::detail::warp_collective(simt::detail::WarpKind::Any, mask, 32, pred != 0, 0, s));
}
inline int __all_sync(unsigned mask, int pred, simt::Site s = simt::Site::here()) {
  return int(
      simt::detail::warp_collective(simt::detail::WarpKind::All, mask, 32, pred != 0, 0, s));
}

// ---- memory -----------------------------------------------------------------------------------
// A global load: counted like fastbn::gload.
template <class T>
T __ldg(const T* p, simt::Site s = simt::Site::here()) {
  return simt::load(p, s);
}

// Fences order memory between concurrently running threads; here nothing runs concurrently.
inline void __threadfence() { asm volatile("" ::: "memory"); }
inline void __threadfence_block() { asm volatile("" ::: "memory"); }
inline void __threadfence_system() { asm volatile("" ::: "memory"); }

// Atomics: the value operand converts to the pointee type, as with CUDA's overloads.
#define SIMT_ATOMIC(name, allowed, expr)                                                     \
  template <class T>                                                                         \
  T name(T* p, typename simt::detail::same<T>::type v, simt::Site s = simt::Site::here()) {  \
    static_assert(simt::detail::one_of<T, SIMT_UNPAREN allowed>, #name ": unsupported type"); \
    return simt::atomic_rmw(p, [&](T old) { (void)old; return T(expr); }, s);               \
  }
#define SIMT_UNPAREN(...) __VA_ARGS__
SIMT_ATOMIC(atomicAdd, (int, unsigned, unsigned long long, float, double), old + v)
SIMT_ATOMIC(atomicSub, (int, unsigned), old - v)
SIMT_ATOMIC(atomicExch, (int, unsigned, unsigned long long, float), v)
SIMT_ATOMIC(atomicMin, (int, unsigned, long long, unsigned long long), v < old ? v : old)
SIMT_ATOMIC(atomicMax, (int, unsigned, long long, unsigned long long), v > old ? v : old)
SIMT_ATOMIC(atomicAnd, (int, unsigned, unsigned long long), old & v)
SIMT_ATOMIC(atomicOr, (int, unsigned, unsigned long long), old | v)
SIMT_ATOMIC(atomicXor, (int, unsigned, unsigned long long), old ^ v)
SIMT_ATOMIC(atomicInc, (unsigned), old >= v ? 0u : old + 1)
SIMT_ATOMIC(atomicDec, (unsigned), (old == 0 || old > v) ? v : old - 1)
#undef SIMT_ATOMIC
#undef SIMT_UNPAREN

template <class T>
T atomicCAS(T* p, typename simt::detail::same<T>::type compare,
            typename simt::detail::same<T>::type val, simt::Site s = simt::Site::here()) {
  static_assert(simt::detail::one_of<T, int, unsigned, unsigned long long, unsigned short>,
                "atomicCAS: unsupported type");
  return simt::atomic_rmw(p, [&](T old) { return old == compare ? val : old; }, s);
}

// ---- math and bit intrinsics ------------------------------------------------------------------
// The fast-math intrinsics are computed exactly here; compare against references with a
// tolerance.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
// glibc's <math.h> declares these names (and libm does not export them): define them here.
extern "C" inline float __expf(float x) noexcept { return std::exp(x); }
extern "C" inline float __logf(float x) noexcept { return std::log(x); }
extern "C" inline float __powf(float x, float y) noexcept { return std::pow(x, y); }

namespace simt::detail {
template <class To, class From>
To bits(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}
}  // namespace simt::detail
inline int __float_as_int(float x) { return simt::detail::bits<int>(x); }
inline unsigned __float_as_uint(float x) { return simt::detail::bits<unsigned>(x); }
inline float __int_as_float(int x) { return simt::detail::bits<float>(x); }
inline float __uint_as_float(unsigned x) { return simt::detail::bits<float>(x); }
inline long long __double_as_longlong(double x) { return simt::detail::bits<long long>(x); }
inline double __longlong_as_double(long long x) { return simt::detail::bits<double>(x); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

// CUDA's same-type min/max overloads (mixed-type calls, which nvcc resolves, are ambiguous here).
// The floating-point ones are fminf/fmaxf, as in CUDA: a NaN operand loses.
#define SIMT_MINMAX(T)                                \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
SIMT_MINMAX(int)
SIMT_MINMAX(unsigned)
SIMT_MINMAX(long long)
SIMT_MINMAX(unsigned long long)
#undef SIMT_MINMAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
