// Implementation of the kernels declared in kernels.h, written once with GCC vector extensions
// and compiled per instruction set: a translation unit defines FASTBN_ISA_NS (and enables its
// ISA with #pragma GCC target before including this file). The vector width follows the ISA
// (16 / 32 / 64 bytes); everything here has internal linkage (anonymous namespace) so that no
// ISA-specific code can leak into another translation unit through the linker.
//
// Numerics, identical in every ISA up to the vector width (which only changes the order of
// the partial sums): float lanes are folded into double every kFoldVecs vectors (each float
// lane then holds at most 64 elements), tails are summed in scalar and folded per run, and the
// statistics of a piece are exact two-pass: Σx → center, then Σ(x − center) and Σ(x − center)²
// → mean = center + Σd/n, M2 = Σd² − (Σd)²/n. With FMA (AVX2, AVX-512) GCC contracts
// a·b + c in vector bodies and scalar tails alike.
#ifndef FASTBN_ISA_NS
#error "define FASTBN_ISA_NS before including kernels_impl.h"
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

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
// Round to nearest even, NaN → quiet NaN (as c10::BFloat16).
FI void sstore(bf16_t* p, float v) {
  if (v != v) { p->x = 0x7FC0; return; }
  const uint32_t u = f32_bits(v);
  p->x = uint16_t((u + (((u >> 16) & 1) + 0x7FFF)) >> 16);
}
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
// Round to nearest even, NaN → 0x7FC0 (as c10::BFloat16).
FI void vstore(bf16_t* p, vf v) {
  const __m512i u = _mm512_castps_si512((__m512)v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(r));
}
#elif FASTBN_VB == 32
FI vf vload(const bf16_t* p) {
  return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16);
}
FI void vstore(bf16_t* p, vf v) {
  const __m256i u = _mm256_castps_si256((__m256)v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256 nan = _mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q);
  r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0)), nan));
  _mm_storeu_si128((__m128i*)p, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}
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
FI void vstore(half_t* p, vf v) {
  _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#elif FASTBN_VB == 32
FI vf vload(const half_t* p) { return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
FI void vstore(half_t* p, vf v) {
  _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
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

// ---------------------------------------------------------------- reductions
constexpr int64_t kFoldVecs = 64;  // vectors per float block (16 per accumulator)

// W double lanes plus a scalar tail, summed in a fixed order at the end.
template <typename A>
struct DSum {
  static constexpr int W = VecOf<A>::W;
  double lane[W] = {};
  double tail = 0;
  FI void fold(typename VecOf<A>::V v) {
    A t[W];
    std::memcpy(t, &v, sizeof(v));
    for (int l = 0; l < W; ++l) lane[l] += double(t[l]);
  }
  FI double total() const {
    double s = 0;
    for (int l = 0; l < W; ++l) s += lane[l];
    return s + tail;
  }
};

// v with all but its last r lanes set to zero (a compare against a constant lane index).
typedef int64_t vi64 __attribute__((vector_size(VB)));
template <typename V>
FI V keep_last(V v, int r) {
  if constexpr (sizeof(v[0]) == 4) {
    alignas(64) static constexpr int32_t iota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    vi32 lane;
    std::memcpy(&lane, iota, VB);
    const vi32 keep = lane >= (VB / 4 - r);
    return (V)((vi32)v & keep);
  } else {
    alignas(64) static constexpr int64_t iota[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    vi64 lane;
    std::memcpy(&lane, iota, VB);
    const vi64 keep = lane >= int64_t(VB / 8 - r);
    return (V)((vi64)v & keep);
  }
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
// vectors and at the end; scalar tails in float, folded every 64 elements and at the end.
// vfun(p, a) adds the K vectors of elements [p, p + W) of the current run to a; sfun(p, t) the
// K scalars of element p.
template <typename A, int K>
struct Reducer {
  using V = typename VecOf<A>::V;
  static constexpr int W = VecOf<A>::W;
  V a0[K], a1[K], a2[K], a3[K];
  A t[K] = {};
  int64_t nvec = 0, nscalar = 0;
  DSum<A> out[K];
  FI Reducer() { clear(); }
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
  template <typename VF, typename SF>
  FI void run(int64_t n, const VF& vfun, const SF& sfun) {
    int64_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
      vfun(i, a0);
      vfun(i + W, a1);
      vfun(i + 2 * W, a2);
      vfun(i + 3 * W, a3);
      if ((nvec += 4) >= kFoldVecs) flush();
    }
    // Up to 3 more whole vectors and a partial one, each into its own accumulator so that
    // short runs (e.g. 7×7 maps) do not chain their additions through one register.
    const int64_t q = (n - i) / W;
    if (q > 0) vfun(i, a0);
    if (q > 1) vfun(i + W, a1);
    if (q > 2) vfun(i + 2 * W, a2);
    i += q * W;
    nvec += q;
    if (i < n && n >= W) {
      // The last r < W elements: one vector ending at the run's end, the lanes that overlap
      // elements already summed zeroed.
      const int r = int(n - i);
      V v[K] = {};
      vfun(n - W, v);
      for (int k = 0; k < K; ++k) a3[k] += keep_last(v[k], r);
      ++nvec;
      i = n;
    }
    if (nvec >= kFoldVecs - 4) flush();
    for (; i < n; ++i) {
      sfun(i, t);
      if (++nscalar >= 64) flush_tail();
    }
  }
  FI void finish() {
    flush();
    flush_tail();
  }
};

// ---------------------------------------------------------------- NCS kernels
template <typename T>
void ncs_moments(const T* x, const NcsPiece& p, double* out) {
  using A = typename KAcc<T>::type;
  using V = typename VecOf<A>::V;
  const double count = double(p.j1 - p.j0);
  Reducer<A, 1> sum;
  for_each_run(p, [&](int64_t off, int64_t len) {
    const T* q = x + off;
    sum.run(len, [q](int64_t i, V* a) { a[0] += vload(q + i); },
            [q](int64_t i, A* t) { t[0] += sload(q + i); });
  });
  sum.finish();
  const A center = A(sum.out[0].total() / count);
  const V vc = V{} + center;
  Reducer<A, 2> dev;
  for_each_run(p, [&](int64_t off, int64_t len) {
    const T* q = x + off;
    dev.run(len,
            [q, vc](int64_t i, V* a) {
              const V d = vload(q + i) - vc;
              a[0] += d;
              a[1] += d * d;
            },
            [q, center](int64_t i, A* t) {
              const A d = sload(q + i) - center;
              t[0] += d;
              t[1] += d * d;
            });
  });
  dev.finish();
  const double s1 = dev.out[0].total(), s2 = dev.out[1].total();
  const double m2 = s2 - s1 * s1 / count;
  out[0] = double(center) + s1 / count;
  out[1] = m2 > 0 ? m2 : 0;
}

template <typename T, typename A>
void ncs_affine(const T* x, T* y, const NcsPiece& p, A center, A scale, A shift) {
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  const V vc = V{} + center, vs = V{} + scale, vb = V{} + shift;
  const bool alias = (const void*)x == (const void*)y;
  for_each_run(p, [&](int64_t off, int64_t n) {
    const T* xi = x + off;
    T* yi = y + off;
    int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
      vstore(yi + i, (vload(xi + i) - vc) * vs + vb);
      vstore(yi + i + W, (vload(xi + i + W) - vc) * vs + vb);
    }
    for (; i + W <= n; i += W) vstore(yi + i, (vload(xi + i) - vc) * vs + vb);
    if (i < n && n >= W && !alias) {  // overlapping last vector: recomputed from x, same values
      vstore(yi + n - W, (vload(xi + n - W) - vc) * vs + vb);
      return;
    }
    for (; i < n; ++i) sstore(yi + i, (sload(xi + i) - center) * scale + shift);
  });
}

// Rows k in [k0, k1) of S contiguous elements, channel k % C (no division per row).
template <typename T, typename A>
void ncs_affine_rows(const T* x, T* y, int64_t C, int64_t S, int64_t k0, int64_t k1,
                     const A* center, const A* scale, const A* shift) {
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  const bool alias = (const void*)x == (const void*)y;
  int64_t c = k0 % C;
  for (int64_t k = k0; k < k1; ++k) {
    const T* xi = x + k * S;
    T* yi = y + k * S;
    const A ce = center[c], sc = scale[c], sh = shift[c];
    const V vc = V{} + ce, vs = V{} + sc, vb = V{} + sh;
    int64_t i = 0;
    for (; i + W <= S; i += W) vstore(yi + i, (vload(xi + i) - vc) * vs + vb);
    if (i < S && S >= W && !alias) {
      vstore(yi + S - W, (vload(xi + S - W) - vc) * vs + vb);
    } else {
      for (; i < S; ++i) sstore(yi + i, (sload(xi + i) - ce) * sc + sh);
    }
    if (++c == C) c = 0;
  }
}

template <typename T, typename A>
void ncs_bwd_sums(const T* x, const T* dy, const NcsPiece& p, A mean, double* out) {
  using V = typename VecOf<A>::V;
  Reducer<A, 2> s;
  const V vm = V{} + mean;
  for_each_run(p, [&](int64_t off, int64_t len) {
    const T *xi = x + off, *gi = dy + off;
    s.run(len,
          [xi, gi, vm](int64_t i, V* a) {
            const V g = vload(gi + i);
            a[0] += g;
            a[1] += g * (vload(xi + i) - vm);
          },
          [xi, gi, mean](int64_t i, A* t) {
            const A g = sload(gi + i);
            t[0] += g;
            t[1] += g * (sload(xi + i) - mean);
          });
  });
  s.finish();
  out[0] = s.out[0].total();
  out[1] = s.out[1].total();
}

template <typename T, typename A>
void ncs_bwd_dx(const T* x, const T* dy, T* dx, const NcsPiece& p, A mean, A k0, A k1, A k2) {
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  const V vm = V{} + mean, v0 = V{} + k0, v1 = V{} + k1, v2 = V{} + k2;
  const bool alias = (const void*)dx == (const void*)x || (const void*)dx == (const void*)dy;
  for_each_run(p, [&](int64_t off, int64_t n) {
    const T *xi = x + off, *gi = dy + off;
    T* di = dx + off;
    int64_t i = 0;
    for (; i + W <= n; i += W)
      vstore(di + i, vload(gi + i) * v0 + (vload(xi + i) - vm) * v1 + v2);
    if (i < n && n >= W && !alias) {
      const int64_t j = n - W;
      vstore(di + j, vload(gi + j) * v0 + (vload(xi + j) - vm) * v1 + v2);
      return;
    }
    for (; i < n; ++i) sstore(di + i, sload(gi + i) * k0 + (sload(xi + i) - mean) * k1 + k2);
  });
}

// ---------------------------------------------------------------- NSC kernels
// Channel columns are processed in sub-blocks of kSub channels: full vectors in registers or
// L1 arrays, the remaining < W channels in scalar.
constexpr int64_t kSub = 256;

template <typename T>
void nsc_moments(const T* x, const NscBlock& b, double* mean, double* m2) {
  using A = typename KAcc<T>::type;
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  const double count = double(b.r1 - b.r0);
  for (int64_t cs = b.c0; cs < b.c1; cs += kSub) {
    const int64_t ce = imin(b.c1, cs + kSub), nv = (ce - cs) / W, nt = (ce - cs) - nv * W;
    V acc[kSub / W], acc2[kSub / W];
    A ts[W], ts2[W];
    for (int64_t v = 0; v < nv; ++v) acc[v] = V{};
    for (int64_t t = 0; t < nt; ++t) ts[t] = 0;
    for (int64_t r = b.r0; r < b.r1; ++r) {
      const T* row = x + r * b.C + cs;
      for (int64_t v = 0; v < nv; ++v) acc[v] += vload(row + v * W);
      for (int64_t t = 0; t < nt; ++t) ts[t] += sload(row + nv * W + t);
    }
    alignas(64) A center[kSub];
    for (int64_t v = 0; v < nv; ++v) {
      A t[W];
      std::memcpy(t, &acc[v], sizeof(V));
      for (int l = 0; l < W; ++l) center[v * W + l] = A(double(t[l]) / count);
    }
    for (int64_t t = 0; t < nt; ++t) center[nv * W + t] = A(double(ts[t]) / count);
    // Second pass (the band is in L2): centers and both sums in registers per column chunk.
    const int64_t o_end = for_col_chunks<W>(cs, cs + nv * W, [&]<int U>(int64_t o) {
      V c[U], s1[U], s2[U];
      for (int u = 0; u < U; ++u) {
        c[u] = vload(center + (o - cs) + u * W);
        s1[u] = s2[u] = V{};
      }
      for (int64_t r = b.r0; r < b.r1; ++r) {
        const T* row = x + r * b.C + o;
        for (int u = 0; u < U; ++u) {
          const V d = vload(row + u * W) - c[u];
          s1[u] += d;
          s2[u] += d * d;
        }
      }
      for (int u = 0; u < U; ++u) {
        acc[(o - cs) / W + u] = s1[u];
        acc2[(o - cs) / W + u] = s2[u];
      }
    });
    (void)o_end;
    for (int64_t t = 0; t < nt; ++t) ts[t] = ts2[t] = 0;
    for (int64_t r = b.r0; r < b.r1; ++r) {
      const T* row = x + r * b.C + cs;
      for (int64_t t = 0; t < nt; ++t) {
        const A d = sload(row + nv * W + t) - center[nv * W + t];
        ts[t] += d;
        ts2[t] += d * d;
      }
    }
    auto put = [&](int64_t k, A s1f, A s2f) {
      const double s1 = s1f, s2 = s2f, q = s2 - s1 * s1 / count;
      mean[cs - b.c0 + k] = double(center[k]) + s1 / count;
      m2[cs - b.c0 + k] = q > 0 ? q : 0;
    };
    for (int64_t v = 0; v < nv; ++v) {
      A t1[W], t2[W];
      std::memcpy(t1, &acc[v], sizeof(V));
      std::memcpy(t2, &acc2[v], sizeof(V));
      for (int l = 0; l < W; ++l) put(v * W + l, t1[l], t2[l]);
    }
    for (int64_t t = 0; t < nt; ++t) put(nv * W + t, ts[t], ts2[t]);
  }
}

// Calls f.template operator()<U>(o) for column chunks of U = 4 vectors, then U = 1, starting at
// channel o; returns the first channel not covered by whole vectors.
template <int W, typename F>
FI int64_t for_col_chunks(int64_t c0, int64_t c1, const F& f) {
  int64_t o = c0;
  for (; o + 4 * W <= c1; o += 4 * W) f.template operator()<4>(o);
  for (; o + W <= c1; o += W) f.template operator()<1>(o);
  return o;
}

// Elementwise NSC kernels run row-major over the block's full width (the order the hardware
// prefetchers follow best); the per-channel parameters are L1-resident loads.
// Whole rows of fewer than W channels: the block is one contiguous stream whose parameters
// repeat every P = lcm(C, W) elements; P/W parameter vectors cover a period.
template <typename T, typename A>
void nsc_affine_narrow(const T* x, T* y, const NscBlock& b, const A* center, const A* scale,
                       const A* shift) {
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  int64_t g = b.C, h = W;
  while (h) { const int64_t t = g % h; g = h; h = t; }
  const int64_t P = b.C / g * W, nvp = P / W;  // P ≤ (W − 1)·W
  alignas(64) A pc[W * W], ps[W * W], ph[W * W];
  for (int64_t i = 0; i < P; ++i) {
    pc[i] = center[i % b.C];
    ps[i] = scale[i % b.C];
    ph[i] = shift[i % b.C];
  }
  const int64_t e0 = b.r0 * b.C, e1 = b.r1 * b.C;
  int64_t i = e0;
  for (; i + P <= e1; i += P)
    for (int64_t j = 0; j < nvp; ++j) {
      const int64_t o = j * W;
      vstore(y + i + o, (vload(x + i + o) - vload(pc + o)) * vload(ps + o) + vload(ph + o));
    }
  for (; i < e1; ++i) {
    const int64_t c = (i - e0) % b.C;
    sstore(y + i, (sload(x + i) - center[c]) * scale[c] + shift[c]);
  }
}

template <typename T, typename A>
void nsc_affine(const T* x, T* y, const NscBlock& b, const A* center, const A* scale,
                const A* shift) {
  constexpr int W = VecOf<A>::W;
  if (b.C < W && b.c0 == 0 && b.c1 == b.C && b.r1 - b.r0 >= W) {
    nsc_affine_narrow(x, y, b, center, scale, shift);
    return;
  }
  const int64_t n = b.c1 - b.c0, nv = n / W;
  const A *cc = center + b.c0, *sc = scale + b.c0, *sh = shift + b.c0;
  for (int64_t r = b.r0; r < b.r1; ++r) {
    const T* xr = x + r * b.C + b.c0;
    T* yr = y + r * b.C + b.c0;
    for (int64_t v = 0; v < nv; ++v) {
      const int64_t o = v * W;
      vstore(yr + o, (vload(xr + o) - vload(cc + o)) * vload(sc + o) + vload(sh + o));
    }
    for (int64_t k = nv * W; k < n; ++k) sstore(yr + k, (sload(xr + k) - cc[k]) * sc[k] + sh[k]);
  }
}

template <typename T, typename A>
void nsc_bwd_sums(const T* x, const T* dy, const NscBlock& b, const A* mean, double* s0,
                  double* s1) {
  using V = typename VecOf<A>::V;
  constexpr int W = VecOf<A>::W;
  for (int64_t cs = b.c0; cs < b.c1; cs += kSub) {
    const int64_t ce = imin(b.c1, cs + kSub), nv = (ce - cs) / W, nt = (ce - cs) - nv * W;
    V a0[kSub / W], a1[kSub / W];
    A t0[W], t1[W];
    for (int64_t v = 0; v < nv; ++v) a0[v] = a1[v] = V{};
    for (int64_t t = 0; t < nt; ++t) t0[t] = t1[t] = 0;
    const A* m = mean + cs;
    for (int64_t r = b.r0; r < b.r1; ++r) {
      const T *xr = x + r * b.C + cs, *gr = dy + r * b.C + cs;
      for (int64_t v = 0; v < nv; ++v) {
        const V g = vload(gr + v * W);
        a0[v] += g;
        a1[v] += g * (vload(xr + v * W) - vload(m + v * W));
      }
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t k = nv * W + t;
        const A g = sload(gr + k);
        t0[t] += g;
        t1[t] += g * (sload(xr + k) - m[k]);
      }
    }
    for (int64_t v = 0; v < nv; ++v) {
      A u0[W], u1[W];
      std::memcpy(u0, &a0[v], sizeof(V));
      std::memcpy(u1, &a1[v], sizeof(V));
      for (int l = 0; l < W; ++l) {
        s0[cs - b.c0 + v * W + l] = u0[l];
        s1[cs - b.c0 + v * W + l] = u1[l];
      }
    }
    for (int64_t t = 0; t < nt; ++t) {
      s0[cs - b.c0 + nv * W + t] = t0[t];
      s1[cs - b.c0 + nv * W + t] = t1[t];
    }
  }
}

template <typename T, typename A>
void nsc_bwd_dx(const T* x, const T* dy, T* dx, const NscBlock& b, const A* mean, const A* k0,
                const A* k1, const A* k2) {
  constexpr int W = VecOf<A>::W;
  const int64_t n = b.c1 - b.c0, nv = n / W;
  const A *m = mean + b.c0, *q0 = k0 + b.c0, *q1 = k1 + b.c0, *q2 = k2 + b.c0;
  for (int64_t r = b.r0; r < b.r1; ++r) {
    const T *xr = x + r * b.C + b.c0, *gr = dy + r * b.C + b.c0;
    T* dr = dx + r * b.C + b.c0;
    for (int64_t v = 0; v < nv; ++v) {
      const int64_t o = v * W;
      vstore(dr + o, vload(gr + o) * vload(q0 + o) + (vload(xr + o) - vload(m + o)) * vload(q1 + o) +
                         vload(q2 + o));
    }
    for (int64_t k = nv * W; k < n; ++k)
      sstore(dr + k, sload(gr + k) * q0[k] + (sload(xr + k) - m[k]) * q1[k] + q2[k]);
  }
}

template <typename T>
Kernels<T> make_kernels() {
  using A = typename KAcc<T>::type;
  Kernels<T> k;
  k.ncs_moments = &ncs_moments<T>;
  k.ncs_affine = &ncs_affine<T, A>;
  k.ncs_affine_rows = &ncs_affine_rows<T, A>;
  k.ncs_bwd_sums = &ncs_bwd_sums<T, A>;
  k.ncs_bwd_dx = &ncs_bwd_dx<T, A>;
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
