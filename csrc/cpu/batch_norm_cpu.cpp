// Fused CPU batch norm: threading, per-channel math and the fixed merge order. The inner loops
// are the vectorized kernels of kernels_impl.h, compiled per ISA and picked at run time.
//
// Pass structure (see shared/design/cpu-anchors.md):
// - NCS (contiguous): a channel is split into pieces of kPiece elements; the statistics of a
//   piece take one pass shifted by its first element (see kernels_impl.h), pieces are merged
//   with Chan's formula in double in piece order. When the channels spread evenly over the
//   threads, each thread owns a run of channels and normalizes (or computes dx for) each
//   channel right after its statistics, while it is in L2: X is read once from memory.
//   Channels go by blocks (channel_blocks): statistics channel by channel, then the block's
//   output sample by sample; when every channel is one piece of runs of at least 4 vectors
//   (or of one, from kPairedMinSamples samples), by paired blocks (paired_channel_blocks): a
//   block's statistics sample by sample, interleaved with the output of the block before.
//   Blocks hold about an L1 of input, more where runs are short (block_channels). Otherwise
//   (fewer channels than threads, or an uneven split) the pieces of all channels are spread
//   over the threads, merged per channel behind a barrier, and each thread normalizes the
//   pieces it reduced. Maps shorter than 4 vectors (with AVX-512 float lanes 7×7 and smaller),
//   with enough channels, go by spans instead (span_blocks): a block of channels is one
//   contiguous span per sample, reduced over the samples lane by lane and then written, from
//   L2 unless the batch is large (the eval forward writes by spans too: runs shorter than a
//   vector went element by element).
// - NSC (channels_last): bands of rows (their size depends on C, the dtype and, when there are
//   few, the row count: see nsc_bands); per band and channel the moments (vector lanes =
//   channels, or when C does not fill whole vectors the lanes of periods of lcm(C, W)
//   elements; one pass shifted by the mean of the band's first rows, see nsc_moments); band
//   moments merged per channel in band order behind a barrier; each thread then normalizes
//   its own bands, last read first, so that the second read of X finds the most recently
//   reduced bands still in L2/L3.
// Outputs of passes whose tensors the cache cannot hold are written with non-temporal stores
// (stream_output).
// The decomposition into pieces and bands never depends on the thread count or the path, so
// results are identical run to run, for any number of threads.
#include "cpu/batch_norm_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <utility>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>

#include "cpu/kernels.h"
#include "kernels/bn_math.h"

namespace fastbn::cpu {
namespace {

// Elements of one channel per piece (NCS): 128 KiB of float, re-read from L2.
constexpr int64_t kPiece = int64_t(1) << 15;
// Rows per band (NSC): about kBandBytes of input, and at most kMaxBandRows (forward) or
// kMaxBwdBandRows (backward) rows. Each forward band costs a per-channel finish (double
// conversions, divisions) and a merge step: with 256 KiB bands (32 rows at C = 2048) the 7×7
// forward took about 1.4× as long, so bands are as large as an L2 holds, and narrow rows
// (C ≤ 256) take more of them: 1024 rows against 256 made those forwards 5-7% faster (the
// sums stay accurate: see panel_column_sums in kernels_impl.h). The backward's bands
// stay at 256 rows: at 1024, the 28×28 backward was 8% slower.
constexpr int64_t kBandBytes = 1024 * 1024;
constexpr int64_t kMaxBandRows = 1024;
constexpr int64_t kMaxBwdBandRows = 256;
constexpr int64_t kEvenBands = 8;  // see nsc_bands
// Whatever the row cap, a band holds at least this many elements: rows of a few channels
// (C = 3, 8, 24) in bands of 256 rows cost more in per-band work (the period setup and the
// merge of per-band partials: 784 bands for a 16×3×112×112 backward) than in the sums.
constexpr int64_t kMinBandElements = 16384;
// Bytes of input per block of channels normalized sample by sample (see channel_blocks): as
// much as L1 holds, so that the second read finds it there (unless runs are short, below).
// Against 256 KiB (L2) blocks, in random order on one machine: NCHW 14×14 forward and
// backward 5-6% faster, 7×7 and 28×28 1-4%, larger channels (a block of one) the same.
constexpr int64_t kBlockBytes = 32 * 1024;
// At most this many bytes of input per block however short its runs: a block must stay in L2
// between its statistics and its output (the largest measured, float32 28×28 backward at
// N = 64, holds 1.2 MiB; larger batches would exceed an L2 without the cap).
constexpr int64_t kMaxBlockBytes = 2 * 1024 * 1024;
// Larger blocks where a sample's runs are short (block_channels): each sample's visit to a
// block (in each input, its runs of the block's channels, contiguous in memory) spans at least
// a minimum, as visits of a run or two per page gave the prefetchers nothing to follow (at
// N = 128 the float32 7×7 forward took 5× a copy_, at N = 64 the bfloat16 28×28 one 3×). Going
// through a block channel by channel (channel_blocks, threaded calls), runs under 4 KiB get
// visits of 8 KiB: bfloat16 28×28 at N = 64 forward 36% and backward 19% faster, float32
// 13% / 2%. Sample by sample (paired blocks), runs under 512 B get 2 KiB: float32 7×7 forward
// and backward at N = 64 25-30% faster, at N = 128 60% / 50%, bfloat16 14×14 at N = 64 12%
// (backward 19% more with runs and visits counted per input, not over x and dy together);
// longer runs keep kBlockBytes (float32 14×14 at N = 64 was 13-20% slower with blocks of 3
// to 5 channels). The ResNet-50 shapes at N = 16 were the same either way (within 4%).
struct VisitRule {
  int64_t short_run, min_visit;  // bytes of one input
};
constexpr VisitRule kChannelOrderVisits{4096, 8192};
constexpr VisitRule kSampleOrderVisits{512, 2048};
// From this many samples the whole-channel paths read a block sample by sample even when its
// runs are short (paired_blocks): channel by channel, each of a channel's N runs is on a
// different page. 7×7 backward 12-13% faster at N = 32 (20-40% from N = 64); the same or 1-3%
// slower at N = 16.
constexpr int64_t kPairedMinSamples = 32;
// Below this many bytes of input a call runs on the calling thread.
constexpr int64_t kSerialBytes = 192 * 1024;
// Largest working set of a pass that writes its output through the cache (see stream_output).
constexpr int64_t kCacheCapBytes = int64_t(64) << 20;

// c10 storage type → kernel storage type.
template <typename T> struct KType { using type = T; };
template <> struct KType<c10::BFloat16> { using type = bf16_t; };
template <> struct KType<c10::Half> { using type = half_t; };
template <typename T> using k_t = typename KType<T>::type;

template <typename K> const Kernels<K>& kernels_for();
template <> const Kernels<float>& kernels_for<float>() { return select_kernels().f32; }
template <> const Kernels<double>& kernels_for<double>() { return select_kernels().f64; }
template <> const Kernels<bf16_t>& kernels_for<bf16_t>() { return select_kernels().bf16; }
template <> const Kernels<half_t>& kernels_for<half_t>() { return select_kernels().f16; }

template <typename T> const k_t<T>* kptr(const at::Tensor& t) {
  return reinterpret_cast<const k_t<T>*>(t.data_ptr<T>());
}
template <typename T> k_t<T>* kptr_mut(const at::Tensor& t) {
  return reinterpret_cast<k_t<T>*>(t.data_ptr<T>());
}

// at::parallel_for with grain 1 (each thread one contiguous range: the same range for the same
// [begin, end) in consecutive calls), or inline when the call is small.
template <typename F>
void par(bool serial, int64_t begin, int64_t end, const F& f) {
  if (end <= begin) return;
  if (serial || end - begin == 1) {
    f(begin, end);
    return;
  }
  at::parallel_for(begin, end, 1, f);
}

// An elementwise pass over n rows (or runs) of `length` elements each: at::parallel_for in
// chunks of about 16K elements, or inline when the call is small.
template <typename F>
void elementwise(bool serial, int64_t n, int64_t length, const F& f) {
  if (n <= 0) return;
  if (serial) {
    f(int64_t(0), n);
    return;
  }
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / length), f);
}

// One parallel region of T = at::get_num_threads() threads running body(t, T, sync) with
// t = 0..T−1; sync() is a barrier across them. Phases separated by barriers instead of one
// fork/join each: waking sleeping workers again costs milliseconds on a loaded machine. If
// OpenMP gives a team of another size (all its threads see the same size), thread 0 runs
// everything alone as T = 1.
template <typename F>
void team(bool serial, const F& body) {
  const int64_t T = serial ? 1 : at::get_num_threads();
  auto none = [] {};
  if (T <= 1) {
    body(int64_t(0), int64_t(1), none);
    return;
  }
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t) {
#ifdef _OPENMP
    if (omp_get_num_threads() == T) {
      body(t0, T, [] {
#pragma omp barrier
      });
      return;
    }
#endif
    if (t0 == 0) body(int64_t(0), int64_t(1), none);
  });
}

// [begin, end) of part t of n split in T.
inline std::pair<int64_t, int64_t> split(int64_t n, int64_t t, int64_t T) {
  return {n * t / T, n * (t + 1) / T};
}

// The one parallel region of every split reduction: each thread reduces its share of the
// items (NCS pieces or NSC bands) into partials; barrier; each thread merges the partials of its
// share of the channels (in item order, so results do not depend on the split) and finishes
// them; barrier; each thread writes the output of the items it reduced, still in its cache.
template <typename Reduce, typename Merge, typename Apply>
void reduce_merge_apply(bool serial, int64_t items, int64_t channels, const Reduce& reduce,
                        const Merge& merge, const Apply& apply) {
  team(serial, [&](int64_t id, int64_t T, const auto& sync) {
    const auto [i0, i1] = split(items, id, T);
    reduce(i0, i1);
    sync();
    const auto [m0, m1] = split(channels, id, T);
    merge(m0, m1);
    sync();
    apply(i0, i1);
  });
}

int64_t num_pieces(const Layout& L) { return std::max<int64_t>(1, (L.per_channel() + kPiece - 1) / kPiece); }

// Whole channels per thread (one parallel region; a channel re-read from L2 when it fits,
// else from L3) whenever the channels spread evenly over the threads.
bool whole_channels_per_thread(const Layout& L, int64_t /*bytes_per_elem*/, bool serial) {
  const int64_t threads = at::get_num_threads();
  if (serial || threads == 1) return true;
  return L.C % threads == 0 || L.C >= 8 * threads;
}

// The NSC bands of a call: `count` bands of `rows` rows (the last one shorter). Below
// kEvenBands bands, an even number of equal bands: a short last band or an odd count would
// leave one of two threads with up to twice the rows of the other (channels_last 7×7 in half
// precision: 512 rows against 272, and the forward and backward 20% slower). From kEvenBands
// bands up the gap is small, and every extra band costs a per-channel finish.
struct Bands {
  int64_t rows, count;
};
template <typename T>
Bands nsc_bands(const Layout& L, int64_t max_rows) {
  const int64_t R = L.per_channel();
  const int64_t cap = std::max(max_rows, kMinBandElements / L.C);
  const int64_t most = std::clamp<int64_t>(kBandBytes / (L.C * int64_t(sizeof(T))), 1, cap);
  const int64_t count = (R + most - 1) / most;
  if (count >= kEvenBands) return {most, count};
  const int64_t even = std::min(R, count + (count & 1)), rows = (R + even - 1) / even;
  return {rows, (R + rows - 1) / rows};
}

// Bytes of the last-level cache one core shares, as the kernel's sysfs describes it
// (cpuid-based sysconf(_SC_LEVEL3_CACHE_SIZE) may report a whole socket's L3 summed over its
// core complexes); 0 if unknown.
int64_t last_level_cache_bytes() {
  for (const char* path : {"/sys/devices/system/cpu/cpu0/cache/index3/size",
                           "/sys/devices/system/cpu/cpu0/cache/index2/size"}) {
    if (FILE* f = std::fopen(path, "r")) {
      long long n = 0;
      char unit = 0;
      const int got = std::fscanf(f, "%lld%c", &n, &unit);
      std::fclose(f);
      if (got >= 1 && n > 0)
        return int64_t(n) << (unit == 'K' ? 10 : unit == 'M' ? 20 : unit == 'G' ? 30 : 0);
    }
  }
  return 0;
}

// A pass whose tensors (`tensors` of them of the input's size: input and output for the
// forwards, input, grad_output and grad_input for the backward) take at least the last-level
// cache, or kCacheCapBytes, writes its output with non-temporal stores: the output
// cannot stay in the cache anyway, and plain stores would first read every line and evict the
// input the pass after the reduction re-reads. The cap is there because a virtual machine
// reports its host's whole L3 (480 MiB on one development machine) while its own share is far
// smaller: there copy_ slows from L3 to DRAM speed between a 32 and a 64 MiB working set, and
// streaming a 49 MiB output made the NCHW forward 30-35% faster (a 24.5 MiB one, whose pass
// touches 49 MiB, 10-20% slower). A 24.5 MiB backward touches 73.5 MiB: streaming its grad_input
// made forward+backward 4-17% faster there (float32 32×64×56×56 and 16×512×28×28,
// bfloat16/float16 16×64×112×112 and 16×256×56×56, both layouts; the backward alone 0.88-1.08×).
bool stream_output(const Layout& L, int64_t bytes_per_elem, int tensors) {
  static const int64_t threshold = [] {
    const int64_t llc = last_level_cache_bytes();
    return llc > 0 ? std::min(llc, kCacheCapBytes) : kCacheCapBytes / 2;
  }();
  return tensors * L.numel() * bytes_per_elem >= threshold;
}

bool is_serial(const Layout& L, int64_t bytes_per_elem) {
  return L.numel() * bytes_per_elem < kSerialBytes || at::get_num_threads() == 1 || at::in_parallel_region();
}

// Channels per block of the whole-channel paths: about kBlockBytes of input (over all the
// inputs read, each of esize bytes per element), or more when runs are short (see VisitRule).
int64_t block_channels(const Layout& L, int64_t esize, int64_t inputs, int64_t max_channels,
                       const VisitRule& visits) {
  const int64_t run = L.S * esize, channel = L.per_channel() * esize * inputs;
  int64_t block = kBlockBytes / channel;
  if (run < visits.short_run)
    block = std::max(block, std::min((visits.min_visit + run - 1) / run, kMaxBlockBytes / channel));
  return std::clamp<int64_t>(block, 1, max_channels);
}

// The whole-channel paths: each thread takes a contiguous range of channels and goes through
// it by blocks (block_channels): reduce(c) for each channel of a block (which is then in L1,
// or L2 for a large channel), then write(n, cb, ce) for each sample n (the block's output):
// the runs of a block are contiguous within a sample, whereas one channel's runs lie C·S apart
// (often a multiple of 4 KiB, so they share L1 sets, and the stores alias the next run's
// loads).
template <typename Reduce, typename Write>
void channel_blocks(bool serial, const Layout& L, int64_t esize, int64_t inputs,
                    const Reduce& reduce, const Write& write) {
  // (Serial calls stay in cache: their blocks are sized for L1 only.)
  const int64_t block =
      block_channels(L, esize, inputs, L.C, serial ? VisitRule{0, 0} : kChannelOrderVisits);
  par(serial, 0, L.C, [&](int64_t c0, int64_t c1) {
    for (int64_t cb = c0; cb < c1; cb += block) {
      const int64_t ce = std::min(c1, cb + block);
      for (int64_t c = cb; c < ce; ++c) reduce(c);
      for (int64_t n = 0; n < L.N; ++n) write(n, cb, ce);
    }
  });
}

// The whole-channel paths when every channel is one piece: each thread takes a contiguous range
// of channels and goes through it by blocks (block_channels, at most kMaxBlockChannels);
// step(r0, r1, w0, w1) reduces the block [r0, r1) while it writes the block before it,
// [w0, w1), and then finishes the reduced channels, which the next step writes.
template <typename Step>
void paired_channel_blocks(bool serial, const Layout& L, int64_t esize, int64_t inputs,
                           const Step& step) {
  const int64_t block = block_channels(L, esize, inputs, kMaxBlockChannels, kSampleOrderVisits);
  par(serial, 0, L.C, [&](int64_t c0, int64_t c1) {
    int64_t w0 = c0, w1 = c0;
    for (int64_t r0 = c0; r0 < c1; r0 += block) {
      const int64_t r1 = std::min(c1, r0 + block);
      step(r0, r1, w0, w1);
      w0 = r0;
      w1 = r1;
    }
    step(c1, c1, w0, w1);
  });
}

// Whether the whole-channel paths go by paired blocks: every channel one piece, in runs of at
// least 4 vectors (or of one, from kPairedMinSamples samples), and a call large enough to be
// threaded. Measured in random order against channel_blocks: 14×14 forward and backward 3-6%
// faster, 28×28 the same or faster; on 7×7 maps at N = 16 (runs of 3 vectors and a part, with
// each channel's Reducer loaded and stored per run) 1-5% slower; on inputs that stay in L2
// between calls (the serial ones), 10-30% slower.
bool paired_blocks(const Layout& L, int64_t pieces, int vector_width, bool serial) {
  const bool runs = L.S >= 4 * vector_width || (L.S >= vector_width && L.N >= kPairedMinSamples);
  return !serial && pieces == 1 && runs;
}

// NCS maps shorter than 4 vectors go by spans (kernels_impl.h, NcsSpans) when the channels fill
// at least kMinSpanPeriods periods of lcm(S, W) lanes; the channels after the last whole
// period go run by run. Whether a channel goes by spans depends on the shape only. How the
// spanned channels are grouped into blocks changes no result (a channel's sums are those of
// its own lanes, whichever block holds them), so blocks are sized for the machine: whole
// periods, at most a panel (kMaxSpanLanes lanes); at least a visit of
// kSampleOrderVisits.min_visit bytes of float lanes per sample where the channels allow, else
// kSpanBlocksPerThread blocks per thread; then evened out to a multiple of the thread count.
// Measured against panel-sized blocks (3×3 with 256 channels: 3 blocks of 112, 112 and 32
// channels) at N = 512: forward 1.44-1.46× faster, backward 1.25-1.42×; blocks of one period
// at 5×5 (1.6 KiB a sample) were 1.11-1.14× slower than of two.
constexpr int64_t kMinSpanPeriods = 8;
constexpr int64_t kSpanBlocksPerThread = 4;
struct SpanBlocks {
  int64_t channels = 0;  // per block
  int64_t spanned = 0;   // channels [0, spanned) go by spans
  int64_t count = 0;     // blocks, plus one for the channels after them; 0: no spans
  // spans(b) for each block b of spans (NcsSpans), channel(c) for each channel after them;
  // each thread takes a contiguous range of blocks.
  template <typename Spans, typename Channel>
  void run(bool serial, const Layout& L, bool stream, const Spans& spans,
           const Channel& channel) const {
    par(serial, 0, count, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t c0 = std::min(i * channels, spanned);
        if (c0 < spanned) {
          spans(NcsSpans{L.C, L.S, L.N, c0, std::min(c0 + channels, spanned), stream});
          continue;
        }
        for (int64_t c = c0; c < L.C; ++c) channel(c);
      }
    });
  }
};
SpanBlocks span_blocks(const Layout& L, int vector_width, bool serial) {
  if (L.channels_last || L.S >= 4 * vector_width || L.per_channel() == 0) return {};
  const int64_t period = vector_width / std::gcd<int64_t>(L.S, vector_width);  // channels
  const int64_t lanes = period * L.S;  // of a period: lcm(S, W)
  if (L.C < kMinSpanPeriods * period || lanes > kMaxSpanLanes) return {};
  const int64_t periods = L.C / period, threads = serial ? 1 : at::get_num_threads();
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const int64_t visit = ceil_div(kSampleOrderVisits.min_visit, lanes * int64_t(sizeof(float)));
  int64_t per_block = std::min(kMaxSpanLanes / lanes,
                               std::max(visit, ceil_div(periods, kSpanBlocksPerThread * threads)));
  const int64_t blocks = ceil_div(ceil_div(periods, per_block), threads) * threads;
  per_block = ceil_div(periods, blocks);
  SpanBlocks b;
  b.channels = per_block * period;
  b.spanned = periods * period;
  b.count = ceil_div(b.spanned, b.channels) + (b.spanned < L.C ? 1 : 0);
  return b;
}

// Per-band partial results (NSC): reused across calls so that large scratch arrays cost no
// page faults. Every element that is read was written by the same call.
double* scratch(int slot, size_t n) {
  thread_local std::vector<double> buf[2];
  if (buf[slot].size() < n) buf[slot].resize(n);
  return buf[slot].data();
}

// Parameters of one call as typed pointers (contiguous copies of strided per-channel tensors,
// held here; no heap allocation when they are contiguous already).
class Params {
 public:
  template <typename P>
  const P* ptr(const std::optional<at::Tensor>& t) {
    if (!t.has_value() || !t->defined()) return nullptr;
    TORCH_INTERNAL_ASSERT(n_ < kMax);
    held_[n_] = t->expect_contiguous();
    return held_[n_++]->template data_ptr<P>();
  }

 private:
  static constexpr int kMax = 4;
  c10::MaybeOwned<at::Tensor> held_[kMax];
  int n_ = 0;
};

// A running-stat buffer written in place; a strided one is updated through a contiguous copy.
template <typename P>
struct InPlace {
  std::optional<at::Tensor> target;
  at::Tensor work;
  explicit InPlace(const std::optional<at::Tensor>& t) {
    if (t.has_value() && t->defined()) {
      target = t;
      work = t->is_contiguous() ? *t : t->contiguous();
    }
  }
  P* data() { return work.defined() ? work.data_ptr<P>() : nullptr; }
  ~InPlace() {
    if (work.defined() && !target->is_same(work)) target->copy_(work);
  }
};

// Whether the elementwise loops that load per-lane parameters (channels_last; NCS spans in
// eval) may use the folded transform y = x·scale + (shift − center·scale) (dx alike): one
// parameter load fewer per vector, which those L1-load-bound loops feel (channels_last eval
// 15–35% faster on cache-resident shapes; bfloat16 7×7 eval by spans 6-16%). Either form
// errs by about ε·|center·scale|: the centred one through the rounding of center to the
// accumulation type, the folded one through scale and the folded shift, up to twice as much
// (float32, 1000 + 0.01·noise: training output 4.8e-4 against 1.1e-3 of max |y|). That is
// below ε·|y| while the centre lies within a few standard deviations of zero and dominates far
// from it, so a call folds only when every channel has |center|·invstd ≤ kFoldBound (torch's
// kernels always fold). Channels may note from several threads.
class FoldCheck {
 public:
  static constexpr double kFoldBound = 4;
  void note(double center, double invstd) {
    if (!(std::abs(center) * invstd <= kFoldBound)) centered_.store(true, std::memory_order_relaxed);
  }
  bool fold() const { return !centered_.load(std::memory_order_relaxed); }
  void forbid() { centered_.store(true, std::memory_order_relaxed); }

 private:
  std::atomic<bool> centered_{false};
};

// Per-channel transform as arrays (what the NSC kernels read), centred and folded.
// may_fold false: always the centred form (with a fused activation, whose backward recomputes
// the activation's input centred).
template <typename A>
struct AffineArrays {
  std::vector<A> storage;  // one allocation: small calls feel every malloc
  A *center, *scale, *shift, *folded_shift;
  FoldCheck check;
  explicit AffineArrays(int64_t C, bool may_fold = true)
      : storage(4 * C), center(storage.data()), scale(center + C), shift(scale + C),
        folded_shift(shift + C) {
    if (!may_fold) check.forbid();
  }
  AffineArrays(const AffineArrays&) = delete;
  void set(int64_t c, const ChannelAffine<A>& t, double invstd) {
    center[c] = t.center;
    scale[c] = t.scale;
    shift[c] = t.shift;
    folded_shift[c] = A(double(t.shift) - double(t.center) * double(t.scale));
    check.note(double(t.center), invstd);
  }
  // The NSC kernels' arguments: null centers mean the folded form.
  const A* centers() const { return check.fold() ? nullptr : center; }
  const A* shifts() const { return check.fold() ? folded_shift : shift; }
};

// The kernels' view of the fused epilogue (residual in the input's layout).
template <typename T>
Fuse<k_t<T>> fuse_of(const FusedEpilogue& e) {
  Fuse<k_t<T>> f;
  if (e.residual.has_value()) f.residual = kptr<T>(*e.residual);
  f.act = Act(e.activation);
  f.slope = acc_t<T>(e.negative_slope);
  return f;
}

// ---------------------------------------------------------------- training forward

template <typename T, typename P>
void forward_train_impl(const TrainForwardArgs& a) {
  using A = acc_t<T>;
  using K = k_t<T>;
  const Kernels<K>& kern = kernels_for<K>();
  const Layout& L = a.layout;
  Params params;
  const P* weight = params.ptr<P>(a.weight);
  const P* bias = params.ptr<P>(a.bias);
  InPlace<P> running_mean(a.running_mean), running_var(a.running_var);
  A* save_mean = a.save_mean.data_ptr<A>();
  A* save_invstd = a.save_invstd.data_ptr<A>();
  const K* x = kptr<T>(a.input);
  K* y = kptr_mut<T>(a.output);
  if (L.per_channel() == 0) {  // empty batch: nothing to normalize, running stats untouched
    a.save_mean.zero_();
    a.save_invstd.zero_();
    return;
  }
  // momentum=None without a counter (track_running_stats=False): no running stats to update.
  const bool has_counter = a.num_batches_tracked.has_value() && a.num_batches_tracked->defined();
  const double factor =
      (a.cumulative && !has_counter)
          ? 1.0
          : running_factor<double>(a.cumulative, a.momentum,
                                   has_counter ? a.num_batches_tracked->data_ptr<int64_t>() : nullptr);
  const int64_t esize = sizeof(T);
  const Fuse<K> fuse = fuse_of<T>(a.fused);
  const bool serial = is_serial(L, esize);
  const bool stream = stream_output(L, esize, fuse.residual ? 3 : 2);

  // Statistics → saved stats, running stats, transform. Per channel, so threads own channels.
  // (Pointers fetched once: data_ptr's checks cost more than a small channel's arithmetic.)
  P* const run_mean = running_mean.data();
  P* const run_var = running_var.data();
  auto finish = [&](int64_t c, const Moments<double>& m) {
    const double var = m.m2 / m.count, invstd = invstd_from_var(var, a.eps);
    save_mean[c] = A(m.mean);
    save_invstd[c] = A(invstd);
    update_running_stats<double>(run_mean, run_var, c, m.mean, var, m.count, factor);
    return channel_affine<A>(A(m.mean), A(invstd), weight, bias, c);
  };
  // finish, then the channel's transform into the arrays the elementwise kernels read.
  auto finish_into = [&](AffineArrays<A>& t, int64_t c, const Moments<double>& m) {
    const ChannelAffine<A> tc = finish(c, m);  // sets save_invstd[c]
    t.set(c, tc, double(save_invstd[c]));
  };

  if (L.channels_last) {
    // No blocking of the channel columns: it multiplies the phases and turns rows into
    // strided accesses; measured slower on every ResNet shape.
    const int64_t R = L.per_channel();
    const auto [rows, bands] = nsc_bands<T>(L, kMaxBandRows);
    double* pmean = scratch(0, bands * L.C);
    double* pm2 = scratch(1, bands * L.C);
    AffineArrays<A> t(L.C, fuse.plain());
    std::vector<double> mmean(L.C), mm2(L.C);
    // Merge the bands in order (Chan), channels in the inner loop.
    auto merge = [&](int64_t m0, int64_t m1) {
      double n = double(std::min(R, rows));
      for (int64_t c = m0; c < m1; ++c) {
        mmean[c] = pmean[c];
        mm2[c] = pm2[c];
      }
      for (int64_t b = 1; b < bands; ++b) {
        const double nb = double(std::min(R, (b + 1) * rows) - b * rows), tot = n + nb, wb = nb / tot;
        const double* bm = &pmean[b * L.C];
        const double* bq = &pm2[b * L.C];
        for (int64_t c = m0; c < m1; ++c) {
          const double delta = bm[c] - mmean[c];
          mmean[c] = mmean[c] + delta * wb;
          mm2[c] = mm2[c] + bq[c] + delta * delta * n * wb;
        }
        n = tot;
      }
      for (int64_t c = m0; c < m1; ++c) {
        finish_into(t, c, {double(R), mmean[c], mm2[c]});
      }
    };
    reduce_merge_apply(
        serial, bands, L.C,
        [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b)
            kern.nsc_moments(x, {L.C, b * rows, std::min(R, (b + 1) * rows), 0, L.C},
                             &pmean[b * L.C], &pm2[b * L.C]);
        },
        merge,
        [&](int64_t b0, int64_t b1) {
          for (int64_t b = b1 - 1; b >= b0; --b)
            kern.nsc_affine(x, y, {L.C, b * rows, std::min(R, (b + 1) * rows), 0, L.C, stream},
                            t.centers(), t.scale, t.shifts(), fuse);
        });
    return;
  }

  const int64_t pieces = num_pieces(L), M = L.per_channel();
  auto piece = [&](int64_t c, int64_t p) {
    return NcsPiece{L.C, L.S, c, p * kPiece, std::min(M, (p + 1) * kPiece), stream};
  };
  auto moments = [&](int64_t c, int64_t p) {
    const NcsPiece q = piece(c, p);
    double o[2];
    kern.ncs_moments(x, q, o);
    return Moments<double>{double(q.j1 - q.j0), o[0], o[1]};
  };
  // A whole channel's moments, its pieces merged in order.
  auto channel_moments = [&](int64_t c) {
    Moments<double> m{0, 0, 0};
    for (int64_t p = 0; p < pieces; ++p) m = chan_merge(m, moments(c, p));
    return m;
  };
  if (const SpanBlocks sb = span_blocks(L, kern.width, serial); sb.count > 0) {
    AffineArrays<A> t(L.C);
    sb.run(
        serial, L, stream,
        [&](const NcsSpans& b) {
          double mean[kMaxSpanLanes], m2[kMaxSpanLanes];
          kern.ncs_span_moments(x, b, mean, m2);
          for (int64_t c = b.c0; c < b.c1; ++c)
            finish_into(t, c, {double(M), mean[c - b.c0], m2[c - b.c0]});
          kern.ncs_span_affine(x, y, b, t.center, t.scale, t.shift, fuse);
        },
        [&](int64_t c) {
          finish_into(t, c, channel_moments(c));
          for (int64_t p = 0; p < pieces; ++p)
            kern.ncs_affine(x, y, piece(c, p), t.center[c], t.scale[c], t.shift[c], fuse);
        });
    return;
  }
  if (whole_channels_per_thread(L, esize, serial)) {
    AffineArrays<A> t(L.C);
    if (paired_blocks(L, pieces, kern.width, serial)) {
      auto step = [&](int64_t r0, int64_t r1, int64_t w0, int64_t w1) {
        double mean[kMaxBlockChannels], m2[kMaxBlockChannels];
        kern.ncs_block_moments(x, y, {L.C, L.S, L.N, r0, r1, w0, w1, stream}, t.center,
                               t.scale, t.shift, mean, m2, fuse);
        for (int64_t c = r0; c < r1; ++c) finish_into(t, c, {double(M), mean[c - r0], m2[c - r0]});
      };
      paired_channel_blocks(serial, L, esize, 1, step);
      return;
    }
    channel_blocks(
        serial, L, esize, 1, [&](int64_t c) { finish_into(t, c, channel_moments(c)); },
        [&](int64_t n, int64_t c0, int64_t c1) {
          kern.ncs_affine_rows(x, y, {L.C, L.S, n * L.C + c0, n * L.C + c1, stream},
                               t.center, t.scale, t.shift, fuse);
        });
    return;
  }
  // Fewer channels than threads, or an uneven split: the pieces of all channels are spread
  // over the threads; merge per channel behind a barrier; each thread normalizes its pieces.
  const int64_t items = L.C * pieces;
  std::vector<Moments<double>> parts(items);
  std::vector<ChannelAffine<A>> affine(L.C);
  reduce_merge_apply(
      serial, items, L.C,
      [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) parts[i] = moments(i / pieces, i % pieces);
      },
      [&](int64_t m0, int64_t m1) {
        for (int64_t c = m0; c < m1; ++c) {
          Moments<double> m{0, 0, 0};
          for (int64_t p = 0; p < pieces; ++p) m = chan_merge(m, parts[c * pieces + p]);
          affine[c] = finish(c, m);
        }
      },
      [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const ChannelAffine<A>& t = affine[i / pieces];
          kern.ncs_affine(x, y, piece(i / pieces, i % pieces), t.center, t.scale, t.shift, fuse);
        }
      });
}

// ---------------------------------------------------------------- eval forward

template <typename T, typename P>
void forward_eval_impl(const EvalForwardArgs& a) {
  using A = acc_t<T>;
  using K = k_t<T>;
  const Kernels<K>& kern = kernels_for<K>();
  const Layout& L = a.layout;
  Params params;
  const P* weight = params.ptr<P>(a.weight);
  const P* bias = params.ptr<P>(a.bias);
  const P* mean = params.ptr<P>(a.running_mean);
  const P* var = params.ptr<P>(a.running_var);
  const Fuse<K> fuse = fuse_of<T>(a.fused);
  AffineArrays<A> t(L.C, fuse.plain());
  for (int64_t c = 0; c < L.C; ++c) {
    const double invstd = invstd_from_var(double(var[c]), a.eps);
    t.set(c, channel_affine<A>(A(mean[c]), A(invstd), weight, bias, c), invstd);
  }
  const K* x = kptr<T>(a.input);
  K* y = kptr_mut<T>(a.output);
  if (L.numel() == 0) return;
  const bool serial = is_serial(L, sizeof(T));
  const bool stream = stream_output(L, sizeof(T), fuse.residual ? 3 : 2);
  if (L.channels_last) {
    elementwise(serial, L.per_channel(), L.C, [&](int64_t r0, int64_t r1) {
      kern.nsc_affine(x, y, {L.C, r0, r1, 0, L.C, stream}, t.centers(), t.scale,
                      t.shifts(), fuse);
    });
  } else if (const SpanBlocks sb = span_blocks(L, kern.width, serial); sb.count > 0) {
    sb.run(
        serial, L, stream,
        [&](const NcsSpans& b) {
          kern.ncs_span_affine(x, y, b, t.centers(), t.scale, t.shifts(), fuse);
        },
        [&](int64_t c) {
          kern.ncs_affine(x, y, {L.C, L.S, c, 0, L.per_channel(), stream}, t.center[c],
                          t.scale[c], t.shift[c], fuse);
        });
  } else {
    elementwise(serial, L.N * L.C, L.S, [&](int64_t k0, int64_t k1) {
      kern.ncs_affine_rows(x, y, {L.C, L.S, k0, k1, stream}, t.center, t.scale,
                           t.shift, fuse);
    });
  }
}

// ---------------------------------------------------------------- backward

template <typename T, typename P>
void backward_impl(const BackwardArgs& a) {
  using A = acc_t<T>;
  using K = k_t<T>;
  const Kernels<K>& kern = kernels_for<K>();
  const Layout& L = a.layout;
  Params params;
  const P* weight = params.ptr<P>(a.weight);
  const A* mean = params.ptr<A>(a.mean);
  const A* invstd = params.ptr<A>(a.invstd);
  const K* x = kptr<T>(a.input);
  const K* dy = kptr<T>(a.grad_output);
  K* dx = a.grad_input.defined() ? kptr_mut<T>(a.grad_input) : nullptr;
  // A fused activation: the reductions take g = dy·act'(z) and store it (GradFuse), always (in
  // eval too: dx = g·weight·invstd); the dx passes then read g instead of dy.
  GradFuse<K> gf;
  std::vector<A> fused_affine;
  if (a.fused.activation != 0) {
    const P* bias = params.ptr<P>(a.bias);
    fused_affine.resize(2 * L.C);
    for (int64_t c = 0; c < L.C; ++c) {
      const ChannelAffine<A> t = channel_affine<A>(mean[c], invstd[c], weight, bias, c);
      fused_affine[c] = t.scale;
      fused_affine[L.C + c] = t.shift;
    }
    gf.residual = a.fused.residual.has_value() ? kptr<T>(*a.fused.residual) : nullptr;
    gf.g = kptr_mut<T>(a.grad_pre);
    gf.act = Act(a.fused.activation);
    gf.slope = A(a.fused.negative_slope);
    gf.scale = fused_affine.data();
    gf.shift = fused_affine.data() + L.C;
  }
  const K* g = gf.plain() ? dy : gf.g;  // what the dx passes read
  const bool want_sums = (a.training && dx) || a.grad_weight.defined() || a.grad_bias.defined() ||
                         !gf.plain();
  const double count = double(L.per_channel());
  const int64_t esize = sizeof(T);
  const bool serial = is_serial(L, 2 * esize);
  // With a fused activation whose g is held in grad_input, dx overwrites lines the reductions
  // have just written (dirty in the cache): plain stores, as a streamed store to such a line
  // costs a round trip to memory.
  const bool stream = stream_output(L, esize, 3) && !(dx && gf.g == dx);

  // (Σdy, Σdy·(x − mean)) → dweight, dbias and the per-channel dx coefficients.
  P* const grad_weight = a.grad_weight.defined() ? a.grad_weight.data_ptr<P>() : nullptr;
  P* const grad_bias = a.grad_bias.defined() ? a.grad_bias.data_ptr<P>() : nullptr;
  auto finish = [&](int64_t c, double sum_dy, double sum_dy_xmu) {
    const A w = weight ? A(weight[c]) : A(1);
    if (grad_weight) grad_weight[c] = P(sum_dy_xmu * double(invstd[c]));
    if (grad_bias) grad_bias[c] = P(sum_dy);
    if (!a.training) return BackwardCoefs<A>{w * invstd[c], A(0), A(0)};
    if (count == 0) return BackwardCoefs<A>{A(0), A(0), A(0)};
    return train_backward_coefs<A>(w, invstd[c], A(sum_dy), A(sum_dy_xmu), A(count));
  };
  // dx = dy·dy_scale + [(x − mean)·xmu_scale + shift]: the bracket is an affine transform of x.
  std::vector<A> dy_scale(L.C);
  AffineArrays<A> k(L.C);
  auto set_coefs = [&](int64_t c, const BackwardCoefs<A>& b) {
    dy_scale[c] = b.dy_scale;
    k.set(c, {mean[c], b.xmu_scale, b.shift}, double(invstd[c]));
  };
  if (L.numel() == 0) {
    for (int64_t c = 0; c < L.C; ++c) set_coefs(c, finish(c, 0, 0));
    return;
  }

  if (L.channels_last) {
    const int64_t R = L.per_channel();
    if (!want_sums) {
      for (int64_t c = 0; c < L.C; ++c) set_coefs(c, finish(c, 0, 0));
      if (!dx) return;
      elementwise(serial, R, L.C, [&](int64_t r0, int64_t r1) {
        kern.nsc_bwd_dx(x, g, dx, {L.C, r0, r1, 0, L.C, stream}, k.centers(), dy_scale.data(),
                        k.scale, k.shifts());
      });
      return;
    }
    const auto [rows, bands] = nsc_bands<T>(L, kMaxBwdBandRows);
    double* p0 = scratch(0, bands * L.C);
    double* p1 = scratch(1, bands * L.C);
    reduce_merge_apply(
        serial, bands, L.C,
        [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b)
            kern.nsc_bwd_sums(x, dy, {L.C, b * rows, std::min(R, (b + 1) * rows), 0, L.C}, mean,
                              &p0[b * L.C], &p1[b * L.C], gf);
        },
        [&](int64_t m0, int64_t m1) {
          if (m1 <= m0) return;
          std::vector<double> s0(p0 + m0, p0 + m1), s1(p1 + m0, p1 + m1);
          for (int64_t b = 1; b < bands; ++b) {
            const double *q0 = &p0[b * L.C + m0], *q1 = &p1[b * L.C + m0];
            for (int64_t c = 0; c < m1 - m0; ++c) {
              s0[c] += q0[c];
              s1[c] += q1[c];
            }
          }
          for (int64_t c = m0; c < m1; ++c) set_coefs(c, finish(c, s0[c - m0], s1[c - m0]));
        },
        [&](int64_t b0, int64_t b1) {
          for (int64_t b = b1 - 1; dx && b >= b0; --b)  // last reduced first (see the top)
            kern.nsc_bwd_dx(x, g, dx, {L.C, b * rows, std::min(R, (b + 1) * rows), 0, L.C, stream},
                            k.centers(), dy_scale.data(), k.scale, k.shifts());
        });
    return;
  }

  const int64_t pieces = num_pieces(L), M = L.per_channel();
  auto piece = [&](int64_t c, int64_t p) {
    return NcsPiece{L.C, L.S, c, p * kPiece, std::min(M, (p + 1) * kPiece), stream};
  };
  auto dx_piece = [&](int64_t c, const NcsPiece& q) {
    kern.ncs_bwd_dx(x, g, dx, q, mean[c], dy_scale[c], k.scale[c], k.shift[c]);
  };
  auto dx_rows = [&](int64_t k0, int64_t k1) {
    kern.ncs_bwd_dx_rows(x, g, dx, {L.C, L.S, k0, k1, stream}, mean, dy_scale.data(),
                         k.scale, k.shift);
  };
  if (!want_sums) {
    for (int64_t c = 0; c < L.C; ++c) set_coefs(c, finish(c, 0, 0));
    if (dx) elementwise(serial, L.N * L.C, L.S, dx_rows);
    return;
  }
  auto sums = [&](int64_t c, int64_t p) {
    std::array<double, 2> s;
    kern.ncs_bwd_sums(x, dy, piece(c, p), mean[c], s.data(), gf);
    return s;
  };
  // A whole channel's sums, piece by piece, then its coefficients.
  auto channel_coefs = [&](int64_t c) {
    double s0 = 0, s1 = 0;
    for (int64_t p = 0; p < pieces; ++p) {
      const auto s = sums(c, p);
      s0 += s[0];
      s1 += s[1];
    }
    set_coefs(c, finish(c, s0, s1));
  };
  if (const SpanBlocks sb = span_blocks(L, kern.width, serial); sb.count > 0) {
    sb.run(
        serial, L, stream,
        [&](const NcsSpans& b) {
          double s0[kMaxSpanLanes], s1[kMaxSpanLanes];
          kern.ncs_span_bwd_sums(x, dy, b, mean, s0, s1, gf);
          for (int64_t c = b.c0; c < b.c1; ++c) set_coefs(c, finish(c, s0[c - b.c0], s1[c - b.c0]));
          if (dx) kern.ncs_span_dx(x, g, dx, b, mean, dy_scale.data(), k.scale, k.shift);
        },
        [&](int64_t c) {
          channel_coefs(c);
          for (int64_t p = 0; dx && p < pieces; ++p) dx_piece(c, piece(c, p));
        });
    return;
  }
  if (whole_channels_per_thread(L, 2 * esize, serial)) {
    if (paired_blocks(L, pieces, kern.width, serial)) {
      auto step = [&](int64_t r0, int64_t r1, int64_t w0, int64_t w1) {
        double s0[kMaxBlockChannels], s1[kMaxBlockChannels];
        kern.ncs_block_bwd(x, dy, dx, {L.C, L.S, L.N, r0, r1, w0, w1, stream}, mean,
                           dy_scale.data(), k.scale, k.shift, s0, s1, gf);
        for (int64_t c = r0; c < r1; ++c) set_coefs(c, finish(c, s0[c - r0], s1[c - r0]));
      };
      paired_channel_blocks(serial, L, esize, 2, step);
      return;
    }
    // Reductions then dx, while the block of channels is still in cache.
    channel_blocks(
        serial, L, esize, 2, channel_coefs,
        [&](int64_t n, int64_t c0, int64_t c1) {
          if (dx) dx_rows(n * L.C + c0, n * L.C + c1);
        });
    return;
  }
  const int64_t items = L.C * pieces;
  std::vector<std::array<double, 2>> parts(items);
  reduce_merge_apply(
      serial, items, L.C,
      [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) parts[i] = sums(i / pieces, i % pieces);
      },
      [&](int64_t m0, int64_t m1) {
        for (int64_t c = m0; c < m1; ++c) {
          double s0 = 0, s1 = 0;
          for (int64_t p = 0; p < pieces; ++p) {
            s0 += parts[c * pieces + p][0];
            s1 += parts[c * pieces + p][1];
          }
          set_coefs(c, finish(c, s0, s1));
        }
      },
      [&](int64_t i0, int64_t i1) {
        if (dx)
          for (int64_t i = i0; i < i1; ++i) dx_piece(i / pieces, piece(i / pieces, i % pieces));
      });
}

// Calls f.template operator()<T, P>() for the input dtype T and parameter dtype P (T itself, or
// float for half input with float32 parameters).
template <typename F>
void dispatch(const at::Tensor& input, const std::optional<at::ScalarType>& param_dtype, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastbn_cpu", [&] {
    if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
      if (param_dtype == at::kFloat) return f.template operator()<scalar_t, float>();
    }
    f.template operator()<scalar_t, scalar_t>();
  });
}

std::optional<at::ScalarType> dtype_of(std::initializer_list<const std::optional<at::Tensor>*> ts) {
  for (const auto* t : ts)
    if (t->has_value() && (*t)->defined()) return (*t)->scalar_type();
  return std::nullopt;
}

}  // namespace

void forward_train(const TrainForwardArgs& a) {
  dispatch(a.input, dtype_of({&a.weight, &a.bias, &a.running_mean, &a.running_var}),
           [&]<typename T, typename P>() { forward_train_impl<T, P>(a); });
}

void forward_eval(const EvalForwardArgs& a) {
  dispatch(a.input, a.running_mean.scalar_type(),
           [&]<typename T, typename P>() { forward_eval_impl<T, P>(a); });
}

const char* kernel_isa() { return select_kernels().isa; }

void backward(const BackwardArgs& a) {
  dispatch(a.input, dtype_of({&a.weight}),
           [&]<typename T, typename P>() { backward_impl<T, P>(a); });
}

}  // namespace fastbn::cpu
