// Batch-norm CUDA kernels as device-only templates: compiled by nvcc for the GPU and by g++
// under the SIMT emulator for the test suite. No torch headers.
//
// Three kernel shapes, each instantiated for an Op and a memory order:
//   reduce_kernel      per-channel partial reductions split over blocks; the last block of a
//                      channel tile (self-resetting counter, no memset per call) merges the
//                      partials in split order and finishes: saved/running stats, Coefs.
//   apply_kernel       out = (x − center)·x_scale + dy·dy_scale + shift, per channel.
//   persistent_kernel  both in one cooperative launch; the block's tile stays in shared memory
//                      between the reduction and the output, so the inputs are read once.
// ForwardOp (Welford statistics of x → y) and BackwardOp (Σdy, Σdy·(x − mean) → dx, dweight,
// dbias) plug into all three. Partials are merged in a fixed order: results are bitwise
// identical run to run.
#pragma once

#include "kernels/target.h"

// device_compat first: under the emulator it defines __shared__ before any CUDA header, and
// bn_math.h uses the intrinsics it declares.
#include "kernels/device_compat.cuh"

#include "kernels/bn_layout.h"
#include "kernels/bn_math.h"

namespace fastbn {
inline namespace FASTBN_TARGET_NS {

constexpr int kBlockThreads = 256;
// At least two resident blocks per SM (so at most 128 registers a thread): keeps the GPU busy
// across a block's barriers, and steers ptxas away from the spills it otherwise made in the
// persistent double kernels on sm_120.
constexpr int kMinBlocksPerSm = 2;

// Element ↔ accumulation type, spelled out: torch builds with __CUDA_NO_HALF_CONVERSIONS__.
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The per-channel transform of every elementwise pass:
//   out = (x − center)·x_scale + dy·dy_scale + shift
template <typename A> struct Coefs {
  A center, x_scale, dy_scale, shift;
};

// Launch geometry, chosen on the host (bn_launch.cuh) and passed by value.
struct Grid {
  Layout L;
  int64_t items;            // per channel tile: NCS vectors along N·S; NSC rows
  int64_t items_per_block;  // per split
  int splits;               // gridDim.y
  // NCS: a thread's step of blockDim.x·V elements as whole samples + positions, and 1/S.
  int64_t step_n, step_s;
  double inv_s;
};

// A struct of A fields, stored field-major: base[field·stride + index]. Partials, Coefs.
template <typename A, typename S>
__device__ __forceinline__ void store_fields(A* base, int64_t index, int64_t stride, const S& s) {
  const A* f = reinterpret_cast<const A*>(&s);
  for (int i = 0; i < int(sizeof(S) / sizeof(A)); ++i) fastbn::gstore(base + i * stride + index, f[i]);
}

template <typename A, typename S>
__device__ __forceinline__ S load_fields(const A* base, int64_t index, int64_t stride) {
  S s;
  A* f = reinterpret_cast<A*>(&s);
  for (int i = 0; i < int(sizeof(S) / sizeof(A)); ++i) f[i] = fastbn::gload(base + i * stride + index);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Where a block's elements are. An item is V elements contiguous in memory (one 16-byte vector
// when V > 1): V spatial positions of one channel (NCS) or V channels of one row (NSC).

template <bool kChannelsLast, int V> struct Tile;

// NCS: one channel per block (blockIdx.x), threads along the channel's N·S/V items.
template <int V> struct Tile<false, V> {
  const Grid& g;
  int64_t k0, k1;
  __device__ Tile(const Grid& grid, int split)
      : g(grid), k0(int64_t(split) * grid.items_per_block),
        k1(k0 + grid.items_per_block < grid.items ? k0 + grid.items_per_block : grid.items) {}
  __device__ bool active() const { return true; }
  __device__ int64_t channel(int /*lane*/) const { return blockIdx.x; }
  __device__ int64_t first_channel() const { return blockIdx.x; }
  __device__ int channels() const { return 1; }
  template <typename F> __device__ void for_each(F&& f) const {
    int64_t k = k0 + threadIdx.x;
    if (k >= k1) return;
    // (n, s) of the item, stepped without 64-bit integer division (a subroutine call on the
    // GPU, whose register saves ptxas reports as spills): the step comes from the host and the
    // start from a floating-point estimate, corrected.
    const int64_t S = g.L.S, dn = g.step_n, ds = g.step_s;
    int64_t n = int64_t(double(k * V) * g.inv_s), s;
    while (n * S > k * V) --n;
    while ((n + 1) * S <= k * V) ++n;
    s = k * V - n * S;
    // No unrolling: its trip count would cost a 64-bit division (a subroutine call → spills).
#pragma unroll 1
    for (int slot = 0; k < k1; k += blockDim.x, ++slot) {
      f((n * g.L.C + int64_t(blockIdx.x)) * S + s, slot);
      n += dn;
      s += ds;
      if (s >= S) {
        s -= S;
        ++n;
      }
    }
  }
};

// NSC: channel vectors along threadIdx.x (coalesced rows), rows along threadIdx.y.
template <int V> struct Tile<true, V> {
  const Grid& g;
  int64_t r0, r1, cv;
  __device__ Tile(const Grid& grid, int split)
      : g(grid), r0(int64_t(split) * grid.items_per_block),
        r1(r0 + grid.items_per_block < grid.items ? r0 + grid.items_per_block : grid.items),
        cv(int64_t(blockIdx.x) * blockDim.x + threadIdx.x) {}
  __device__ bool active() const { return cv * V < g.L.C; }
  __device__ int64_t channel(int lane) const { return cv * V + lane; }
  __device__ int64_t first_channel() const { return int64_t(blockIdx.x) * blockDim.x * V; }
  __device__ int channels() const {
    const int64_t left = g.L.C - first_channel(), full = int64_t(blockDim.x) * V;
    return int(left < full ? left : full);
  }
  template <typename F> __device__ void for_each(F&& f) const {
    if (!active()) return;
    int slot = 0;
#pragma unroll 1
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y, ++slot) f(r * g.L.C + cv * V, slot);
  }
};

// ---------------------------------------------------------------------------------------------
// Ops: the accumulator, how an element is added and partials merged, how a channel finishes
// once all its partials are merged (side effects + Coefs), and the Coefs that need no
// reduction (eval). A is float for float/half/bfloat16, double for double.

template <typename T_> struct ForwardOp {
  using T = T_;
  using A = acc_t<T>;
  static constexpr int kInputs = 1;  // x
  struct Params {
    const T* in[kInputs];
    T* out;
    const A* weight;
    const A* bias;
    A* running_mean;
    A* running_var;
    const int64_t* num_batches_tracked;
    bool cumulative;
    double momentum;
    double eps;
    A* save_mean;
    A* save_invstd;
    const T* residual;  // fused: y = act(bn(x) + residual); null: none
    int act;            // Act
    A slope;
  };
  struct Acc {
    A count, mean, m2;
  };
  struct Lane {};  // nothing per channel is needed while accumulating
  __device__ static Lane lane(const Params&, int64_t) { return {}; }
  template <int V>
  __device__ static void prepare(const Params&, int64_t, const Lane (&)[V], Vec<T, V> (&)[kInputs]) {}
  // The fused residual and activation, applied to the normalized values of the item at off.
  template <int V>
  __device__ static void epilogue(const Params& p, int64_t off, A (&o)[V]) {
    if (p.residual) {
      const Vec<T, V> r = fastbn::gload(reinterpret_cast<const Vec<T, V>*>(p.residual + off));
      for (int l = 0; l < V; ++l) o[l] += to_acc(r.v[l]);
    }
    if (p.act != int(Act::None))
      for (int l = 0; l < V; ++l) o[l] = act_value(Act(p.act), o[l], p.slope);
  }
  static Params apply_params(const Params& p) { return p; }
  static const void* extra_input(const Params& p) { return p.residual; }
  static const void* extra_output(const Params&) { return nullptr; }
  __device__ static Acc zero() { return {A(0), A(0), A(0)}; }
  __device__ static void add(Acc& a, const Lane&, const A (&in)[kInputs]) {
    // Welford: stable for data far from zero, unlike E[x²] − E[x]².
    a.count += A(1);
    const A d = in[0] - a.mean;
    a.mean += fast_div(d, a.count);
    a.m2 += d * (in[0] - a.mean);
  }
  __device__ static Acc merge(const Acc& a, const Acc& b) {
    const Moments<A> m = chan_merge(Moments<A>{a.count, a.mean, a.m2}, Moments<A>{b.count, b.mean, b.m2});
    return {m.count, m.mean, m.m2};
  }
  __device__ static Coefs<A> finish(const Params& p, int64_t c, const Acc& a, const Layout&) {
    const A var = a.count > A(0) ? fast_div(a.m2, a.count) : A(0);
    const A invstd = invstd_from_var(var, p.eps);
    fastbn::gstore(p.save_mean + c, a.mean);
    fastbn::gstore(p.save_invstd + c, invstd);
    if (p.running_mean) {
      const A factor = running_factor<A>(p.cumulative, p.momentum, p.num_batches_tracked);
      A rm = fastbn::gload(p.running_mean + c), rv = fastbn::gload(p.running_var + c);
      update_running_stats<A>(&rm, &rv, 0, a.mean, var, a.count, factor);
      fastbn::gstore(p.running_mean + c, rm);
      fastbn::gstore(p.running_var + c, rv);
    }
    return affine(p, c, a.mean, invstd);
  }
  // Eval: the running statistics, folded into one per-channel scale and shift.
  __device__ static Coefs<A> direct(const Params& p, int64_t c, const Layout&) {
    return affine(p, c, fastbn::gload(p.running_mean + c),
                  invstd_from_var(fastbn::gload(p.running_var + c), p.eps));
  }
  __device__ static Coefs<A> affine(const Params& p, int64_t c, A mean, A invstd) {
    const A w = p.weight ? fastbn::gload(p.weight + c) : A(1);
    const A b = p.bias ? fastbn::gload(p.bias + c) : A(0);
    return {mean, w * invstd, A(0), b};
  }
};

template <typename T_> struct BackwardOp {
  using T = T_;
  using A = acc_t<T>;
  static constexpr int kInputs = 2;  // x, dy
  struct Params {
    const T* in[kInputs];
    T* out;  // dx
    const A* weight;
    const A* mean;
    const A* invstd;
    bool training;
    A* grad_weight;  // null when not requested
    A* grad_bias;
    // A fused activation (act ≠ None): the forward's bias and residual, and where
    // g = dy·act'(z) goes. The reduction replaces dy by g (prepare) and stores it; the dx pass
    // reads g (apply_params).
    const A* bias;
    const T* residual;
    int act;
    A slope;
    T* grad_pre;
  };
  struct Acc {
    A sum_dy, sum_dy_xmu;
  };
  struct Lane {
    A mean;
    A scale, shift;  // the forward's transform, with an activation
  };
  __device__ static Lane lane(const Params& p, int64_t c) {
    Lane l{fastbn::gload(p.mean + c), A(0), A(0)};
    if (p.act != int(Act::None)) {
      const A w = p.weight ? fastbn::gload(p.weight + c) : A(1);
      l.scale = w * fastbn::gload(p.invstd + c);
      l.shift = p.bias ? fastbn::gload(p.bias + c) : A(0);
    }
    return l;
  }
  // dy → g = dy·act'(z), z = (x − mean)·scale + shift [+ residual] as the forward computed it;
  // g is stored for the dx pass (and is the residual's gradient).
  template <int V>
  __device__ static void prepare(const Params& p, int64_t off, const Lane (&lanes)[V],
                                 Vec<T, V> (&in)[kInputs]) {
    if (p.act == int(Act::None)) return;
    A r[V];
    for (int l = 0; l < V; ++l) r[l] = A(0);
    if (p.residual) {
      const Vec<T, V> rv = fastbn::gload(reinterpret_cast<const Vec<T, V>*>(p.residual + off));
      for (int l = 0; l < V; ++l) r[l] = to_acc(rv.v[l]);
    }
    for (int l = 0; l < V; ++l) {
      const A z = (to_acc(in[0].v[l]) - lanes[l].mean) * lanes[l].scale + lanes[l].shift + r[l];
      in[1].v[l] = from_acc<T>(act_grad(Act(p.act), to_acc(in[1].v[l]), z, p.slope));
    }
    fastbn::gstore(reinterpret_cast<Vec<T, V>*>(p.grad_pre + off), in[1]);
  }
  template <int V>
  __device__ static void epilogue(const Params&, int64_t, A (&)[V]) {}
  // The dx pass of a fused activation reads g, already stored by the reduction.
  static Params apply_params(const Params& p) {
    Params q = p;
    if (p.act != int(Act::None)) q.in[1] = p.grad_pre;
    return q;
  }
  static const void* extra_input(const Params& p) { return p.residual; }
  static const void* extra_output(const Params& p) { return p.grad_pre; }
  __device__ static Acc zero() { return {A(0), A(0)}; }
  __device__ static void add(Acc& a, const Lane& l, const A (&in)[kInputs]) {
    a.sum_dy += in[1];
    a.sum_dy_xmu += in[1] * (in[0] - l.mean);
  }
  __device__ static Acc merge(const Acc& a, const Acc& b) {
    return {a.sum_dy + b.sum_dy, a.sum_dy_xmu + b.sum_dy_xmu};
  }
  __device__ static Coefs<A> finish(const Params& p, int64_t c, const Acc& a, const Layout& L) {
    const A invstd = fastbn::gload(p.invstd + c);
    if (p.grad_weight) fastbn::gstore(p.grad_weight + c, a.sum_dy_xmu * invstd);
    if (p.grad_bias) fastbn::gstore(p.grad_bias + c, a.sum_dy);
    const A w = p.weight ? fastbn::gload(p.weight + c) : A(1);
    const A count = A(L.per_channel());
    if (!p.training || count == A(0)) return direct(p, c, L);
    const BackwardCoefs<A> k = train_backward_coefs<A>(w, invstd, a.sum_dy, a.sum_dy_xmu, count);
    return {fastbn::gload(p.mean + c), k.xmu_scale, k.dy_scale, k.shift};
  }
  // Eval: dx = dy·weight·invstd needs no reduction.
  __device__ static Coefs<A> direct(const Params& p, int64_t c, const Layout&) {
    const A w = p.weight ? fastbn::gload(p.weight + c) : A(1);
    return {A(0), A(0), p.training ? A(0) : w * fastbn::gload(p.invstd + c), A(0)};
  }
};

// ---------------------------------------------------------------------------------------------
// Building blocks shared by the kernels.

template <typename Op, int V> struct Item {
  Vec<typename Op::T, V> in[Op::kInputs];
};

template <typename Op, int V>
__device__ __forceinline__ Item<Op, V> load_item(const typename Op::Params& p, int64_t off) {
  Item<Op, V> item;
  for (int i = 0; i < Op::kInputs; ++i)
    item.in[i] = fastbn::gload(reinterpret_cast<const Vec<typename Op::T, V>*>(p.in[i] + off));
  return item;
}

template <typename Op, int V>
__device__ __forceinline__ void apply_item(const typename Op::Params& p, int64_t off,
                                           const Item<Op, V>& item,
                                           const Coefs<typename Op::A> (&k)[V]) {
  using A = typename Op::A;
  A o[V];
  for (int l = 0; l < V; ++l) {
    o[l] = (to_acc(item.in[0].v[l]) - k[l].center) * k[l].x_scale + k[l].shift;
    if constexpr (Op::kInputs > 1) o[l] += to_acc(item.in[1].v[l]) * k[l].dy_scale;
  }
  Op::template epilogue<V>(p, off, o);
  Vec<typename Op::T, V> out;
  for (int l = 0; l < V; ++l) out.v[l] = from_acc<typename Op::T>(o[l]);
  fastbn::gstore(reinterpret_cast<Vec<typename Op::T, V>*>(p.out + off), out);
}

// Adds this thread's items to its per-lane accumulators; the persistent kernel also keeps the
// items in shared memory (`keep`, slot-major so that a warp's stores are contiguous).
template <typename Op, bool kChannelsLast, int V>
__device__ void accumulate(const typename Op::Params& p, const Tile<kChannelsLast, V>& tile,
                           typename Op::Acc (&acc)[V], Item<Op, V>* keep,
                           Coefs<typename Op::A>* shared) {
  using A = typename Op::A;
  typename Op::Lane lanes[V];
  for (int l = 0; l < V; ++l) acc[l] = Op::zero();
  broadcast_per_channel(tile, reinterpret_cast<typename Op::Lane*>(shared), [&](int64_t c) { return Op::lane(p, c); }, lanes);
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, threads = blockDim.x * blockDim.y;
  tile.for_each([&](int64_t off, int slot) {
    Item<Op, V> item = load_item<Op, V>(p, off);
    Op::template prepare<V>(p, off, lanes, item.in);
    if (keep) keep[slot * threads + tid] = item;
    for (int l = 0; l < V; ++l) {
      A one[Op::kInputs];
      for (int i = 0; i < Op::kInputs; ++i) one[i] = to_acc(item.in[i].v[l]);
      Op::add(acc[l], lanes[l], one);
    }
  });
}

template <typename Op>
__device__ __forceinline__ typename Op::Acc shfl_xor(const typename Op::Acc& a, int mask) {
  using A = typename Op::A;
  typename Op::Acc r;
  const A* f = reinterpret_cast<const A*>(&a);
  A* o = reinterpret_cast<A*>(&r);
  for (int i = 0; i < int(sizeof(a) / sizeof(A)); ++i) o[i] = __shfl_xor_sync(0xffffffffu, f[i], mask);
  return r;
}

// Combines the block's per-lane accumulators into per-channel results, in a fixed order.
// NCS: every lane of every thread is the block's one channel; the result ends in acc[0] of
// thread 0. NSC: threads with the same threadIdx.x share channels; results end in row y = 0.
template <typename Op, bool kChannelsLast, int V>
__device__ void block_reduce(typename Op::Acc (&acc)[V], typename Op::Acc* scratch) {
  if constexpr (!kChannelsLast) {
    for (int l = 1; l < V; ++l) acc[0] = Op::merge(acc[0], acc[l]);
    for (int mask = 16; mask > 0; mask >>= 1) acc[0] = Op::merge(acc[0], shfl_xor<Op>(acc[0], mask));
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    if (threadIdx.x % 32 == 0) scratch[warp] = acc[0];
    __syncthreads();
    if (threadIdx.x == 0)
      for (int w = 1; w < warps; ++w) acc[0] = Op::merge(acc[0], scratch[w]);
  } else {
    const int tid = threadIdx.y * blockDim.x + threadIdx.x;
    for (int l = 0; l < V; ++l) scratch[tid * V + l] = acc[l];
    __syncthreads();
    if (threadIdx.y == 0)
      for (int y = 1; y < int(blockDim.y); ++y)
        for (int l = 0; l < V; ++l) acc[l] = Op::merge(acc[l], scratch[(y * blockDim.x + threadIdx.x) * V + l]);
  }
}

template <typename Op, bool kChannelsLast, int V>
__host__ __device__ constexpr int scratch_size() {
  return kChannelsLast ? kBlockThreads * V : kBlockThreads / 32;
}

// This block's per-channel results → partials[field][split·C + c].
template <typename Op, bool kChannelsLast, int V>
__device__ void store_partials(const Grid& g, const Tile<kChannelsLast, V>& tile,
                               const typename Op::Acc (&acc)[V], typename Op::A* partials) {
  const int64_t stride = int64_t(g.splits) * g.L.C, row = int64_t(blockIdx.y) * g.L.C;
  if constexpr (!kChannelsLast) {
    if (threadIdx.x == 0) store_fields(partials, row + tile.channel(0), stride, acc[0]);
  } else {
    if (threadIdx.y == 0 && tile.active())
      for (int l = 0; l < V; ++l) store_fields(partials, row + tile.channel(l), stride, acc[l]);
  }
}

// Merges the partials of the block's channel tile over all splits, in split order, finishes
// each channel and publishes its Coefs to coefs[field][c]. Cold (once per channel) and kept out
// of line: inlined, it made ptxas spill in the persistent kernel on sm_120.
template <typename Op, bool kChannelsLast, int V>
__device__ void finish_tile(const typename Op::Params& p, const Grid& g,
                            const Tile<kChannelsLast, V>& tile, const typename Op::A* partials,
                            typename Op::A* coefs) {
  using Acc = typename Op::Acc;
  const int64_t stride = int64_t(g.splits) * g.L.C;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll 1
  for (int i = tid; i < tile.channels(); i += blockDim.x * blockDim.y) {
    const int64_t c = tile.first_channel() + i;
    Acc total = Op::zero();
    for (int s = 0; s < g.splits; ++s)
      total = Op::merge(total, load_fields<typename Op::A, Acc>(partials, int64_t(s) * g.L.C + c, stride));
    store_fields(coefs, c, g.L.C, Op::finish(p, c, total, g.L));
  }
}

// Per-channel values every thread needs for its lanes (Coefs, the backward's mean): one thread
// per channel of the tile reads them from global memory into shared memory, the block shares
// them, so global traffic is O(channels) per block rather than O(threads).
template <bool kChannelsLast, int V>
__host__ __device__ constexpr int tile_channels_max() {
  return kChannelsLast ? 32 * V : 1;
}

template <bool kChannelsLast, int V, typename S, typename F>
__device__ void broadcast_per_channel(const Tile<kChannelsLast, V>& tile, S* shared, F&& load,
                                      S (&out)[V]) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll 1
  for (int i = tid; i < tile.channels(); i += blockDim.x * blockDim.y) shared[i] = load(tile.first_channel() + i);
  __syncthreads();
  if (tile.active())
    for (int l = 0; l < V; ++l) out[l] = shared[tile.channel(l) - tile.first_channel()];
  __syncthreads();  // `shared` may be reused next
}

// Each lane's Coefs: published by a reduction, or computed directly (eval).
template <typename Op, bool kChannelsLast, int V, bool kDirect>
__device__ void lane_coefs(const typename Op::Params& p, const Grid& g,
                           const Tile<kChannelsLast, V>& tile, const typename Op::A* coefs,
                           Coefs<typename Op::A>* shared, Coefs<typename Op::A> (&k)[V]) {
  using A = typename Op::A;
  broadcast_per_channel(tile, shared, [&](int64_t c) {
    if constexpr (kDirect) return Op::direct(p, c, g.L);
    else return load_fields<A, Coefs<A>>(coefs, c, g.L.C);
  }, k);
}

// The reduction phase both reduce_kernel and persistent_kernel start with: accumulate this
// block's items (keeping them in `keep` if given), combine them per channel, publish the
// block's partials.
template <typename Op, bool kChannelsLast, int V>
__device__ void block_partials(const typename Op::Params& p, const Grid& g,
                               const Tile<kChannelsLast, V>& tile, Item<Op, V>* keep,
                               typename Op::A* partials) {
  __shared__ typename Op::Acc scratch[scratch_size<Op, kChannelsLast, V>()];
  __shared__ Coefs<typename Op::A> shared[tile_channels_max<kChannelsLast, V>()];
  typename Op::Acc acc[V];
  accumulate<Op, kChannelsLast, V>(p, tile, acc, keep, shared);
  block_reduce<Op, kChannelsLast, V>(acc, scratch);
  store_partials<Op>(g, tile, acc, partials);
}

// ---------------------------------------------------------------------------------------------
// Kernels. Grid: (channel tiles, splits); block: (kBlockThreads) for NCS, (tx, ty) for NSC.

template <typename Op, bool kChannelsLast, int V>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
reduce_kernel(const typename Op::Params p, const Grid g, typename Op::A* partials,
              typename Op::A* coefs, unsigned* counters) {
  __shared__ bool last_block;
  const Tile<kChannelsLast, V> tile(g, blockIdx.y);
  block_partials<Op, kChannelsLast, V>(p, g, tile, nullptr, partials);
  // Publish the partials, then count arrivals; atomicInc wraps to 0 at splits − 1, so the
  // counter is ready for the next call without a memset.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0)
    last_block = atomicInc(counters + blockIdx.x, unsigned(g.splits - 1)) == unsigned(g.splits - 1);
  __syncthreads();
  if (!last_block) return;
  __threadfence();
  finish_tile<Op>(p, g, tile, partials, coefs);
}

template <typename Op, bool kChannelsLast, int V, bool kDirect>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
apply_kernel(const typename Op::Params p, const Grid g, const typename Op::A* coefs) {
  // Splits in reverse: the reduction pass read the last splits last, so L2 still holds them.
  __shared__ Coefs<typename Op::A> shared[tile_channels_max<kChannelsLast, V>()];
  const Tile<kChannelsLast, V> tile(g, g.splits - 1 - int(blockIdx.y));
  Coefs<typename Op::A> k[V];
  lane_coefs<Op, kChannelsLast, V, kDirect>(p, g, tile, coefs, shared, k);
  tile.for_each([&](int64_t off, int) { apply_item<Op, V>(p, off, load_item<Op, V>(p, off), k); });
}

template <typename Op, bool kChannelsLast, int V>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
persistent_kernel(const typename Op::Params p, const Grid g, typename Op::A* partials,
                  typename Op::A* coefs, unsigned* grid_barrier) {
  using KeptItem = Item<Op, V>;
  FASTBN_DYNAMIC_SMEM(KeptItem, keep);
  __shared__ Coefs<typename Op::A> shared[tile_channels_max<kChannelsLast, V>()];
  const Tile<kChannelsLast, V> tile(g, blockIdx.y);
  block_partials<Op, kChannelsLast, V>(p, g, tile, keep, partials);
  fastbn_grid_sync(grid_barrier);
  if (blockIdx.y == 0) finish_tile<Op>(p, g, tile, partials, coefs);
  fastbn_grid_sync(grid_barrier);
  Coefs<typename Op::A> k[V];
  lane_coefs<Op, kChannelsLast, V, false>(p, g, tile, coefs, shared, k);
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, threads = blockDim.x * blockDim.y;
  tile.for_each([&](int64_t off, int slot) { apply_item<Op, V>(p, off, keep[slot * threads + tid], k); });
}

}  // namespace FASTBN_TARGET_NS
}  // namespace fastbn
