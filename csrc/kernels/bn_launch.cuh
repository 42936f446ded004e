// Host side of the CUDA kernels: picks the path (persistent or two kernels), the vector width
// and the grid, and launches. Torch-free, so that the same code runs under nvcc (csrc/cuda) and
// under the SIMT emulator (csrc/simt). Memory comes from the caller through DeviceAllocator.
#pragma once

#include "kernels/target.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/bn_entry.h"
#include "kernels/bn_kernels.cuh"

namespace fastbn {
inline namespace FASTBN_TARGET_NS {

namespace launch_detail {

#if defined(__CUDACC__)
using Stream = cudaStream_t;
#else
using Stream = void*;
#endif

// Dynamic + static shared memory one block may use without opting in to more.
constexpr size_t kSmemPerBlock = 48 * 1024;
// Blocks per SM the two-kernel path aims for, so that even a small C fills the GPU.
constexpr int kBlocksPerSm = 4;
// Each thread handles at least this many items, so that a block's work outweighs its merge.
constexpr int kMinItemsPerThread = 4;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int pow2_ceil(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Block shape and how many threads run along the items of a channel tile.
struct Shape {
  dim3 block;
  int64_t channel_tiles;
  int64_t items;
  int threads_along_items;
};

template <bool kChannelsLast, int V>
Shape shape_of(const Layout& L) {
  if constexpr (!kChannelsLast) {
    return {dim3(kBlockThreads, 1, 1), L.C, L.per_channel() / V, kBlockThreads};
  } else {
    const int tx = std::min(32, pow2_ceil(ceil_div(L.C, V)));
    return {dim3(tx, kBlockThreads / tx, 1), ceil_div(L.C, int64_t(tx) * V), L.per_channel(),
            kBlockThreads / tx};
  }
}

inline Grid grid_for(const Layout& L, const Shape& s, int64_t splits) {
  splits = std::clamp<int64_t>(splits, 1, 65535);
  const int64_t per_block = std::max<int64_t>(1, ceil_div(s.items, splits));
  const int64_t step = int64_t(s.block.x) * (L.channels_last ? 1 : L.per_channel() / s.items);
  const int64_t S = std::max<int64_t>(L.S, 1);
  return {L, s.items, per_block, int(std::max<int64_t>(1, ceil_div(s.items, per_block))),
          step / S, step % S, 1.0 / double(S)};
}

// Enough blocks to fill the GPU, as long as each thread keeps a few items.
inline Grid spread_grid(const Layout& L, const Shape& s) {
  const int64_t target = int64_t(kBlocksPerSm) * fastbn::device_sm_count();
  const int64_t by_work = std::max<int64_t>(1, s.items / (int64_t(s.threads_along_items) * kMinItemsPerThread));
  return grid_for(L, s, std::min(ceil_div(target, s.channel_tiles), by_work));
}

// The counter buffer: word 0 is the persistent kernel's grid barrier, words 1.. count the
// arrivals per channel tile of the two-kernel path.
inline unsigned* grid_barrier_word(const DeviceAllocator& alloc) { return alloc.counters(alloc.ctx, 1); }
inline unsigned* tile_counters(const DeviceAllocator& alloc, int64_t tiles) {
  return alloc.counters(alloc.ctx, size_t(tiles) + 1) + 1;
}

template <typename Op, bool kChannelsLast, int V>
LaunchInfo run_reduction(const typename Op::Params& p, const Layout& L, bool want_output,
                         const DeviceAllocator& alloc, Stream stream) {
  using A = typename Op::A;
  const Shape s = shape_of<kChannelsLast, V>(L);
  const size_t static_smem = sizeof(typename Op::Acc) * scratch_size<Op, kChannelsLast, V>() +
                             sizeof(Coefs<A>) * tile_channels_max<kChannelsLast, V>() + 16;
  const size_t item_bytes = sizeof(Item<Op, V>) * kBlockThreads;  // one slot of the whole block
  const size_t smem_limit = std::min(kSmemPerBlock, fastbn::device_max_smem_per_block());
  const int64_t max_slots = static_smem < smem_limit ? (smem_limit - static_smem) / item_bytes : 0;
  const int64_t fields = sizeof(typename Op::Acc) / sizeof(A);
  A* coefs = static_cast<A*>(alloc.scratch(alloc.ctx, sizeof(Coefs<A>) * L.C));

  // Persistent: every block's tile fits in shared memory and all blocks are resident at once.
  if (want_output && max_slots > 0) {
    const Grid g = grid_for(L, s, ceil_div(s.items, max_slots * s.threads_along_items));
    const int64_t slots = ceil_div(g.items_per_block, s.threads_along_items);
    const size_t smem = size_t(slots) * item_bytes;
    const auto kernel = persistent_kernel<Op, kChannelsLast, V>;
    const int64_t resident = int64_t(fastbn::device_sm_count()) *
                             fastbn::max_active_blocks_per_sm(kernel, kBlockThreads, smem);
    if (slots <= max_slots && s.channel_tiles * g.splits <= resident) {
      A* partials = static_cast<A*>(alloc.scratch(alloc.ctx, sizeof(A) * fields * g.splits * L.C));
      FASTBN_LAUNCH_COOPERATIVE(dim3(unsigned(s.channel_tiles), unsigned(g.splits), 1), s.block,
                                smem, stream, kernel)(p, g, partials, coefs, grid_barrier_word(alloc));
      return {Path::Persistent, V, g.splits};
    }
  }
  const Grid g = spread_grid(L, s);
  const dim3 grid(unsigned(s.channel_tiles), unsigned(g.splits), 1);
  A* partials = static_cast<A*>(alloc.scratch(alloc.ctx, sizeof(A) * fields * g.splits * L.C));
  unsigned* counters = tile_counters(alloc, s.channel_tiles);
  FASTBN_LAUNCH(grid, s.block, 0, stream, reduce_kernel<Op, kChannelsLast, V>)(p, g, partials, coefs, counters);
  if (want_output)
    FASTBN_LAUNCH(grid, s.block, 0, stream, apply_kernel<Op, kChannelsLast, V, false>)(Op::apply_params(p), g, coefs);
  return {Path::TwoKernels, V, g.splits};
}

template <typename Op, bool kChannelsLast, int V>
LaunchInfo run_apply(const typename Op::Params& p, const Layout& L, Stream stream) {
  const Shape s = shape_of<kChannelsLast, V>(L);
  const Grid g = spread_grid(L, s);
  FASTBN_LAUNCH(dim3(unsigned(s.channel_tiles), unsigned(g.splits), 1), s.block, 0, stream,
                apply_kernel<Op, kChannelsLast, V, true>)(p, g, nullptr);
  return {Path::ApplyOnly, V, g.splits};
}

// 16-byte accesses when every item is a whole, aligned vector: the contiguous dimension
// (C for NSC, S for NCS) is a multiple of the width and every tensor is 16-byte aligned.
template <typename Op>
bool vectorizable(const typename Op::Params& p, const Layout& L) {
  constexpr int W = 16 / sizeof(typename Op::T);
  if ((L.channels_last ? L.C : L.S) % W != 0) return false;
  auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  for (int i = 0; i < Op::kInputs; ++i)
    if (!aligned(p.in[i])) return false;
  for (const void* q : {Op::extra_input(p), Op::extra_output(p)})
    if (q != nullptr && !aligned(q)) return false;
  return p.out == nullptr || aligned(p.out);
}

// Runs `body.template operator()<kChannelsLast, V>()` for the layout and vector width.
template <typename Op, typename F>
LaunchInfo dispatch(const typename Op::Params& p, const Layout& L, const F& body) {
  constexpr int W = 16 / sizeof(typename Op::T);
  const bool vec = vectorizable<Op>(p, L);
  if (L.channels_last) return vec ? body.template operator()<true, W>() : body.template operator()<true, 1>();
  return vec ? body.template operator()<false, W>() : body.template operator()<false, 1>();
}

}  // namespace launch_detail

// The three operations. Sizes are non-empty (the caller handles N·S = 0).
template <typename T>
LaunchInfo launch_forward_train(const typename ForwardOp<T>::Params& p, const Layout& L,
                                const DeviceAllocator& alloc, void* stream) {
  using namespace launch_detail;
  return dispatch<ForwardOp<T>>(p, L, [&]<bool CL, int V>() {
    return run_reduction<ForwardOp<T>, CL, V>(p, L, true, alloc, static_cast<Stream>(stream));
  });
}

template <typename T>
LaunchInfo launch_forward_eval(const typename ForwardOp<T>::Params& p, const Layout& L, void* stream) {
  using namespace launch_detail;
  return dispatch<ForwardOp<T>>(p, L, [&]<bool CL, int V>() {
    return run_apply<ForwardOp<T>, CL, V>(p, L, static_cast<Stream>(stream));
  });
}

// Reductions run when training with dx wanted, when dweight/dbias are wanted, and with a fused
// activation (whose g the reduction pass computes).
template <typename T>
LaunchInfo launch_backward(const typename BackwardOp<T>::Params& p, const Layout& L,
                           const DeviceAllocator& alloc, void* stream) {
  using namespace launch_detail;
  const bool reduce = (p.training && p.out) || p.grad_weight || p.grad_bias || p.act != int(Act::None);
  return dispatch<BackwardOp<T>>(p, L, [&]<bool CL, int V>() {
    if (!reduce) return run_apply<BackwardOp<T>, CL, V>(p, L, static_cast<Stream>(stream));
    return run_reduction<BackwardOp<T>, CL, V>(p, L, p.out != nullptr, alloc, static_cast<Stream>(stream));
  });
}

}  // namespace FASTBN_TARGET_NS
}  // namespace fastbn
