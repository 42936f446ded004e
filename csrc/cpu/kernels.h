// The vectorized inner loops of the CPU backend, compiled once per instruction set
// (kernels_default.cpp, kernels_avx2.cpp, kernels_avx512.cpp all include kernels_impl.h) and
// picked at run time (select_kernels). Threading, per-channel math and the fixed merge order
// live in batch_norm_cpu.cpp; a kernel only loops over one piece, band, run, block or span.
//
// This header and kernels_impl.h include no torch headers: the ISA-specific translation units
// must not emit (and let the linker pick) AVX-512 copies of inline functions that the rest of
// the extension also uses.
#pragma once

#include <cstdint>

namespace fastbn::cpu {

// The fused activation (the same values as kernels/bn_math.h's Act; this header stays free of
// the device headers).
enum class Act : int { None = 0, ReLU = 1, SiLU = 2, LeakyReLU = 3 };

// Storage of the 16-bit types (bit-compatible with c10::BFloat16 / c10::Half).
struct bf16_t { uint16_t x; };
struct half_t { uint16_t x; };

template <typename T> struct KAcc { using type = float; };
template <> struct KAcc<double> { using type = double; };

// Element (n, c, s) of an NCS tensor is at (n·C + c)·S + s; a "piece" of channel c is the flat
// per-channel index range [j0, j1) of its N·S elements (a sequence of contiguous runs).
struct NcsPiece {
  int64_t C, S;
  int64_t c, j0, j1;
  bool stream = false;  // outputs: non-temporal stores (see kernels_impl.h, vout)
};

// Rows k in [k0, k1) of an NCS tensor: row k = n·C + c is the run of S elements of sample n,
// channel c (the rows of one sample's channels are consecutive in memory).
struct NcsRows {
  int64_t C, S;
  int64_t k0, k1;
  bool stream = false;  // outputs: non-temporal stores
};

// Two blocks of channels of an NCS tensor whose channels are each one piece (all N·S
// elements): channels [r0, r1) to reduce, at most kMaxBlockChannels of them, and channels
// [w0, w1) to write (the block reduced before, still in cache). Either may be empty.
constexpr int64_t kMaxBlockChannels = 32;
struct NcsBlocks {
  int64_t C, S, N;
  int64_t r0, r1, w0, w1;
  bool stream = false;  // outputs: non-temporal stores
};

// Channels [c0, c1) of an NCS tensor whose maps are short (see "NCS spans" in kernels_impl.h): in
// each of the N samples one contiguous span of (c1 − c0)·S elements, a whole number of vectors
// and at most kMaxSpanLanes, lane l holding channel c0 + l / S.
constexpr int64_t kMaxSpanLanes = 1024;
struct NcsSpans {
  int64_t C, S, N;
  int64_t c0, c1;
  bool stream = false;  // outputs: non-temporal stores
};

// Rows [r0, r1) and channel columns [c0, c1) of an NSC tensor (rows of C elements).
struct NscBlock {
  int64_t C;
  int64_t r0, r1, c0, c1;
  bool stream = false;  // outputs: non-temporal stores (see kernels_impl.h, vout)
};

// What the forward's elementwise kernels add to y = (x − center)·scale + shift: the residual
// (an input of x's layout, indexed as x) and the activation, y = act(z + residual).
template <typename T>
struct Fuse {
  const T* residual = nullptr;
  Act act = Act::None;
  typename KAcc<T>::type slope = 0;  // LeakyReLU's negative slope
  bool plain() const { return residual == nullptr && act == Act::None; }
};

// What the backward's reductions do first when the forward had an activation: recompute
// z = (x − mean[c])·scale[c] + shift[c] [+ residual] (scale = weight·invstd, shift = bias, the
// forward's centred transform), take g = dy·act'(z) in place of dy, and store g (laid out as
// x) for the dx pass, which then reads g instead of dy. act == None: dy as it is, nothing
// stored.
template <typename T>
struct GradFuse {
  using A = typename KAcc<T>::type;
  const T* residual = nullptr;
  T* g = nullptr;
  Act act = Act::None;
  A slope = 0;
  const A* scale = nullptr;  // per channel
  const A* shift = nullptr;
  bool plain() const { return act == Act::None; }
};

template <typename T>
struct Kernels {
  using A = typename KAcc<T>::type;
  int width;  // elements of A per vector
  // Moments of a piece: out = {mean, M2} (count is j1 − j0); one pass shifted by its first
  // element, two exact passes if that element does not suit.
  void (*ncs_moments)(const T* x, const NcsPiece& p, double* out);
  // y = (x − center)·scale + shift over a piece.
  void (*ncs_affine)(const T* x, T* y, const NcsPiece& p, A center, A scale, A shift,
                     const Fuse<T>& f);
  // y = (x − center[c])·scale[c] + shift[c] over rows (parameter arrays indexed by c).
  void (*ncs_affine_rows)(const T* x, T* y, const NcsRows& r, const A* center, const A* scale,
                          const A* shift, const Fuse<T>& f);
  // out = {Σdy, Σdy·(x − mean)} over a piece.
  void (*ncs_bwd_sums)(const T* x, const T* dy, const NcsPiece& p, A mean, double* out,
                       const GradFuse<T>& gf);
  // dx = dy·k0 + (x − mean)·k1 + k2 over a piece.
  void (*ncs_bwd_dx)(const T* x, const T* dy, T* dx, const NcsPiece& p, A mean, A k0, A k1, A k2);
  // dx = dy·k0[c] + (x − mean[c])·k1[c] + k2[c] over rows (arrays indexed by c).
  void (*ncs_bwd_dx_rows)(const T* x, const T* dy, T* dx, const NcsRows& r, const A* mean,
                          const A* k0, const A* k1, const A* k2);
  // For runs of at least `width` elements (S ≥ width), sample by sample: the moments of the
  // channels [r0, r1) (as ncs_moments, bit for bit; written to mean[c − r0], m2[c − r0]) and
  // y = (x − center[c])·scale[c] + shift[c] for the channels [w0, w1). The reads of the one
  // block and the writes of the other interleave, and the reduction reads each sample's runs
  // in address order.
  void (*ncs_block_moments)(const T* x, T* y, const NcsBlocks& b, const A* center,
                            const A* scale, const A* shift, double* mean, double* m2,
                            const Fuse<T>& f);
  // For S ≥ width, sample by sample: s0[c − r0] = Σdy, s1[c − r0] = Σdy·(x − mean[c]) over the
  // channels [r0, r1) (as ncs_bwd_sums, bit for bit), and
  // dx = dy·k0[c] + (x − mean[c])·k1[c] + k2[c] over the channels [w0, w1) (none if dx is null).
  // With a fused activation (gf) the sums take g and dx reads g (gf.g).
  void (*ncs_block_bwd)(const T* x, const T* dy, T* dx, const NcsBlocks& b, const A* mean,
                        const A* k0, const A* k1, const A* k2, double* s0, double* s1,
                        const GradFuse<T>& gf);
  // Spans (NcsSpans): the moments of channels [c0, c1) (one pass shifted by the mean of each
  // channel's first samples; a channel the shift does not suit is redone by ncs_moments), written
  // to mean[c − c0], m2[c − c0].
  void (*ncs_span_moments)(const T* x, const NcsSpans& b, double* mean, double* m2);
  // y = (x − center[c])·scale[c] + shift[c] over the spans (arrays indexed by c); center
  // null: the folded form, as nsc_affine.
  void (*ncs_span_affine)(const T* x, T* y, const NcsSpans& b, const A* center, const A* scale,
                          const A* shift, const Fuse<T>& f);
  // s0[c − c0] = Σdy, s1[c − c0] = Σdy·(x − mean[c]) over the spans.
  void (*ncs_span_bwd_sums)(const T* x, const T* dy, const NcsSpans& b, const A* mean,
                            double* s0, double* s1, const GradFuse<T>& gf);
  // dx = dy·k0[c] + (x − mean[c])·k1[c] + k2[c] over the spans.
  void (*ncs_span_dx)(const T* x, const T* dy, T* dx, const NcsSpans& b, const A* mean,
                      const A* k0, const A* k1, const A* k2);
  // Per channel c in [c0, c1): mean and M2 of the block's rows (one pass shifted by the mean of
  // the first rows, two exact passes for a channel the shift does not suit), written to mean[c − c0],
  // m2[c − c0].
  void (*nsc_moments)(const T* x, const NscBlock& b, double* mean, double* m2);
  // y = (x − center[c])·scale[c] + shift[c] over the block (parameter arrays indexed by c);
  // center null: y = x·scale[c] + shift[c] (the folded form, one parameter load fewer).
  void (*nsc_affine)(const T* x, T* y, const NscBlock& b, const A* center, const A* scale,
                     const A* shift, const Fuse<T>& f);
  // Per channel: s0[c − c0] = Σdy, s1[c − c0] = Σdy·(x − mean[c]).
  void (*nsc_bwd_sums)(const T* x, const T* dy, const NscBlock& b, const A* mean, double* s0,
                       double* s1, const GradFuse<T>& gf);
  // dx = dy·k0[c] + (x − mean[c])·k1[c] + k2[c] over the block; mean null: the folded
  // dx = dy·k0[c] + x·k1[c] + k2[c].
  void (*nsc_bwd_dx)(const T* x, const T* dy, T* dx, const NscBlock& b, const A* mean,
                     const A* k0, const A* k1, const A* k2);
};

// Every kernel that writes y takes a Fuse (the residual and activation, applied to the centred
// transform: a caller passes center with an activation); every backward reduction a GradFuse.
struct KernelTable {
  const char* isa;
  Kernels<float> f32;
  Kernels<double> f64;
  Kernels<bf16_t> bf16;
  Kernels<half_t> f16;
};

const KernelTable& kernels_default();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernels_avx512bf16();

// The best table this CPU supports (FASTBN_CPU_ISA=default|avx2|avx512|avx512bf16 caps it).
const KernelTable& select_kernels();

}  // namespace fastbn::cpu
