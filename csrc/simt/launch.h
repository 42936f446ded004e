// Kernel launches: check the configuration against the simulated device, run the blocks, publish
// the traffic counters, rethrow the first error on the host.
//
// Static __shared__ variables are `static thread_local` (device_compat.cuh), so each block runs
// on an OS thread of its own: that is what makes them per block, and a fresh thread's copy starts
// zeroed instead of holding a previous block's data. Only one of those OS threads runs at a time
// (a baton passed through a mutex), so the emulator stays single-threaded in effect. A normal
// launch runs its blocks one after another; a cooperative launch keeps every block resident,
// since its threads may wait in a grid sync while other blocks run.
#pragma once

#include <pthread.h>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "barrier.h"
#include "scheduler.h"

namespace simt {

struct LaunchConfig {
  dim3 grid, block;
  size_t smem_bytes = 0;
  bool cooperative = false;
};

namespace detail {

inline void validate(const Launch& L) {
  const Device& d = L.device;
  auto where = [&] {
    return " (grid " + str(L.grid_dim) + ", block " + str(L.block_dim) + ", " +
           std::to_string(L.smem_bytes) + " bytes of dynamic shared memory)";
  };
  if (L.blocks == 0 || L.threads_per_block == 0)
    throw Error("simt: invalid launch: empty grid or block" + where());
  if (L.threads_per_block > uint64_t(d.max_threads_per_block) || L.block_dim.z > 64)
    throw Error("simt: invalid launch: too many threads per block" + where() +
                "; the simulated device allows " + std::to_string(d.max_threads_per_block));
  if (L.grid_dim.y > 65535 || L.grid_dim.z > 65535)
    throw Error("simt: invalid launch: gridDim.y and .z must be at most 65535" + where());
  if (L.smem_bytes > d.max_smem_per_block)
    throw Error("simt: invalid launch: too much dynamic shared memory" + where() +
                "; the simulated device allows " + std::to_string(d.max_smem_per_block));
  int per_sm = max_active_blocks_per_sm(d, int(L.threads_per_block), L.smem_bytes);
  if (per_sm == 0) throw Error("simt: invalid launch: a block does not fit on an SM" + where());
  if (L.cooperative && L.blocks > uint64_t(per_sm) * uint64_t(d.sm_count))
    throw Error("simt: cooperative launch too large: " + std::to_string(L.blocks) + " blocks" +
                where() + " but only " + std::to_string(d.sm_count) + " SMs x " +
                std::to_string(per_sm) + " blocks fit at once on the simulated device");
}

inline uint3 unflatten(uint64_t i, const dim3& d) {
  return {unsigned(i % d.x), unsigned(i / d.x % d.y), unsigned(i / (uint64_t(d.x) * d.y))};
}

// Starts block `id` on `b`, reusing b's stacks and buffers when it ran a previous block.
inline void start_block(Block& b, Launch& L, uint64_t id) {
  b.launch = &L;
  b.idx = unflatten(id, L.grid_dim);
  size_t n = L.threads_per_block;
  if (b.threads.size() != n) {
    b.threads.resize(n);
    b.warps.resize((n + 31) / 32);
  }
  b.ready.clear();
  for (size_t i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    if (t.stack == nullptr) t.stack = global().stacks.acquire();
    t.block = &b;
    t.linear = unsigned(i);
    t.idx = unflatten(i, L.block_dim);
    t.wait = Wait::None;
    context_init(t.ctx, t.stack, kStackBytes, &fiber_main, &t);
    b.ready.push_back(&t);
  }
  for (size_t w = 0; w < b.warps.size(); ++w) {
    Warp& warp = b.warps[w];
    size_t lanes = std::min<size_t>(32, n - 32 * w);
    warp.present = lanes == 32 ? ~0u : (1u << lanes) - 1;
    warp.exited = 0;
    warp.pending.clear();
    for (size_t l = 0; l < lanes; ++l) warp.lanes[l] = &b.threads[32 * w + l];
  }
  b.exited = 0;
  b.at_barrier = 0;
  b.smem_bytes = L.smem_bytes;
  b.smem.resize((L.smem_bytes + sizeof(SmemChunk) - 1) / sizeof(SmemChunk) + 1);
  std::memset(static_cast<void*>(b.smem.data()), 0xFF, b.smem.size() * sizeof(SmemChunk));
}

inline std::vector<uint64_t> block_order(Launch& L) {
  std::vector<uint64_t> ids(L.blocks);
  std::iota(ids.begin(), ids.end(), uint64_t(0));
  if (L.schedule.blocks == Order::Reverse) std::reverse(ids.begin(), ids.end());
  if (L.schedule.blocks == Order::Random) std::shuffle(ids.begin(), ids.end(), L.rng);
  return ids;
}

// An OS thread for one block. Small stacks (fibers have their own) keep creation cheap: glibc
// caches and reuses them, where 64 default 8 MiB stacks would be mapped and unmapped per launch.
class BlockThread {
 public:
  explicit BlockThread(std::function<void()> fn) : fn_(std::move(fn)) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 512 * 1024);
    int rc = pthread_create(&id_, &attr, &start, this);
    pthread_attr_destroy(&attr);
    if (rc != 0) throw Error("simt: cannot start an OS thread for a block");
  }
  BlockThread(const BlockThread&) = delete;
  BlockThread& operator=(const BlockThread&) = delete;
  ~BlockThread() { pthread_join(id_, nullptr); }

 private:
  static void* start(void* self) {
    static_cast<BlockThread*>(self)->fn_();
    return nullptr;
  }
  std::function<void()> fn_;
  pthread_t id_;
};

inline void run_sequential(Launch& L) {
  Block b;
  L.resident = {&b};
  for (uint64_t id : block_order(L)) {
    start_block(b, L, id);
    { BlockThread worker([&b] { run_block(b); }); }  // joined at the closing brace
    if (L.error) return;
    if (b.exited != b.threads.size()) throw deadlock_error(L);
  }
}

// Every block resident on its own OS thread; run(i) hands block i the baton and waits until it is
// idle.
class BlockThreads {
 public:
  explicit BlockThreads(const std::vector<Block*>& blocks) : wake_(blocks.size()) {
    for (size_t i = 0; i < blocks.size(); ++i)
      threads_.push_back(std::make_unique<BlockThread>([this, i, b = blocks[i]] { serve(i, *b); }));
  }
  ~BlockThreads() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      quit_ = true;
    }
    for (auto& cv : wake_) cv.notify_one();
    threads_.clear();  // joins
  }
  void run(size_t i) {
    std::unique_lock<std::mutex> lock(mu_);
    turn_ = long(i);
    wake_[i].notify_one();
    host_.wait(lock, [&] { return turn_ == kHost; });
  }

 private:
  static constexpr long kHost = -1;
  void serve(size_t i, Block& b) {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_[i].wait(lock, [&] { return quit_ || turn_ == long(i); });
      if (quit_) return;
      lock.unlock();
      run_block(b);
      lock.lock();
      turn_ = kHost;
      host_.notify_one();
    }
  }
  std::mutex mu_;
  std::vector<std::condition_variable> wake_;
  std::condition_variable host_;
  long turn_ = kHost;
  bool quit_ = false;
  std::vector<std::unique_ptr<BlockThread>> threads_;
};

inline void run_cooperative(Launch& L) {
  std::vector<std::unique_ptr<Block>> blocks;
  for (uint64_t id = 0; id < L.blocks; ++id) {
    blocks.push_back(std::make_unique<Block>());
    start_block(*blocks.back(), L, id);
    L.resident.push_back(blocks.back().get());
  }
  BlockThreads threads(L.resident);
  for (bool ran = true; ran;) {
    ran = false;
    for (uint64_t id : block_order(L)) {
      if (blocks[id]->ready.empty()) continue;
      threads.run(id);
      ran = true;
      if (L.error) return;
    }
  }
  if (L.exited != L.total_threads) throw deadlock_error(L);
}

inline void run_launch(const LaunchConfig& cfg, void (*body)(void*), void* args) {
  if (tls_self != nullptr) throw Error("simt: launching a kernel from a kernel is not supported");
  Global& g = global();
  std::lock_guard<std::mutex> launch_lock(g.launch_mu);
  Launch L;
  L.grid_dim = cfg.grid;
  L.block_dim = cfg.block;
  L.smem_bytes = cfg.smem_bytes;
  L.cooperative = cfg.cooperative;
  L.body = body;
  L.args = args;
  {
    std::lock_guard<std::mutex> lock(g.mu);
    L.schedule = g.schedule;
    L.device = g.device;
    L.rng.seed(g.rng());
  }
  L.threads_per_block = uint64_t(cfg.block.x) * cfg.block.y * cfg.block.z;
  L.blocks = uint64_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  L.total_threads = L.threads_per_block * L.blocks;
  validate(L);
  L.traffic.launches = 1;
  auto publish = [&] {
    std::lock_guard<std::mutex> lock(g.mu);
    g.last = L.traffic;
    g.total += L.traffic;
  };
  try {
    L.cooperative ? run_cooperative(L) : run_sequential(L);
  } catch (...) {
    publish();
    throw;
  }
  publish();
  if (L.error) std::rethrow_exception(L.error);
}

}  // namespace detail

// launch(cfg, kernel)(args...): the kernel's parameters are copied once, and every CUDA thread
// calls the kernel with its own copy, as on a GPU.
template <class... P>
class Launcher {
 public:
  Launcher(const LaunchConfig& cfg, void (*kernel)(P...)) : cfg_(cfg), kernel_(kernel) {}

  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    struct Bound {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> params;
    } bound{kernel_, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    auto body = [](void* p) {
      auto& b = *static_cast<Bound*>(p);
      std::apply(b.kernel, b.params);  // copies each parameter into this thread's frame
    };
    detail::run_launch(cfg_, body, &bound);
  }

 private:
  LaunchConfig cfg_;
  void (*kernel_)(P...);
};

template <class... P>
Launcher<P...> launch(dim3 grid, dim3 block, size_t smem_bytes, void (*kernel)(P...)) {
  return Launcher<P...>({grid, block, smem_bytes, false}, kernel);
}

// All blocks resident at once; fastbn_grid_sync is allowed.
template <class... P>
Launcher<P...> launch_cooperative(dim3 grid, dim3 block, size_t smem_bytes,
                                  void (*kernel)(P...)) {
  return Launcher<P...>({grid, block, smem_bytes, true}, kernel);
}

}  // namespace simt
