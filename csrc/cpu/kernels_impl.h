// Implementation of the kernels declared in kernels.h, written once with GCC vector extensions
// and compiled per instruction set: a translation unit defines FASTBN_ISA_NS (and enables its
// ISA with #pragma GCC target before including this file). The vector width follows the ISA
// (16 / 32 / 64 bytes); everything here has internal linkage (anonymous namespace) so that no
// ISA-specific code can leak into another translation unit through the linker.
//
// Numerics, identical in every ISA up to the vector width (which only changes the order of
// the partial sums): float lanes are folded into double every kFoldVecs vectors (each float
// lane then holds at most 64 elements), runs shorter than a vector are summed in scalar (NCS
// spans instead sum lanes across channels, see that section), and the statistics of an NCS
// piece, an NCS span's channel or an NSC band take one pass shifted by K (the piece's first
// element; the mean of the channel's runs in its first kShiftRows samples; of the band's
// first kShiftRows rows): Σ(x − K) and Σ(x − K)² → mean = K + Σd/n,
// M2 = Σd² − (Σd)²/n, redone in two exact passes (Σx → center, then the deviations) where K
// was too far out for M2 to keep its precision (moments_from_deviations). With FMA (AVX2,
// AVX-512) GCC contracts a·b + c in vector bodies and scalar tails alike.
#ifndef FASTBN_ISA_NS
#error "define FASTBN_ISA_NS before including kernels_impl.h"
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <array>
#include <cstdint>
#include <cstring>
#include <new>
#include <numeric>
#include <type_traits>
#include <utility>

#include "cpu/kernels.h"

namespace fastbn::cpu::FASTBN_ISA_NS {
namespace {

// Vector bytes, set by the including translation unit (#pragma GCC target does not define the
// ISA macros such as __AVX512F__).
#ifndef FASTBN_VB
#define FASTBN_VB 16
#endif
constexpr int VB = FASTBN_VB;

#define FI inline __attribute__((always_inline))
// For lambdas that must inline (those holding register accumulators): `inline` does not apply.
#define FI_LAMBDA __attribute__((always_inline))

typedef float vf __attribute__((vector_size(VB)));
typedef double vd __attribute__((vector_size(VB)));
typedef uint32_t vu32 __attribute__((vector_size(VB)));
typedef int32_t vi32 __attribute__((vector_size(VB)));
typedef uint16_t vu16 __attribute__((vector_size(VB / 2)));

template <typename A> struct VecOf;
template <> struct VecOf<float> { using V = vf; static constexpr int W = VB / 4; };
template <> struct VecOf<double> { using V = vd; static constexpr int W = VB / 8; };

FI int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

FI float f32_from_bits(uint32_t w) { float f; std::memcpy(&f, &w, 4); return f; }
FI uint32_t f32_bits(float f) { uint32_t w; std::memcpy(&w, &f, 4); return w; }

// ---------------------------------------------------------------- scalar conversions
FI float sload(const float* p) { return *p; }
FI double sload(const double* p) { return *p; }
FI float sload(const bf16_t* p) { return f32_from_bits(uint32_t(p->x) << 16); }
FI void sstore(float* p, float v) { *p = v; }
FI void sstore(double* p, double v) { *p = v; }
#if FASTBN_BF16_HW
// The vector instruction's rounding for the scalar tails too (see narrow).
FI void sstore(bf16_t* p, float v) {
  p->x = uint16_t(_mm_extract_epi16((__m128i)_mm_cvtneps_pbh(_mm_set_ss(v)), 0));
}
#else
// Round to nearest even, NaN → quiet NaN (as c10::BFloat16).
FI void sstore(bf16_t* p, float v) {
  if (v != v) { p->x = 0x7FC0; return; }
  const uint32_t u = f32_bits(v);
  p->x = uint16_t((u + (((u >> 16) & 1) + 0x7FFF)) >> 16);
}
#endif
#if FASTBN_VB >= 32
FI float sload(const half_t* p) { return _cvtsh_ss(p->x); }
FI void sstore(half_t* p, float v) { p->x = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT); }
#else
// IEEE half ↔ float without F16C (the FP16 library's bit formulas, as c10::Half).
FI float sload(const half_t* p) {
  const uint32_t w = uint32_t(p->x) << 16, sign = w & 0x80000000u, two_w = w + w;
  const float normalized = f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  return f32_from_bits(sign | (two_w < (1u << 27) ? f32_bits(denormalized) : f32_bits(normalized)));
}
FI void sstore(half_t* p, float f) {
  float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f32_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = f32_from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f32_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  p->x = uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}
#endif

// ---------------------------------------------------------------- vector conversions
FI vf vload(const float* p) { vf v; std::memcpy(&v, p, VB); return v; }
FI vd vload(const double* p) { vd v; std::memcpy(&v, p, VB); return v; }
FI void vstore(float* p, vf v) { std::memcpy(p, &v, VB); }
FI void vstore(double* p, vd v) { std::memcpy(p, &v, VB); }
#if FASTBN_VB == 64
FI vf vload(const bf16_t* p) {
  return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
}
typedef __m256i narrow_t;  // the 16-bit lanes of one float vector
#if FASTBN_BF16_HW
// Round to nearest even in hardware. Unlike c10::BFloat16 it flushes float denormals (below
// 1.2e-38) to zero and keeps a NaN's sign; both are far below batch norm's tolerances.
FI narrow_t narrow(bf16_t*, vf v) { return (narrow_t)_mm512_cvtneps_pbh((__m512)v); }
#else
// Round to nearest even, NaN → 0x7FC0 (as c10::BFloat16).
FI narrow_t narrow(bf16_t*, vf v) {
  const __m512i u = _mm512_castps_si512((__m512)v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}
#endif
FI void narrow_store(void* p, narrow_t h) { _mm256_storeu_si256((__m256i*)p, h); }
FI void narrow_stream(void* p, narrow_t h) { _mm256_stream_si256((__m256i*)p, h); }
#elif FASTBN_VB == 32
FI vf vload(const bf16_t* p) {
  return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16);
}
typedef __m128i narrow_t;
FI narrow_t narrow(bf16_t*, vf v) {
  const __m256i u = _mm256_castps_si256((__m256)v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256 nan = _mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q);
  r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0)), nan));
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
FI void narrow_store(void* p, narrow_t h) { _mm_storeu_si128((__m128i*)p, h); }
FI void narrow_stream(void* p, narrow_t h) { _mm_stream_si128((__m128i*)p, h); }
#else
FI vf vload(const bf16_t* p) {
  vu16 h;
  std::memcpy(&h, p, VB / 2);
  return (vf)(__builtin_convertvector(h, vu32) << 16);
}
FI void vstore(bf16_t* p, vf v) {
  const vu32 u = (vu32)v;
  vu32 r = (u + (((u >> 16) & 1) + 0x7FFF)) >> 16;
  const vi32 nan = v != v;
  r = (vu32)((nan & vi32(vu32{} + 0x7FC0u)) | (~nan & vi32(r)));
  const vu16 h = __builtin_convertvector(r, vu16);
  std::memcpy(p, &h, VB / 2);
}
#endif
#if FASTBN_VB == 64
FI vf vload(const half_t* p) { return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
FI narrow_t narrow(half_t*, vf v) {
  return _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#elif FASTBN_VB == 32
FI vf vload(const half_t* p) { return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
FI narrow_t narrow(half_t*, vf v) {
  return _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#endif
#if FASTBN_VB >= 32
template <typename T16> FI void vstore(T16* p, vf v) { narrow_store(p, narrow(p, v)); }
#else
FI vf vload(const half_t* p) {
  float t[VB / 4];
  for (int l = 0; l < VB / 4; ++l) t[l] = sload(p + l);
  return vload(t);
}
FI void vstore(half_t* p, vf v) {
  float t[VB / 4];
  vstore(t, v);
  for (int l = 0; l < VB / 4; ++l) sstore(p + l, t[l]);
}
#endif

// Stores an output vector. With stream (outputs too large to stay in the last-level cache)
// a non-temporal store where the address is aligned: the destination line is not read for
// ownership first, and the output does not evict the input that a later pass re-reads.
// (16-bit outputs without AVX2: plain stores.)
#if defined(__x86_64__) || defined(__i386__)
#if FASTBN_VB == 64
FI void stream_store(float* p, vf v) { _mm512_stream_ps(p, (__m512)v); }
FI void stream_store(double* p, vd v) { _mm512_stream_pd(p, (__m512d)v); }
#elif FASTBN_VB == 32
FI void stream_store(float* p, vf v) { _mm256_stream_ps(p, (__m256)v); }
FI void stream_store(double* p, vd v) { _mm256_stream_pd(p, (__m256d)v); }
#else
FI void stream_store(float* p, vf v) { _mm_stream_ps(p, (__m128)v); }
FI void stream_store(double* p, vd v) { _mm_stream_pd(p, (__m128d)v); }
#endif
#else
template <typename T, typename V> FI void stream_store(T* p, V v) { vstore(p, v); }
#endif
FI void vout(float* p, vf v, bool stream) {
  if (stream && reinterpret_cast<uintptr_t>(p) % VB == 0) stream_store(p, v);
  else vstore(p, v);
}
FI void vout(double* p, vd v, bool stream) {
  if (stream && reinterpret_cast<uintptr_t>(p) % VB == 0) stream_store(p, v);
  else vstore(p, v);
}
#if FASTBN_VB >= 32
template <typename T16> FI void vout(T16* p, vf v, bool stream) {
  if (stream && reinterpret_cast<uintptr_t>(p) % (VB / 2) == 0) narrow_stream(p, narrow(p, v));
  else vstore(p, v);
}
#else
template <typename T16> FI void vout(T16* p, vf v, bool) { vstore(p, v); }
#endif
// Orders a kernel's non-temporal stores before whatever the caller does next (a barrier).
FI void end_stream(bool stream) {
#if defined(__x86_64__) || defined(__i386__)
  if (stream) _mm_sfence();
#else
  (void)stream;
#endif
}

// ---------------------------------------------------------------- fused activation
// e^x of float lanes: Cephes' expf (x = n·ln 2 + r, a degree-5 polynomial in r, 2^n built in
// the exponent bits), within 2 ulps of std::exp on [−87, 88], clamped outside (where the
// sigmoid it serves is 0 or 1 to float precision).
FI vf vexp(vf x) {
  const vf lo = vf{} - 87.0f, hi = vf{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float magic = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  const vf r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  vf q = vf{} + 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  q = q * (r * r) + r + 1.0f;
  const vi32 e = (__builtin_convertvector(n, vi32) + 127) << 23;
  return q * (vf)e;
}
FI vd vexp(vd x) {  // double lanes: the library's exp, lane by lane
  double t[VB / 8];
  std::memcpy(t, &x, VB);
  for (int l = 0; l < VB / 8; ++l) t[l] = __builtin_exp(t[l]);
  std::memcpy(&x, t, VB);
  return x;
}
// Scalars (run tails) through the same formula as their vectors.
FI float vexp(float x) { return vexp(vf{} + x)[0]; }
FI double vexp(double x) { return __builtin_exp(x); }

// V: a vector of A or A itself (run tails).
template <typename V, typename T> FI V load_as(const T* p) {
  if constexpr (std::is_arithmetic_v<V>) return sload(p);
  else return vload(p);
}

template <Act kAct, typename V, typename A>
FI V act_value(V z, A slope) {
  if constexpr (kAct == Act::ReLU) return z < V{} ? V{} : z;
  else if constexpr (kAct == Act::LeakyReLU) return z < V{} ? z * slope : z;
  else if constexpr (kAct == Act::SiLU) return z / (A(1) + vexp(-z));
  else return z;
}

// dy·act'(z)
template <Act kAct, typename V, typename A>
FI V act_grad(V dy, V z, A slope) {
  if constexpr (kAct == Act::ReLU) return z > V{} ? dy : V{};
  else if constexpr (kAct == Act::LeakyReLU) return z > V{} ? dy : dy * slope;
  else if constexpr (kAct == Act::SiLU) {
    const V s = A(1) / (A(1) + vexp(-z));
    return dy * (s * (A(1) + z * (A(1) - s)));
  } else return dy;
}

// The forward's epilogue on z = (x − center)·scale + shift of element i: + residual, then the
// activation. Epi<None, false> is the plain batch norm (the same code as without it).
template <Act kAct, bool kRes>
struct Epi {
  static constexpr bool kPlain = kAct == Act::None && !kRes;
  template <typename V, typename T, typename A>
  static FI V out(V z, const T* r, int64_t i, A slope) {
    if constexpr (kRes) z = z + load_as<V>(r + i);
    return act_value<kAct>(z, slope);
  }
};

// body.template operator()<P<act, residual>>() with both as compile-time constants (P: Epi
// or Grad).
template <template <Act, bool> class P, typename F>
FI void with_act(Act act, bool residual, const F& body) {
  auto acts = [&]<bool kRes>() FI_LAMBDA {
    switch (act) {
      case Act::ReLU: return body.template operator()<P<Act::ReLU, kRes>>();
      case Act::SiLU: return body.template operator()<P<Act::SiLU, kRes>>();
      case Act::LeakyReLU: return body.template operator()<P<Act::LeakyReLU, kRes>>();
      default: return body.template operator()<P<Act::None, kRes>>();
    }
  };
  if (residual) acts.template operator()<true>();
  else acts.template operator()<false>();
}

template <typename T, typename F>
FI void with_epilogue(const Fuse<T>& f, const F& body) {
  with_act<Epi>(f.act, f.residual != nullptr, body);
}

// The backward's g = dy·act'(z) with z recomputed as the forward computed it (see GradFuse).
// Grad<None, false> is the plain backward: g = dy, nothing stored.
template <Act kAct, bool kRes>
struct Grad {
  static constexpr bool kPlain = kAct == Act::None;
  template <typename V, typename T, typename A>
  static FI V g(V dy, V xmu, V s, V h, const T* r, int64_t i, A slope) {
    V z = xmu * s + h;
    if constexpr (kRes) z = z + load_as<V>(r + i);
    return act_grad<kAct>(dy, z, slope);
  }
};

// (Grad<None, …> is plain whatever the residual: the plain backward does not read it.)
template <typename T, typename F>
FI void with_grad(const GradFuse<T>& gf, const F& body) {
  with_act<Grad>(gf.act, gf.residual != nullptr && !gf.plain(), body);
}

// ---------------------------------------------------------------- reductions
constexpr int64_t kFoldVecs = 64;  // vectors per float block (16 per accumulator)

// Double vector lanes plus a scalar tail, summed in a fixed order at the end. A float vector
// folds in as its two halves widened to double (two conversions and two additions, not a
// scalar conversion per lane).
typedef float vhf __attribute__((vector_size(VB / 2)));
// The lanes of a float vector as two double vectors (low half, high half).
FI void widen_halves(vf v, vd& lo, vd& hi) {
  vhf h0, h1;
  std::memcpy(&h0, &v, VB / 2);
  std::memcpy(&h1, reinterpret_cast<const char*>(&v) + VB / 2, VB / 2);
  lo = __builtin_convertvector(h0, vd);
  hi = __builtin_convertvector(h1, vd);
}

template <typename A>
struct DSum {
  vd lo, hi;  // zeroed by reset(): as default member initializers, GCC zeroed a Reducer's
  double tail;  // DSums with rep stos, a tenth of a 7×7 channel's reduction
  FI void reset() {
    lo = hi = vd{};
    tail = 0;
  }
  FI void fold(typename VecOf<A>::V v) {
    if constexpr (sizeof(A) == 8) {
      lo += v;
    } else {
      vd v0, v1;
      widen_halves(v, v0, v1);
      lo += v0;
      hi += v1;
    }
  }
  FI double total() const {
    const vd v = lo + hi;
    double t[VB / 8];
    std::memcpy(t, &v, VB);
    double s = 0;
    for (int l = 0; l < VB / 8; ++l) s += t[l];
    return s + tail;
  }
};

// Keeps the last r lanes of a vector and zeroes the others (the mask is computed once, from a
// compare against a constant lane index).
typedef int64_t vi64 __attribute__((vector_size(VB)));
template <typename V>
struct LastLanes {
  using M = std::conditional_t<sizeof(V{}[0]) == 4, vi32, vi64>;
  M keep;
  FI explicit LastLanes(int r) {
    alignas(64) static constexpr int32_t iota32[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    alignas(64) static constexpr int64_t iota64[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    M lane;
    std::memcpy(&lane, sizeof(V{}[0]) == 4 ? (const void*)iota32 : (const void*)iota64, VB);
    keep = (M)(lane >= int(sizeof(V) / sizeof(V{}[0])) - r);
  }
  FI V operator()(V v) const { return (V)((M)v & keep); }
};

// Moments from sums shifted by a sample. With d = x − center over n values: mean = center +
// Σd/n, M2 = Σd² − (Σd)²/n (inv_n = 1/n: called per channel of every band, where divisions
// would dominate). When the center is a sample (or the mean of a few), |mean − center| is of the order of the
// standard deviation and M2 keeps its precision; when it was an outlier (Σd² >
// kShiftSlack·M2) this returns false and the caller redoes the values in two exact passes.
constexpr double kShiftSlack = 16;
FI bool moments_from_deviations(double center, double s1, double s2, double inv_n, double* mean,
                                double* m2) {
  const double q = s2 - s1 * s1 * inv_n;
  *mean = center + s1 * inv_n;
  *m2 = q > 0 ? q : 0;
  return !(s2 > kShiftSlack * *m2);
}

// NCS piece as contiguous runs f(offset, length) (one division per piece, not per run).
template <typename F>
FI void for_each_run(const NcsPiece& p, const F& f) {
  if (p.j1 <= p.j0) return;
  int64_t n = p.j0 / p.S, s = p.j0 - n * p.S, left = p.j1 - p.j0;
  int64_t off = (n * p.C + p.c) * p.S + s;
  const int64_t stride = p.C * p.S;
  while (left > 0) {
    const int64_t len = imin(p.S - s, left);
    f(off, len);
    left -= len;
    off += stride - s;
    s = 0;
  }
}

// Σ g(i) over the runs of a piece for K quantities: 4 vector accumulators per quantity that
// persist across runs (short runs cost no fold), folded into double lanes every kFoldVecs
// vectors and at the end; runs shorter than a vector in scalar, in float, folded every 64
// elements and at the end. The terms of a run (SumTerms, DevTerms, BwdTerms) add K vectors
// (vec) or K scalars (scal) at an element index.
template <typename A, int K>
struct Reducer {
  using V = typename VecOf<A>::V;
  static constexpr int W = VecOf<A>::W;
  V a0[K], a1[K], a2[K], a3[K];
  A t[K] = {};
  int64_t nvec = 0, nscalar = 0;
  DSum<A> out[K];
  FI Reducer() {
    for (int k = 0; k < K; ++k) out[k].reset();
    clear();
  }
  FI void clear() {
    for (int k = 0; k < K; ++k) a0[k] = a1[k] = a2[k] = a3[k] = V{};
    nvec = 0;
  }
  FI void flush() {
    for (int k = 0; k < K; ++k) out[k].fold((a0[k] + a1[k]) + (a2[k] + a3[k]));
    clear();
  }
  FI void flush_tail() {
    for (int k = 0; k < K; ++k) {
      out[k].tail += double(t[k]);
      t[k] = 0;
    }
    nscalar = 0;
  }
  // One run of n elements of the terms f (see SumTerms).
  template <typename F>
  FI void run(const F& f, int64_t n) {
    if (n >= W) {
      vectors(f, n, LastLanes<V>(int(n % W)));
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      f.scal(i, t);
      if (++nscalar >= 64) flush_tail();
    }
  }
  // A run of n ≥ W elements in vectors; last keeps the lanes of its final vector (which ends
  // at the run's end) that the whole vectors did not cover.
  template <typename F>
  FI void vectors(const F& f, int64_t n, const LastLanes<V>& last) {
    int64_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
      f.vec(i, a0);
      f.vec(i + W, a1);
      f.vec(i + 2 * W, a2);
      f.vec(i + 3 * W, a3);
      if ((nvec += 4) >= kFoldVecs) flush();
    }
    // Up to 3 more whole vectors and a partial one, each into its own accumulator so that
    // short runs (e.g. 7×7 maps) do not chain their additions through one register.
    const int64_t q = (n - i) / W;
    if (q > 0) f.vec(i, a0);
    if (q > 1) f.vec(i + W, a1);
    if (q > 2) f.vec(i + 2 * W, a2);
    nvec += q;
    if (i + q * W < n) {
      V v[K] = {};
      f.vec(n - W, v);
      for (int k = 0; k < K; ++k) a3[k] += last(v[k]);
      ++nvec;
    }
    if (nvec >= kFoldVecs - 4) flush();
  }
  FI void finish() {
    flush();
    flush_tail();
  }
};

// ---------------------------------------------------------------- NCS kernels
// What the NCS reductions sum over a run (K quantities): vec(i, a) adds the K vectors of
// elements [i, i + W) to a, scal(i, t) the K scalars of element i.
template <typename T, typename A>
struct SumTerms {  // Σx
  static constexpr int K = 1;
  using V = typename VecOf<A>::V;
  const T* x;
  FI void vec(int64_t i, V* a) const { a[0] += vload(x + i); }
  FI void scal(int64_t i, A* t) const { t[0] += sload(x + i); }
};
template <typename T, typename A>
struct DevTerms {  // Σd, Σd² with d = x − center
  static constexpr int K = 2;
  using V = typename VecOf<A>::V;
  const T* x;
  A c;
  V vc;
  FI DevTerms(const T* x_, A c_) : x(x_), c(c_), vc(V{} + c_) {}
  FI void vec(int64_t i, V* a) const {
    const V d = vload(x + i) - vc;
    a[0] += d;
    a[1] += d * d;
  }
  FI void scal(int64_t i, A* t) const {
    const A d = sload(x + i) - c;
    t[0] += d;
    t[1] += d * d;
  }
};
// One channel's fused-backward values (GradFuse) at the origin of a run: residual and g at the
// run's offset, the channel's scale and shift.
template <typename T, typename A>
struct GradAt {
  const T* r = nullptr;
  T* g = nullptr;
  A s = 0, h = 0, slope = 0;
};
template <typename T, typename A>
FI GradAt<T, A> grad_at(const GradFuse<T>& gf, int64_t off, int64_t c) {
  if (gf.plain()) return {};
  return {gf.residual ? gf.residual + off : nullptr, gf.g + off, gf.scale[c], gf.shift[c], gf.slope};
}

template <typename T, typename A, typename G = Grad<Act::None, false>>
struct BwdTerms {  // Σg, Σg·(x − mean) with g = dy (plain) or dy·act'(z), stored
  static constexpr int K = 2;
  using V = typename VecOf<A>::V;
  const T *x, *g;
  A m;
  V vm;
  GradAt<T, A> f;
  FI BwdTerms(const T* x_, const T* g_, A m_, const GradAt<T, A>& f_ = {})
      : x(x_), g(g_), m(m_), vm(V{} + m_), f(f_) {}
  FI void vec(int64_t i, V* a) const {
    V gv = vload(g + i);
    const V xmu = vload(x + i) - vm;
    if constexpr (!G::kPlain) {
      gv = G::g(gv, xmu, V{} + f.s, V{} + f.h, f.r, i, f.slope);
      vstore(f.g + i, gv);
    }
    a[0] += gv;
    a[1] += gv * xmu;
  }
  FI void scal(int64_t i, A* t) const {
    A gs = sload(g + i);
    const A xmu = sload(x + i) - m;
    if constexpr (!G::kPlain) {
      gs = G::g(gs, xmu, f.s, f.h, f.r, i, f.slope);
      sstore(f.g + i, gs);
    }
    t[0] += gs;
    t[1] += gs * xmu;
  }
};

// Totals of make(offset) terms over the runs of a piece.
template <typename A, int K, typename Make>
FI void piece_totals(const NcsPiece& p, const Make& make, double* out) {
  constexpr int W = VecOf<A>::W;
  Reducer<A, K> r;
  if (p.S >= W && p.j0 % p.S == 0 && p.j1 % p.S == 0) {
    // Whole runs of one length (small maps: many short runs): the same sums as run() per run,
    // with the tail mask and the run bookkeeping hoisted out of the loop.
    const LastLanes<typename VecOf<A>::V> last(int(p.S % W));
    const int64_t stride = p.C * p.S, n1 = p.j1 / p.S;
    int64_t off = (p.j0 / p.S * p.C + p.c) * p.S;
    for (int64_t n = p.j0 / p.S; n < n1; ++n, off += stride) r.vectors(make(off), p.S, last);
  } else {
    for_each_run(p, [&](int64_t off, int64_t len) { r.run(make(off), len); });
  }
  r.finish();
  for (int k = 0; k < K; ++k) out[k] = r.out[k].total();
}

// One pass shifted by the piece's first element; two exact passes (Σx → center, then the
// deviations) for a piece whose first element the shift does not suit.
template <typename T>
void ncs_moments(const T* x, const NcsPiece& p, double* out) {
  using A = typename KAcc<T>::type;
  const double count = double(p.j1 - p.j0);
  double dev[2];
  auto deviations = [&](A center) {
    piece_totals<A, 2>(p, [x, center](int64_t off) { return DevTerms<T, A>(x + off, center); },
                       dev);
    return moments_from_deviations(double(center), dev[0], dev[1], 1 / count, &out[0], &out[1]);
  };
  const int64_t n = p.j0 / p.S;
  if (deviations(A(sload(x + (n * p.C + p.c) * p.S + (p.j0 - n * p.S))))) return;
  double sum[1];
  piece_totals<A, 1>(p, [x](int64_t off) { return SumTerms<T, A>{x + off}; }, sum);
  deviations(A(sum[0] / count));
}

template <typename T, typename A>
void ncs_bwd_sums(const T* x, const T* dy, const NcsPiece& p, A mean, double* out,
                  const GradFuse<T>& gf) {
  with_grad(gf, [&]<typename G>() {
    piece_totals<A, 2>(
        p,
        [&](int64_t off) FI_LAMBDA {
          return BwdTerms<T, A, G>(x + off, dy + off, mean, grad_at<T, A>(gf, off, p.c));
        },
        out);
  });
}

// Elementwise over one run of n elements: out = value(vector or scalar at element i). When the
// output aliases an input, no element is computed twice (the overlapping last vector would
// read an element already overwritten).
template <typename T, typename A, typename VF, typename SF>
FI void map_run(T* out, int64_t n, bool alias, bool stream, const VF& vec, const SF& scal) {
  constexpr int W = VecOf<A>::W;
  constexpr int64_t kOutBytes = W * int64_t(sizeof(T));  // bytes of one output vector
  int64_t i = 0;
  // A run that does not start on a vector boundary (e.g. 14×14 maps: 196 elements) would
  // split every access across two cache lines: one unaligned vector, then aligned ones from
  // the next boundary (the inputs share the output's offset when the tensors are 64-byte
  // aligned); the elements in between are computed twice, with the same result.
  bool head = false;
  if (!alias && n >= 2 * W) {
    const int64_t mis = int64_t(reinterpret_cast<uintptr_t>(out) % kOutBytes) / int64_t(sizeof(T));
    if (mis != 0) {
      vstore(out, vec(0));
      i = W - mis;
      head = true;
    }
  }
  if (stream) {
    // Streamed vectors only on lines that no plain store touches: neither this run's head, last
    // vector or scalars nor, on a line the run shares at either end, the next or previous
    // run's. A plain store to a line with a pending non-temporal store (or the reverse) costs
    // a round trip to memory: 7×7 and 14×14 maps, whose runs start mid-line, were 6-25×
    // slower streamed.
    const int64_t body_end = i + (n - i) / W * W;  // end of the whole vectors from i
    const int64_t plain_tail = body_end == n ? n : (n >= W && !alias) ? n - W : body_end;
    const uintptr_t base = reinterpret_cast<uintptr_t>(out);
    const uintptr_t lo = (base + (head ? kOutBytes : 0) + 63) & ~uintptr_t(63);
    const uintptr_t hi = (base + plain_tail * sizeof(T)) & ~uintptr_t(63);
    const int64_t nt0 = int64_t(lo - base) / int64_t(sizeof(T));  // [nt0, nt1) may stream
    const int64_t nt1 = hi > lo ? int64_t(hi - base) / int64_t(sizeof(T)) : 0;
    for (; i + W <= n; i += W) vout(out + i, vec(i), i >= nt0 && i + W <= nt1);
  } else {
    for (; i + W <= n; i += W) vstore(out + i, vec(i));
  }
  if (i < n && n >= W && !alias) {
    vstore(out + n - W, vec(n - W));
    return;
  }
  for (; i < n; ++i) sstore(out + i, scal(i));
}

// y = E::out((x − c)·s + h) over one run (r: the residual at the run, or null).
template <typename E, typename T, typename A>
FI void affine_run(const T* x, T* y, int64_t n, A c, A s, A h, bool stream, const T* r = nullptr,
                   A slope = 0) {
  using V = typename VecOf<A>::V;
  const V vc = V{} + c, vs = V{} + s, vh = V{} + h;
  map_run<T, A>(y, n, (const void*)x == (const void*)y, stream,
                [=](int64_t i) { return E::out((vload(x + i) - vc) * vs + vh, r, i, slope); },
                [=](int64_t i) { return E::out((sload(x + i) - c) * s + h, r, i, slope); });
}
template <typename T> FI const T* at_offset(const T* p, int64_t off) { return p ? p + off : nullptr; }

// dx = xmu·k1 + (dy·k0 + k2) with xmu = x − mean (or x itself in the folded form, whose k2
// includes −mean·k1), parenthesized so that each addition has one product to contract into an
// FMA: written dy·k0 + xmu·k1 + k2, the first addition has two, and GCC may fuse either one,
// differently in different inlined copies (an element's result would then depend on which copy
// computed it: run start, alignment, piece boundaries).
template <typename V, typename A>
FI V dx_value(V g, V xmu, A k0, A k1, A k2) {
  return xmu * k1 + (g * k0 + k2);
}

template <typename T, typename A>
FI void dx_run(const T* x, const T* g, T* d, int64_t n, A m, A k0, A k1, A k2, bool stream) {
  using V = typename VecOf<A>::V;
  const V vm = V{} + m, v0 = V{} + k0, v1 = V{} + k1, v2 = V{} + k2;
  map_run<T, A>(d, n, (const void*)d == (const void*)x || (const void*)d == (const void*)g,
                stream, [=](int64_t i) { return dx_value(vload(g + i), vload(x + i) - vm, v0, v1, v2); },
                [=](int64_t i) { return dx_value(sload(g + i), sload(x + i) - m, k0, k1, k2); });
}

template <typename T, typename A>
void ncs_affine(const T* x, T* y, const NcsPiece& p, A center, A scale, A shift,
                const Fuse<T>& f) {
  with_epilogue(f, [&]<typename E>() {
    for_each_run(p, [&](int64_t off, int64_t n) {
      affine_run<E>(x + off, y + off, n, center, scale, shift, p.stream, at_offset(f.residual, off),
                    f.slope);
    });
  });
  end_stream(p.stream);
}

template <typename T, typename A>
void ncs_bwd_dx(const T* x, const T* dy, T* dx, const NcsPiece& p, A mean, A k0, A k1, A k2) {
  for_each_run(p, [&](int64_t off, int64_t n) {
    dx_run(x + off, dy + off, dx + off, n, mean, k0, k1, k2, p.stream);
  });
  end_stream(p.stream);
}

// Rows k in [k0, k1) (row k = n·C + c holds the S elements of sample n, channel c): f(c, offset)
// per row, without a division per row.
template <typename F>
FI void for_each_row(const NcsRows& r, const F& f) {
  int64_t c = r.k0 % r.C;
  for (int64_t k = r.k0; k < r.k1; ++k) {
    f(c, k * r.S);
    if (++c == r.C) c = 0;
  }
}

template <typename T, typename A>
void ncs_affine_rows(const T* x, T* y, const NcsRows& r, const A* center, const A* scale,
                     const A* shift, const Fuse<T>& f) {
  with_epilogue(f, [&]<typename E>() {
    for_each_row(r, [&](int64_t c, int64_t off) {
      affine_run<E>(x + off, y + off, r.S, center[c], scale[c], shift[c], r.stream,
                    at_offset(f.residual, off), f.slope);
    });
  });
  end_stream(r.stream);
}

template <typename T, typename A>
void ncs_bwd_dx_rows(const T* x, const T* dy, T* dx, const NcsRows& r, const A* mean, const A* k0,
                     const A* k1, const A* k2) {
  for_each_row(r, [&](int64_t c, int64_t off) {
    dx_run(x + off, dy + off, dx + off, r.S, mean[c], k0[c], k1[c], k2[c], r.stream);
  });
  end_stream(r.stream);
}

// ---------------------------------------------------------------- NCS channel blocks
// One block of channels reduced sample by sample, each channel through its own Reducer that
// gets the channel's runs in the same order as piece_totals does (so the totals are the same
// bit for bit), and between two samples the output of the previous block. Against reducing
// channel by channel and then writing: the reads go in address order, and the writes of one
// block share the memory system with the reads of the next instead of following them. Runs
// of at least a vector only: shorter ones go through scalar code that GCC may contract into
// FMAs differently here and in piece_totals.
template <typename A, int K, typename Make, typename Write>
FI void block_totals(const NcsBlocks& b, const Make& make, const Write& write, double* out) {
  using R = Reducer<A, K>;
  constexpr int W = VecOf<A>::W;
  const int64_t nr = b.r1 - b.r0;
  alignas(R) unsigned char storage[kMaxBlockChannels * sizeof(R)];
  R* r = reinterpret_cast<R*>(storage);
  for (int64_t i = 0; i < nr; ++i) new (&r[i]) R();
  const LastLanes<typename VecOf<A>::V> last(int(b.S % W));
  for (int64_t n = 0; n < b.N; ++n) {
    int64_t off = (n * b.C + b.r0) * b.S;
    for (int64_t i = 0; i < nr; ++i, off += b.S) r[i].vectors(make(off, b.r0 + i), b.S, last);
    write(n);
  }
  for (int64_t i = 0; i < nr; ++i) {
    r[i].finish();
    for (int k = 0; k < K; ++k) out[k * nr + i] = r[i].out[k].total();
  }
}

// f(c, offset) for the runs of channels [w0, w1) in sample n.
template <typename F>
FI void for_block_rows(const NcsBlocks& b, int64_t n, const F& f) {
  if (b.w1 > b.w0) for_each_row(NcsRows{b.C, b.S, n * b.C + b.w0, n * b.C + b.w1, b.stream}, f);
}

template <typename T, typename A>
void ncs_block_moments(const T* x, T* y, const NcsBlocks& b, const A* center, const A* scale,
                       const A* shift, double* mean, double* m2, const Fuse<T>& f) {
  const int64_t nr = b.r1 - b.r0, M = b.N * b.S;
  A first[kMaxBlockChannels];  // each channel's shift: its first element, as in ncs_moments
  for (int64_t i = 0; i < nr; ++i) first[i] = sload(x + (b.r0 + i) * b.S);
  double dev[2 * kMaxBlockChannels];
  with_epilogue(f, [&]<typename E>() {
    block_totals<A, 2>(
        b, [&](int64_t off, int64_t c) FI_LAMBDA { return DevTerms<T, A>(x + off, first[c - b.r0]); },
        [&](int64_t n) FI_LAMBDA {
          for_block_rows(b, n, [&](int64_t c, int64_t off) {
            affine_run<E>(x + off, y + off, b.S, center[c], scale[c], shift[c], b.stream,
                          at_offset(f.residual, off), f.slope);
          });
        },
        dev);
  });
  const double count = double(M);
  for (int64_t i = 0; i < nr; ++i) {
    if (moments_from_deviations(double(first[i]), dev[i], dev[nr + i], 1 / count, &mean[i], &m2[i]))
      continue;
    double o[2];  // the shift did not suit: the whole channel by ncs_moments
    ncs_moments(x, NcsPiece{b.C, b.S, b.r0 + i, 0, M}, o);
    mean[i] = o[0];
    m2[i] = o[1];
  }
  end_stream(b.stream);
}

template <typename T, typename A>
void ncs_block_bwd(const T* x, const T* dy, T* dx, const NcsBlocks& b, const A* mean, const A* k0,
                   const A* k1, const A* k2, double* s0, double* s1, const GradFuse<T>& gf) {
  const int64_t nr = b.r1 - b.r0;
  double tot[2 * kMaxBlockChannels];
  const T* g = gf.plain() ? dy : gf.g;  // what dx reads: the block before was reduced already
  with_grad(gf, [&]<typename G>() {
    block_totals<A, 2>(
        b,
        [&](int64_t off, int64_t c) FI_LAMBDA {
          return BwdTerms<T, A, G>(x + off, dy + off, mean[c], grad_at<T, A>(gf, off, c));
        },
        [&](int64_t n) FI_LAMBDA {
          if (!dx) return;
          for_block_rows(b, n, [&](int64_t c, int64_t off) {
            dx_run(x + off, g + off, dx + off, b.S, mean[c], k0[c], k1[c], k2[c], b.stream);
          });
        },
        tot);
  });
  for (int64_t i = 0; i < nr; ++i) {
    s0[i] = tot[i];
    s1[i] = tot[nr + i];
  }
  end_stream(b.stream);
}

// ---------------------------------------------------------------- NSC kernels
// Band moments in one pass: per channel sums of d = x − K and d² with K the mean of the
// channel's first kShiftRows rows in the block (moments_from_deviations), in registers per
// column chunk over blocks of kFoldRows rows (in L1 arrays every row's additions would chain
// through store-to-load forwarding, and two exact passes read the band twice), the chunks of
// a block taken in turn so that the band is read in memory order (see panel_column_sums); a
// channel K does not suit is redone in two exact passes over its column of the block, which
// is still in L2.

// Calls f.template operator()<U>(o) for column chunks of U = kMaxChunk vectors (8 with 32
// vector registers, as AVX-512 has: 3 per vector are live), then 4, then 1, from channel c0;
// returns the first channel not covered by whole vectors.
constexpr int kMaxChunk = VB == 64 ? 8 : 4;
template <int W, typename F>
FI int64_t for_col_chunks(int64_t c0, int64_t c1, const F& f) {
  int64_t o = c0;
  for (; o + kMaxChunk * W <= c1; o += kMaxChunk * W) f.template operator()<kMaxChunk>(o);
  for (; o + 4 * W <= c1; o += 4 * W) f.template operator()<4>(o);
  for (; o + W <= c1; o += W) f.template operator()<1>(o);
  return o;
}

// Rows per block of the NSC column sums: a block sums in fresh registers, then adds into the
// group's totals. Summed over a whole group (up to 256 rows) in one float accumulator, the sums
// drift (d = x − K has a nonzero mean, so the partial sums grow with the rows and every
// addition rounds at their size): the channels_last statistics, and through them the output
// and dX, were up to 16 float ulps (of the largest value) off the float64 reference, where
// torch is within 1–4. Blocks of 16 rows, with the shift of shift_rows_mean, bring every
// tested shape within about 1; the blocks cost no measurable time.
constexpr int64_t kFoldRows = 16;
// Rows per group: float totals of its blocks, then added into the band's totals in double.
constexpr int64_t kGroupRows = 256;
// Rows whose mean shifts a block's column sums (see shift_rows_mean).
constexpr int64_t kShiftRows = 8;

// Column chunk of U vectors at channel o of rows [r0, r1) (row length C): s1 += Σd, s2 += Σd²
// with d = x − shift, in registers.
template <int U, typename T, typename V>
FI void column_dev_sums(const T* x, int64_t C, int64_t o, int64_t r0, int64_t r1,
                        const V* shift, V* s1, V* s2) {
  constexpr int W = int(sizeof(V) / sizeof(s1[0][0]));
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = x + r * C + o;
    for (int u = 0; u < U; ++u) {
      const V d = vload(row + u * W) - shift[u];
      s1[u] += d;
      s2[u] += d * d;
    }
  }
}

// o[0, lanes of v) += v, in double.
FI void add_wide(double* o, vd v) { vstore(o, vload(o) + v); }
FI void add_wide(double* o, vf v) {
  vd v0, v1;
  widen_halves(v, v0, v1);
  vstore(o, vload(o) + v0);
  vstore(o + VB / 8, vload(o + VB / 8) + v1);
}

// Channels per panel of the column sums (panel_column_sums): its float group totals, shifts
// and double totals stay in L1.
constexpr int64_t kPanelChannels = 1024;

// Column sums of channels [p0, p1) (whole vectors, at most kPanelChannels) over rows [r0, r1):
// sums.template operator()<U>(o, ra, rb, s1, s2) adds those of the U-vector chunk at channel o
// over rows [ra, rb) into s1, s2 (fresh registers). Rows go by blocks of kFoldRows, each
// block's chunks in turn, so that the rows are read in memory order (against chunk by chunk
// over all the rows, which reads a band in strided pieces: forward and backward up to 5%
// faster at C ≥ 512, the same below); each block's sums are added into float group totals of
// at most kGroupRows rows, and those into q1, q2 (the panel's totals, zeroed) in double:
// however many rows a band has, no float sum runs over more than kGroupRows of them. (Double
// totals per block instead made the band reductions of cache-resident shapes 8-13% slower.)
template <typename A, typename F>
FI void panel_column_sums(int64_t r0, int64_t r1, int64_t p0, int64_t p1, double* q1, double* q2,
                          const F& sums) {
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  alignas(64) A t1[kPanelChannels], t2[kPanelChannels];
  for (int64_t g = r0; g < r1; g += kGroupRows) {
    const int64_t g1 = imin(g + kGroupRows, r1);
    for (int64_t i = 0; i < p1 - p0; i += W) vstore(t1 + i, V{}), vstore(t2 + i, V{});
    for (int64_t r = g; r < g1; r += kFoldRows) {
      const int64_t re = imin(r + kFoldRows, g1);
      for_col_chunks<W>(p0, p1, [&]<int U>(int64_t o) FI_LAMBDA {
        V s1[U], s2[U];
        for (int u = 0; u < U; ++u) s1[u] = s2[u] = V{};
        sums.template operator()<U>(o, r, re, s1, s2);
        for (int u = 0; u < U; ++u) {
          A* a1 = t1 + (o - p0) + u * W;
          A* a2 = t2 + (o - p0) + u * W;
          vstore(a1, vload(a1) + s1[u]);
          vstore(a2, vload(a2) + s2[u]);
        }
      });
    }
    for (int64_t i = 0; i < p1 - p0; i += W) {
      add_wide(q1 + i, vload(t1 + i));
      add_wide(q2 + i, vload(t2 + i));
    }
  }
}

// k[u] = the mean of the block's first kShiftRows rows (or fewer), the shift of its column
// sums. One row's value (the shift until now) lies about a standard deviation from the
// column's mean, often several: the shifted sums then drift and Σd² − (Σd)²/n cancels, which
// left outputs up to 7 ulps off even in blocks of kFoldRows rows. The mean of 8 rows costs
// this kernel 3–4% more time.
template <int U, typename T, typename V>
FI void shift_rows_mean(const T* x, const NscBlock& b, int64_t o, V* k) {
  using E = std::remove_reference_t<decltype(k[0][0])>;
  constexpr int W = int(sizeof(V) / sizeof(E));
  const int64_t r1 = imin(b.r0 + kShiftRows, b.r1);
  for (int u = 0; u < U; ++u) k[u] = V{};
  for (int64_t r = b.r0; r < r1; ++r)
    for (int u = 0; u < U; ++u) k[u] += vload(x + r * b.C + o + u * W);
  const E inv = E(1) / E(r1 - b.r0);
  for (int u = 0; u < U; ++u) k[u] *= inv;
}

// Rows whose channels do not fill whole vectors (C % W ≠ 0: C = 3, 8, 24, 40, 200...), seen as
// one flat sequence of periods of P = lcm(C, W) elements: P / C rows, P / W whole vectors,
// lane i of every period holding channel i % C. The column kernels run over "rows" of one
// period with the per-channel values expanded to its lanes, and a channel's sums are those of
// its lanes; otherwise each channel past the whole vectors went down its column in scalar
// (channels_last C = 8 forward took 4× a copy_, as long as torch's; C = 3 backward 13×).
// Only where a period fits a panel (P ≤ kPanelChannels) and the block holds one.
template <int W>
FI int64_t nsc_period(int64_t C) {
  return C / std::gcd<int64_t>(C, W) * W;
}
template <int W>
FI bool nsc_periodic(const NscBlock& b) {
  if (b.c0 != 0 || b.c1 != b.C || b.C % W == 0) return false;
  const int64_t P = nsc_period<W>(b.C);
  return P <= kPanelChannels && b.r1 - b.r0 >= P / b.C;
}

// out[i] = v[i % C] for the P lanes of a period.
template <typename A>
FI void expand_period(const A* v, int64_t C, int64_t P, A* out) {
  for (int64_t i = 0; i < P; ++i) out[i] = v[i % C];
}

// Per-channel sums of a block by periods (nsc_periodic): a channel's lanes of q1 and q2 (the
// two sums of each lane over the block's whole periods) in lane order, then the rows after the
// last whole period in scalar, term(r, c, s1, s2) adding channel c's terms of row r;
// out(c, s1, s2) gets the totals.
template <int W, typename Term, typename Out>
FI void period_channel_sums(const NscBlock& b, const double* q1, const double* q2,
                            const Term& term, const Out& out) {
  const int64_t C = b.C, P = nsc_period<W>(C);
  const int64_t rest = b.r0 + (b.r1 - b.r0) / (P / C) * (P / C);
  for (int64_t c = 0; c < C; ++c) {
    double s1 = 0, s2 = 0;
    for (int64_t i = c; i < P; i += C) {
      s1 += q1[i];
      s2 += q2[i];
    }
    for (int64_t r = rest; r < b.r1; ++r) term(r, c, s1, s2);
    out(c, s1, s2);
  }
}

template <typename T>
void nsc_moments(const T* x, const NscBlock& b, double* mean, double* m2) {
  using A = typename KAcc<T>::type;
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  const double count = double(b.r1 - b.r0), inv_count = 1 / count;
  const T* first = x + b.r0 * b.C;
  auto from_deviations = [&](int64_t c, double center, double s1, double s2) {
    return moments_from_deviations(center, s1, s2, inv_count, &mean[c - b.c0], &m2[c - b.c0]);
  };
  // Sums shifted by k; a channel the shift does not suit is redone exactly.
  auto put = [&](int64_t c, A k, double s1, double s2) {
    if (from_deviations(c, double(k), s1, s2)) return;
    const T* col = x + c;
    double sum = 0, dev = 0;
    for (int64_t r = b.r0; r < b.r1; ++r) sum += double(sload(col + r * b.C));
    const double mu = sum / count;
    for (int64_t r = b.r0; r < b.r1; ++r) {
      const double e = double(sload(col + r * b.C)) - mu;
      dev += e * e;
    }
    mean[c - b.c0] = mu;
    m2[c - b.c0] = dev;
  };
  if (nsc_periodic<W>(b)) {
    const int64_t C = b.C, P = nsc_period<W>(C);
    // Each channel's shift: the mean of its first kShiftRows rows, as shift_rows_mean.
    alignas(64) A kc[kPanelChannels], kk[kPanelChannels];
    const int64_t rk = imin(b.r0 + kShiftRows, b.r1);
    for (int64_t c = 0; c < C; ++c) {
      A k = 0;
      for (int64_t r = b.r0; r < rk; ++r) k += sload(x + r * C + c);
      kc[c] = k * (A(1) / A(rk - b.r0));
    }
    expand_period(kc, C, P, kk);
    alignas(64) double q1[kPanelChannels], q2[kPanelChannels];
    for (int64_t i = 0; i < P; ++i) q1[i] = q2[i] = 0;
    panel_column_sums<A>(0, (b.r1 - b.r0) / (P / C), 0, P, q1, q2,
                         [&]<int U>(int64_t o, int64_t ra, int64_t rb, V* t1, V* t2) FI_LAMBDA {
                           V k[U];
                           for (int u = 0; u < U; ++u) k[u] = vload(kk + o + u * W);
                           column_dev_sums<U>(first, P, o, ra, rb, k, t1, t2);
                         });
    period_channel_sums<W>(
        b, q1, q2,
        [&](int64_t r, int64_t c, double& s1, double& s2) {
          const double d = double(sload(x + r * C + c) - kc[c]);
          s1 += d;
          s2 += d * d;
        },
        [&](int64_t c, double s1, double s2) { put(c, kc[c], s1, s2); });
    return;
  }
  const int64_t cv = b.c0 + (b.c1 - b.c0) / W * W;  // channels in whole vectors
  for (int64_t p0 = b.c0; p0 < cv; p0 += kPanelChannels) {
    const int64_t p1 = imin(p0 + kPanelChannels, cv);
    alignas(64) A kk[kPanelChannels];
    for_col_chunks<W>(p0, p1, [&]<int U>(int64_t o) FI_LAMBDA {
      V k[U];
      shift_rows_mean<U>(x, b, o, k);
      std::memcpy(kk + (o - p0), k, sizeof(k));
    });
    alignas(64) double s1[kPanelChannels], s2[kPanelChannels];
    for (int64_t i = 0; i < p1 - p0; ++i) s1[i] = s2[i] = 0;
    panel_column_sums<A>(b.r0, b.r1, p0, p1, s1, s2,
                         [&]<int U>(int64_t o, int64_t ra, int64_t rb, V* t1, V* t2) FI_LAMBDA {
                           V k[U];
                           for (int u = 0; u < U; ++u) k[u] = vload(kk + (o - p0) + u * W);
                           column_dev_sums<U>(x, b.C, o, ra, rb, k, t1, t2);
                         });
    for (int64_t i = 0; i < p1 - p0; ++i) put(p0 + i, kk[i], s1[i], s2[i]);
  }
  for (int64_t o = cv; o < b.c1; ++o) {  // the last channels, fewer than a vector
    const A k = sload(first + o);
    double s1 = 0, s2 = 0;
    for (int64_t r = b.r0 + 1; r < b.r1; ++r) {
      const double d = double(sload(x + r * b.C + o) - k);
      s1 += d;
      s2 += d * d;
    }
    put(o, k, s1, s2);
  }
}

// f.template operator()<Centered, Stream>() with the flags as compile-time constants: no
// per-vector test of the output form in the row loops (rows of a few vectors felt it).
template <typename F>
FI void with_forms(bool centered, bool stream, const F& f) {
  if (centered) {
    if (stream) f.template operator()<true, true>();
    else f.template operator()<true, false>();
  } else {
    if (stream) f.template operator()<false, true>();
    else f.template operator()<false, false>();
  }
}

// Elementwise NSC kernels run row-major over the block's full width (the order the hardware
// prefetchers follow best); the per-channel parameters are L1-resident loads.

// Whether block b is whole rows of whole vectors (one flat stream in for_nsc_vectors).
template <int W> FI bool nsc_flat(const NscBlock& b) {
  return b.c0 == 0 && b.c1 == b.C && b.C % W == 0;
}
// Outputs of a block stream only when it runs flat or by periods (see map_run: rows with a
// partial last vector would mix streamed and plain stores on the lines their scalars share).
template <int W> FI bool nsc_stream(const NscBlock& b) {
  return b.stream && (nsc_flat<W>(b) || nsc_periodic<W>(b));
}

// A block's per-channel parameters as its elementwise loop indexes them: the arrays themselves,
// or (expand) each array expanded to the block's lanes by f(array, lanes): the lanes of a
// period (NSC by periods, nsc_periodic) or of the block's spans (NCS spans; expand_runs needs
// the vector of slack). Null arrays stay null.
template <typename A, int K>
struct LaneParams {
  alignas(64) A lanes[K][kPanelChannels + VecOf<A>::W];
  const A* p[K];
  template <typename Expand>
  FI LaneParams(const std::array<const A*, K>& v, bool expand, const Expand& f) {
    for (int k = 0; k < K; ++k) {
      p[k] = v[k];
      if (expand && v[k]) {
        f(v[k], lanes[k]);
        p[k] = lanes[k];
      }
    }
  }
};
// The NSC kernels' parameters: expanded to a period's lanes when the block goes by periods.
template <int W, typename A, int K>
FI auto nsc_params(const NscBlock& b, const std::array<const A*, K>& v) {
  return LaneParams<A, K>(v, nsc_periodic<W>(b), [&](const A* a, A* out) {
    expand_period(a, b.C, nsc_period<W>(b.C), out);
  });
}

// The elements [nt0, nt1) of out[e0, e1) that lie on whole cache lines of it: those that may
// be streamed when plain stores (of scalars, or of a neighbour) may touch the lines at either
// end (see map_run). Empty without Stream.
template <bool Stream, typename T>
FI std::pair<int64_t, int64_t> stream_window(const T* out, int64_t e0, int64_t e1) {
  if constexpr (Stream) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(out);
    const uintptr_t lo = (base + e0 * sizeof(T) + 63) & ~uintptr_t(63);
    const uintptr_t hi = (base + e1 * sizeof(T)) & ~uintptr_t(63);
    if (hi > lo) return {int64_t(lo - base) / int64_t(sizeof(T)), int64_t(hi - base) / int64_t(sizeof(T))};
  }
  return {0, 0};
}

// vec(i, c, stream) for the whole vectors of block b (i: offset of the vector's first element,
// c: its index into the block's parameters, see nsc_params; stream: whether to write it with a
// non-temporal store) and scal(i, c) for the other elements. Whole rows of whole vectors run as
// one flat stream, the channel offset wrapping at C: rows of a few vectors paid a row loop's
// overhead every few vectors. By periods (nsc_periodic), c is the lane of the period and
// scal gets the rows after the last whole one; streamed vectors only on lines that no scalar
// store, of this block or of a neighbour, touches (see map_run). Stream: nsc_stream(b).
template <int W, bool Stream, typename T, typename VF, typename SF>
FI void for_nsc_vectors(T* out, const NscBlock& b, const VF& vec, const SF& scal) {
  const int64_t C = b.C, c0 = b.c0, c1 = b.c1, cv = c0 + (c1 - c0) / W * W;
  if (nsc_periodic<W>(b)) {
    const int64_t P = nsc_period<W>(C), e0 = b.r0 * C, e1 = b.r1 * C;
    const int64_t ev = e0 + (e1 - e0) / P * P;  // end of the whole periods
    const auto [nt0, nt1] = stream_window<Stream>(out, e0, ev);
    for (int64_t i = e0; i < ev; i += P)
      for (int64_t o = 0; o < P; o += W) vec(i + o, o, Stream && i + o >= nt0 && i + o + W <= nt1);
    for (int64_t i = ev; i < e1; ++i) scal(i, (i - e0) % P);
    return;
  }
  if (nsc_flat<W>(b)) {
    int64_t c = 0;
    for (int64_t i = b.r0 * C, e = b.r1 * C; i < e; i += W) {
      vec(i, c, Stream);
      c += W;
      c = c == C ? 0 : c;
    }
    return;
  }
  for (int64_t r = b.r0; r < b.r1; ++r) {
    const int64_t base = r * C;
    for (int64_t c = c0; c < cv; c += W) vec(base + c, c, Stream);
    for (int64_t c = cv; c < c1; ++c) scal(base + c, c);
  }
}

// y = (x − center)·scale + shift, or with center null the folded y = x·scale + shift, the
// parameters indexed by the lane c that walk gives each vector:
// walk.template operator()<Stream>(vec, scal) calls vec(i, c, stream) and scal(i, c) (see
// for_nsc_vectors).
// With an epilogue E (residual, activation: f), the centred form only (the caller passes
// center: the backward recomputes z centred).
template <typename E, typename T, typename A, typename Walk>
FI void affine_lanes(const T* x, T* y, const A* pc, const A* ps, const A* ph, bool stream,
                     const Walk& walk, const Fuse<T>& f) {
  // Captures by value: with -fno-strict-aliasing, pointers read through references would be
  // reloaded after every store.
  const T* r = f.residual;
  const A slope = f.slope;
  with_forms(pc != nullptr, stream, [=]<bool Centered, bool Stream>() {
    if constexpr (E::kPlain || Centered) {
      walk.template operator()<Stream>(
          [=](int64_t i, int64_t c, bool stream) FI_LAMBDA {
            auto xv = vload(x + i);
            if constexpr (Centered) xv = xv - vload(pc + c);
            vout(y + i, E::out(xv * vload(ps + c) + vload(ph + c), r, i, slope), stream);
          },
          [=](int64_t i, int64_t c) FI_LAMBDA {
            sstore(y + i, E::out((sload(x + i) - (Centered ? pc[c] : A(0))) * ps[c] + ph[c], r, i,
                                 slope));
          });
    }
  });
}

// dx = dy·k0 + (x − mean)·k1 + k2, or with mean null the folded dy·k0 + x·k1 + k2, walked as
// affine_lanes.
template <typename T, typename A, typename Walk>
FI void dx_lanes(const T* x, const T* dy, T* dx, const A* pm, const A* q0, const A* q1,
                 const A* q2, bool stream, const Walk& walk) {
  with_forms(pm != nullptr, stream, [=]<bool Centered, bool Stream>() {
    walk.template operator()<Stream>(
        [=](int64_t i, int64_t c, bool stream) FI_LAMBDA {
          auto xv = vload(x + i);
          if constexpr (Centered) xv = xv - vload(pm + c);
          vout(dx + i, dx_value(vload(dy + i), xv, vload(q0 + c), vload(q1 + c), vload(q2 + c)),
               stream);
        },
        [=](int64_t i, int64_t c) FI_LAMBDA {
          sstore(dx + i, dx_value(sload(dy + i), sload(x + i) - (Centered ? pm[c] : A(0)), q0[c],
                                  q1[c], q2[c]));
        });
  });
}

template <typename T, typename A>
void nsc_affine(const T* x, T* y, const NscBlock& b, const A* center, const A* scale,
                const A* shift, const Fuse<T>& f) {
  constexpr int W = VecOf<A>::W;
  const auto params = nsc_params<W, A, 3>(b, {center, scale, shift});
  with_epilogue(f, [&]<typename E>() {
    affine_lanes<E>(x, y, params.p[0], params.p[1], params.p[2], nsc_stream<W>(b),
                    [&]<bool Stream>(const auto& vec, const auto& scal) FI_LAMBDA {
                      for_nsc_vectors<W, Stream>(y, b, vec, scal);
                    },
                    f);
  });
  end_stream(b.stream);
}

// The fused backward's pointers and per-column arrays (GradFuse) for the column sums: residual
// and g with x's origin and row length, scale and shift indexed as the means.
template <typename T, typename A>
struct GradCols {
  const T* r = nullptr;
  T* g = nullptr;
  const A *s = nullptr, *h = nullptr;
  A slope = 0;
};

// The column sums of panel_column_sums for the backward: Σg and Σg·(x − m) per column
// chunk in registers, of rows of C elements from x and dy with the means m indexed by column;
// g = dy, or (G not plain) dy·act'(z), stored to f.g.
template <typename G, typename A, typename T>
FI auto bwd_column_sums(const T* x, const T* dy, int64_t C, const A* m, const GradCols<T, A>& f = {}) {
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  return [=]<int U>(int64_t o, int64_t ra, int64_t rb, V* t0, V* t1) FI_LAMBDA {
    V mv[U];
    for (int u = 0; u < U; ++u) mv[u] = vload(m + o + u * W);
    for (int64_t r = ra; r < rb; ++r) {
      const T *xr = x + r * C + o, *gr = dy + r * C + o;
      for (int u = 0; u < U; ++u) {
        V g = vload(gr + u * W);
        const V xmu = vload(xr + u * W) - mv[u];
        if constexpr (!G::kPlain) {
          const int64_t i = r * C + o + u * W;
          g = G::g(g, xmu, vload(f.s + o + u * W), vload(f.h + o + u * W), f.r, i, f.slope);
          vstore(f.g + i, g);
        }
        t0[u] += g;
        t1[u] += g * xmu;
      }
    }
  };
}

template <typename G, typename T, typename A>
void nsc_bwd_sums_g(const T* x, const T* dy, const NscBlock& b, const A* mean, double* s0,
                    double* s1, const GradFuse<T>& gf) {
  constexpr int W = VecOf<A>::W;
  // Channel o's terms of row r, in scalar.
  auto row_terms = [&](int64_t r, int64_t o, double& t0, double& t1) {
    const int64_t i = r * b.C + o;
    A g = sload(dy + i);
    const A xmu = sload(x + i) - mean[o];
    if constexpr (!G::kPlain) {
      g = G::g(g, xmu, gf.scale[o], gf.shift[o], gf.residual, i, gf.slope);
      sstore(gf.g + i, g);
    }
    t0 += double(g);
    t1 += double(g * xmu);
  };
  if (nsc_periodic<W>(b)) {
    const int64_t C = b.C, P = nsc_period<W>(C), at = b.r0 * C;
    alignas(64) A mm[kPanelChannels], ss[kPanelChannels], hh[kPanelChannels];
    expand_period(mean, C, P, mm);
    GradCols<T, A> f;
    if constexpr (!G::kPlain) {
      expand_period(gf.scale, C, P, ss);
      expand_period(gf.shift, C, P, hh);
      f = {at_offset(gf.residual, at), gf.g + at, ss, hh, gf.slope};
    }
    alignas(64) double q0[kPanelChannels], q1[kPanelChannels];
    for (int64_t i = 0; i < P; ++i) q0[i] = q1[i] = 0;
    panel_column_sums<A>(0, (b.r1 - b.r0) / (P / C), 0, P, q0, q1,
                         bwd_column_sums<G, A>(x + at, dy + at, P, mm, f));
    period_channel_sums<W>(b, q0, q1, row_terms, [&](int64_t c, double t0, double t1) {
      s0[c] = t0;
      s1[c] = t1;
    });
    return;
  }
  const int64_t cv = b.c0 + (b.c1 - b.c0) / W * W;  // channels in whole vectors
  for (int64_t p0 = b.c0; p0 < cv; p0 += kPanelChannels) {
    const int64_t p1 = imin(p0 + kPanelChannels, cv);
    double* q0 = s0 + (p0 - b.c0);
    double* q1 = s1 + (p0 - b.c0);
    for (int64_t i = 0; i < p1 - p0; ++i) q0[i] = q1[i] = 0;
    GradCols<T, A> f;
    if constexpr (!G::kPlain) f = {gf.residual, gf.g, gf.scale, gf.shift, gf.slope};
    panel_column_sums<A>(b.r0, b.r1, p0, p1, q0, q1, bwd_column_sums<G, A>(x, dy, b.C, mean, f));
  }
  for (int64_t o = cv; o < b.c1; ++o) {
    double t0 = 0, t1 = 0;
    for (int64_t r = b.r0; r < b.r1; ++r) row_terms(r, o, t0, t1);
    s0[o - b.c0] = t0;
    s1[o - b.c0] = t1;
  }
}

template <typename T, typename A>
void nsc_bwd_sums(const T* x, const T* dy, const NscBlock& b, const A* mean, double* s0,
                  double* s1, const GradFuse<T>& gf) {
  with_grad(gf, [&]<typename G>() { nsc_bwd_sums_g<G>(x, dy, b, mean, s0, s1, gf); });
}

template <typename T, typename A>
void nsc_bwd_dx(const T* x, const T* dy, T* dx, const NscBlock& b, const A* mean, const A* k0,
                const A* k1, const A* k2) {
  constexpr int W = VecOf<A>::W;
  const auto params = nsc_params<W, A, 4>(b, {mean, k0, k1, k2});
  dx_lanes(x, dy, dx, params.p[0], params.p[1], params.p[2], params.p[3], nsc_stream<W>(b),
           [&]<bool Stream>(const auto& vec, const auto& scal) FI_LAMBDA {
             for_nsc_vectors<W, Stream>(dx, b, vec, scal);
           });
  end_stream(b.stream);
}

// ---------------------------------------------------------------- NCS spans
// NCS maps shorter than 4 vectors (7×7 and smaller with 16 lanes), by spans (NcsSpans): the
// channels of a block in one sample are one contiguous span, whose lane l holds channel
// c0 + l / S. The reductions are the column sums of the spans over the samples
// (panel_column_sums, as for NSC rows, with each channel's shift or mean expanded to its
// lanes); a channel's sums are those of its S lanes (lane_run_sum); the elementwise passes go
// over the spans in whole vectors with expanded parameters (affine_lanes, dx_lanes). Run by run, a 7×7 map took three vectors
// and an overlapping partial one, and every channel a Reducer's folds and horizontal sums:
// the bfloat16 16×2048×7×7 forward took 1.45× as long as 16×392×16×16, of the same size.
static_assert(kMaxSpanLanes == kPanelChannels, "a block's spans are one panel");

// out[l] = v[l / S] for the lanes of channels [0, nc). out has a vector of slack: a channel's
// last vector spills into the lanes after it, which the next channels overwrite.
template <typename A>
FI void expand_runs(const A* v, int64_t nc, int64_t S, A* out) {
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  for (int64_t i = 0; i < nc; ++i) {
    const V b = V{} + v[i];
    for (int64_t l = i * S, e = l + S; l < e; l += W) vstore(out + l, b);
  }
}

// The lanes of a vector added in a fixed pairwise order.
template <typename V>
FI auto lane_total(V v) {
  using E = std::remove_reference_t<decltype(v[0])>;
  constexpr int W = int(sizeof(V) / sizeof(E));
  E t[W];
  std::memcpy(t, &v, sizeof(V));
  for (int h = W / 2; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) t[l] += t[l + h];
  return t[0];
}

// Σ q[0, S) in a fixed order: whole vectors from q, the last partial one (ending at q + S,
// `last` keeping its S % W new lanes) masked, then lane_total; in scalar below a vector. The
// same for every block and thread count.
template <typename E>
FI E lane_run_sum(const E* q, int64_t S, const LastLanes<typename VecOf<E>::V>& last) {
  using V = typename VecOf<E>::V;
  constexpr int W = VecOf<E>::W;
  if (S < W) {
    E s = 0;
    for (int64_t l = 0; l < S; ++l) s += q[l];
    return s;
  }
  V acc = vload(q);
  int64_t l = W;
  for (; l + W <= S; l += W) acc += vload(q + l);
  if (l < S) acc += last(vload(q + S - W));
  return lane_total(acc);
}

// Per-channel sums of a block's spans: panel_column_sums over the N samples with the column
// sums `sums`, then each channel's S lanes (out(i, s1, s2) for channel c0 + i).
template <typename A, typename F, typename Out>
FI void span_channel_sums(const NcsSpans& b, const F& sums, const Out& out) {
  const int64_t nc = b.c1 - b.c0, P = nc * b.S;
  alignas(64) double q1[kMaxSpanLanes], q2[kMaxSpanLanes];
  for (int64_t l = 0; l < P; ++l) q1[l] = q2[l] = 0;
  panel_column_sums<A>(0, b.N, 0, P, q1, q2, sums);
  const LastLanes<vd> last(int(b.S % (VB / 8)));
  for (int64_t i = 0; i < nc; ++i) out(i, lane_run_sum(q1 + i * b.S, b.S, last),
                                       lane_run_sum(q2 + i * b.S, b.S, last));
}

template <typename T>
void ncs_span_moments(const T* x, const NcsSpans& b, double* mean, double* m2) {
  using A = typename KAcc<T>::type;
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  const int64_t nc = b.c1 - b.c0, P = nc * b.S, row = b.C * b.S;
  const T* span = x + b.c0 * b.S;  // sample 0's span
  // Each channel's shift: the mean of its runs in the first kShiftRows samples (one sample's
  // value lies about a standard deviation from the mean: see shift_rows_mean).
  alignas(64) A k[kMaxSpanLanes + W];
  A kc[kMaxSpanLanes];
  const int64_t rk = imin(kShiftRows, b.N);
  for (int64_t o = 0; o < P; o += W) {
    V s{};
    for (int64_t r = 0; r < rk; ++r) s += vload(span + r * row + o);
    vstore(k + o, s);
  }
  const LastLanes<V> last(int(b.S % W));
  const A inv = A(1) / A(rk * b.S);
  for (int64_t i = 0; i < nc; ++i) kc[i] = lane_run_sum(k + i * b.S, b.S, last) * inv;
  expand_runs(kc, nc, b.S, k);
  const double count = double(b.N * b.S);
  span_channel_sums<A>(
      b,
      [&]<int U>(int64_t o, int64_t ra, int64_t rb, V* t1, V* t2) FI_LAMBDA {
        V kv[U];
        for (int u = 0; u < U; ++u) kv[u] = vload(k + o + u * W);
        column_dev_sums<U>(span, row, o, ra, rb, kv, t1, t2);
      },
      [&](int64_t i, double s1, double s2) {
        if (moments_from_deviations(double(kc[i]), s1, s2, 1 / count, &mean[i], &m2[i])) return;
        double o[2];  // the shift did not suit: the whole channel by ncs_moments
        ncs_moments(x, NcsPiece{b.C, b.S, b.c0 + i, 0, b.N * b.S}, o);
        mean[i] = o[0];
        m2[i] = o[1];
      });
}

// vec(i, l, stream) for the whole vectors of the spans (i: element offset, l: lane), streamed
// on the whole cache lines of each span.
template <int W, bool Stream, typename T, typename VF>
FI void for_span_vectors(T* out, const NcsSpans& b, const VF& vec) {
  const int64_t P = (b.c1 - b.c0) * b.S, row = b.C * b.S;
  for (int64_t n = 0; n < b.N; ++n) {
    const int64_t e0 = n * row + b.c0 * b.S;
    const auto [nt0, nt1] = stream_window<Stream>(out, e0, e0 + P);
    for (int64_t l = 0; l < P; l += W) {
      const int64_t i = e0 + l;
      vec(i, l, Stream && i >= nt0 && i + W <= nt1);
    }
  }
}

// A block's per-channel parameters expanded to the lanes of its spans (a null array stays null:
// the folded forms).
template <typename A, int K>
FI auto span_params(const NcsSpans& b, const std::array<const A*, K>& v) {
  return LaneParams<A, K>(v, true, [&](const A* a, A* out) {
    expand_runs(a + b.c0, b.c1 - b.c0, b.S, out);
  });
}

template <typename T, typename A>
void ncs_span_affine(const T* x, T* y, const NcsSpans& b, const A* center, const A* scale,
                     const A* shift, const Fuse<T>& f) {
  constexpr int W = VecOf<A>::W;
  const auto p = span_params<A, 3>(b, {center, scale, shift});
  with_epilogue(f, [&]<typename E>() {
    affine_lanes<E>(x, y, p.p[0], p.p[1], p.p[2], b.stream,
                    [&]<bool Stream>(const auto& vec, const auto&) FI_LAMBDA {
                      for_span_vectors<W, Stream>(y, b, vec);
                    },
                    f);
  });
  end_stream(b.stream);
}

template <typename T, typename A>
void ncs_span_bwd_sums(const T* x, const T* dy, const NcsSpans& b, const A* mean, double* s0,
                       double* s1, const GradFuse<T>& gf) {
  constexpr int W = VecOf<A>::W;
  alignas(64) A m[kMaxSpanLanes + W], ss[kMaxSpanLanes + W], hh[kMaxSpanLanes + W];
  expand_runs(mean + b.c0, b.c1 - b.c0, b.S, m);
  const int64_t at = b.c0 * b.S;  // sample 0's span
  with_grad(gf, [&]<typename G>() {
    GradCols<T, A> f;
    if constexpr (!G::kPlain) {
      expand_runs(gf.scale + b.c0, b.c1 - b.c0, b.S, ss);
      expand_runs(gf.shift + b.c0, b.c1 - b.c0, b.S, hh);
      f = {at_offset(gf.residual, at), gf.g + at, ss, hh, gf.slope};
    }
    span_channel_sums<A>(b, bwd_column_sums<G, A>(x + at, dy + at, b.C * b.S, m, f),
                         [&](int64_t i, double t0, double t1) {
                           s0[i] = t0;
                           s1[i] = t1;
                         });
  });
}

template <typename T, typename A>
void ncs_span_dx(const T* x, const T* dy, T* dx, const NcsSpans& b, const A* mean, const A* k0,
                 const A* k1, const A* k2) {
  constexpr int W = VecOf<A>::W;
  const auto p = span_params<A, 4>(b, {mean, k0, k1, k2});
  dx_lanes(x, dy, dx, p.p[0], p.p[1], p.p[2], p.p[3], b.stream,
           [&]<bool Stream>(const auto& vec, const auto&) FI_LAMBDA {
             for_span_vectors<W, Stream>(dx, b, vec);
           });
  end_stream(b.stream);
}

template <typename T>
Kernels<T> make_kernels() {
  using A = typename KAcc<T>::type;
  Kernels<T> k;
  k.width = VecOf<A>::W;
  k.ncs_moments = &ncs_moments<T>;
  k.ncs_affine = &ncs_affine<T, A>;
  k.ncs_affine_rows = &ncs_affine_rows<T, A>;
  k.ncs_bwd_sums = &ncs_bwd_sums<T, A>;
  k.ncs_bwd_dx = &ncs_bwd_dx<T, A>;
  k.ncs_bwd_dx_rows = &ncs_bwd_dx_rows<T, A>;
  k.ncs_block_moments = &ncs_block_moments<T, A>;
  k.ncs_block_bwd = &ncs_block_bwd<T, A>;
  k.ncs_span_moments = &ncs_span_moments<T>;
  k.ncs_span_affine = &ncs_span_affine<T, A>;
  k.ncs_span_bwd_sums = &ncs_span_bwd_sums<T, A>;
  k.ncs_span_dx = &ncs_span_dx<T, A>;
  k.nsc_moments = &nsc_moments<T>;
  k.nsc_affine = &nsc_affine<T, A>;
  k.nsc_bwd_sums = &nsc_bwd_sums<T, A>;
  k.nsc_bwd_dx = &nsc_bwd_dx<T, A>;
  return k;
}

#undef FI

}  // namespace

inline KernelTable make_table(const char* isa) {
  return {isa, make_kernels<float>(), make_kernels<double>(), make_kernels<bf16_t>(),
          make_kernels<half_t>()};
}

}  // namespace fastbn::cpu::FASTBN_ISA_NS
