// CUDA threads as fibers, and the loop that runs a block's ready fibers in the chosen order.
//
// A fiber runs until it waits (barrier, warp collective, grid sync) or exits, then switches back
// to its block's scheduler. Whoever completes a wait puts the waiters on the block's ready list;
// the next round runs that list in Forward, Reverse or Random order. Nothing is preempted, so
// between two synchronisation points each thread runs alone: the order is the only
// nondeterminism, and a kernel whose result depends on it has a race.
#pragma once

#include <vector_types.h>  // uint3, dim3

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "context.h"
#include "control.h"
#include "error.h"

namespace simt::detail {

enum class Wait : uint8_t { None, Barrier, Warp, Grid, Exited };  // None: ready or running

struct Block;
struct Launch;

struct Thread {
  Context ctx;
  void* stack = nullptr;
  Block* block = nullptr;
  uint3 idx{};
  unsigned linear = 0;  // x + y·bx + z·bx·by, the id messages print
  Wait wait = Wait::None;
  const char* op = "";  // what it waits in, and where
  Site site;
  // Warp collectives: what this lane passed, and the result whoever completes the collective
  // computed for it (computed at once, before any lane can move on and overwrite its value).
  uint32_t mask = 0;
  int src = 0;
  uint64_t value = 0;
  uint64_t result = 0;
  uint64_t ops = 0;  // watchdog: memory operations since last scheduled
};

struct WarpOp {
  const char* op;
  uint32_t mask;
  int width;
  uint32_t arrived;
};

struct Warp {
  uint32_t present = 0;  // lanes that exist: the last warp of a block may be partial
  uint32_t exited = 0;
  Thread* lanes[32] = {};
  std::vector<WarpOp> pending;  // collectives with disjoint masks may be in flight at once
};

// 16-byte vector loads from dynamic shared memory need at least that alignment.
struct alignas(64) SmemChunk {
  unsigned char bytes[64];
};

struct Block {
  Launch* launch = nullptr;
  uint3 idx{};
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  std::vector<Thread*> ready, batch;
  Context sched;  // where this block's fibers switch back to
  unsigned exited = 0;
  // __syncthreads: every thread must wait at the same call site before any leaves.
  unsigned at_barrier = 0;
  const char* barrier_op = "";
  Site barrier_site;
  uint64_t barrier_votes = 0;
  std::vector<SmemChunk> smem;  // dynamic shared memory
  size_t smem_bytes = 0;

  Block() = default;
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  ~Block() {
    for (Thread& t : threads)
      if (t.stack) global().stacks.release(t.stack);
  }
};

struct Launch {
  dim3 grid_dim, block_dim;
  size_t smem_bytes = 0;
  bool cooperative = false;
  void (*body)(void*) = nullptr;  // runs the kernel with the launch's arguments
  void* args = nullptr;
  Schedule schedule;
  Device device;
  std::mt19937_64 rng;
  Traffic traffic;
  std::exception_ptr error;  // first failure; the launch stops and rethrows it
  uint64_t threads_per_block = 0, blocks = 0, total_threads = 0;
  uint64_t exited = 0;
  // fastbn_grid_sync: a counting barrier over every thread of the grid.
  uint64_t at_grid = 0;
  Site grid_site;
  std::vector<Block*> resident;
};

// The running CUDA thread of this OS thread (null outside kernels).
inline thread_local Thread* tls_self = nullptr;

inline Thread& self(const char* what) {
  Thread* t = tls_self;
  if (t == nullptr) throw Error(std::string(what) + " used outside a kernel run by the emulator");
  return *t;
}

inline std::string str(const uint3& v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

inline std::string describe(const Thread& t) {
  return "thread " + std::to_string(t.linear) + " " + str(t.idx) + " of block " +
         str(t.block->idx);
}

template <class Pred>
std::string threads_where(const Block& b, Pred pred) {
  std::vector<uint64_t> ids;
  for (const Thread& t : b.threads)
    if (pred(t)) ids.push_back(t.linear);
  return "[" + id_ranges(ids) + "]";
}

// "threads [0-31] wait in __syncwarp(mask 0x0000ffff) at k.cu:12; threads [32-63] exited"
inline std::string describe_waits(const Block& b) {
  std::map<std::string, std::vector<uint64_t>> groups;
  for (const Thread& t : b.threads) {
    std::string what = t.wait == Wait::Exited ? "exited"
                       : t.wait == Wait::None  ? "ready"
                                               : std::string("wait in ") + t.op;
    if (t.wait == Wait::Warp) what += "(mask " + hex(t.mask) + ")";
    if (t.wait != Wait::Exited && t.wait != Wait::None) what += " at " + t.site.str();
    groups[what].push_back(t.linear);
  }
  std::string s;
  for (auto& [what, ids] : groups) {
    if (!s.empty()) s += "; ";
    s += "threads [" + id_ranges(ids) + "] " + what;
  }
  return s;
}

inline Error deadlock_error(const Launch& L) {
  std::string msg =
      "simt: deadlock: no CUDA thread can run, but not all have exited (a wait that is never "
      "completed: a barrier some threads skip, a warp mask naming a lane that is elsewhere, or a "
      "spin-wait on another block).";
  int shown = 0;
  for (const Block* b : L.resident) {
    if (b->exited == b->threads.size()) continue;
    if (++shown > 8) {
      msg += "\n  ... and more blocks";
      break;
    }
    msg += "\n  block " + str(b->idx) + ": " + describe_waits(*b);
  }
  return Error(msg);
}

inline void suspend(Thread& t, Wait why, const char* op, Site site) {
  t.wait = why;
  t.op = op;
  t.site = site;
  context_switch(t.ctx, t.block->sched);
}

inline void wake(Thread& t) {
  t.wait = Wait::None;
  t.block->ready.push_back(&t);
}

// Every wait a thread leaves behind when it exits is a wait that can never complete: CUDA leaves
// it undefined, we report it where it happens.
inline void check_exit(Thread& t) {
  Block& b = *t.block;
  Launch& L = *b.launch;
  if (b.at_barrier > 0)
    throw Error("simt: " + describe(t) + " exited while threads " +
                threads_where(b, [](const Thread& o) { return o.wait == Wait::Barrier; }) +
                " wait in " + b.barrier_op + " at " + b.barrier_site.str() +
                " (every thread of a block must reach each __syncthreads)");
  const Warp& w = b.warps[t.linear / 32];
  uint32_t lane = t.linear % 32;
  for (const WarpOp& op : w.pending)
    if (op.mask >> lane & 1)
      throw Error("simt: " + describe(t) + " exited while lanes of its warp wait for it in " +
                  op.op + "(mask " + hex(op.mask) + ")");
  if (L.at_grid > 0)
    throw Error("simt: " + describe(t) + " exited while " + std::to_string(L.at_grid) +
                " threads wait in fastbn_grid_sync at " + L.grid_site.str() +
                " (every thread of the grid must reach each grid sync)");
}

inline void fiber_main(void* arg) {
  Thread& t = *static_cast<Thread*>(arg);
  Launch& L = *t.block->launch;
  try {
    L.body(L.args);
    check_exit(t);
  } catch (...) {
    if (!L.error) L.error = std::current_exception();
  }
  Block& b = *t.block;
  t.wait = Wait::Exited;
  ++b.exited;
  b.warps[t.linear / 32].exited |= 1u << (t.linear % 32);
  ++L.exited;
  context_switch(t.ctx, b.sched);
  std::abort();  // an exited fiber is never resumed
}

inline void order_threads(std::vector<Thread*>& v, Order order, std::mt19937_64& rng) {
  auto by_id = [](const Thread* a, const Thread* b) { return a->linear < b->linear; };
  switch (order) {  // wake-ups mostly come in id order already: sorting is then a check
    case Order::Forward:
      if (!std::is_sorted(v.begin(), v.end(), by_id)) std::sort(v.begin(), v.end(), by_id);
      break;
    case Order::Reverse:
      if (!std::is_sorted(v.rbegin(), v.rend(), by_id)) std::sort(v.rbegin(), v.rend(), by_id);
      break;
    case Order::Random: std::shuffle(v.begin(), v.end(), rng); break;
  }
}

// Runs the block's fibers until none is ready (all exited, or all waiting for something).
inline void run_block(Block& b) {
  Launch& L = *b.launch;
  while (!b.ready.empty() && !L.error) {
    b.batch.swap(b.ready);
    b.ready.clear();
    order_threads(b.batch, L.schedule.threads, L.rng);
    for (Thread* t : b.batch) {
      tls_self = t;
      t->ops = 0;
      context_switch(b.sched, t->ctx);
      tls_self = nullptr;
      if (L.error) return;
    }
  }
}

}  // namespace simt::detail
