// __syncthreads (block) and fastbn_grid_sync (grid): counting barriers that release when every
// thread of the block / grid waits at the same call site. Waiting at different sites, or while
// some threads have exited, is undefined in CUDA and an error here.
#pragma once

#include <cstring>
#include <string>

#include "scheduler.h"

namespace simt::detail {

// Error paths stay out of line: the barrier's stack frame is touched on every resume.
[[noreturn, gnu::noinline, gnu::cold]] inline void barrier_after_exit(Thread& t, const char* op,
                                                                      Site site) {
  Block& b = *t.block;
  throw Error("simt: " + describe(t) + " reached " + op + " at " + site.str() + " but threads " +
              threads_where(b, [](const Thread& o) { return o.wait == Wait::Exited; }) +
              " of its block have exited (every thread of a block must reach each "
              "__syncthreads)");
}

[[noreturn, gnu::noinline, gnu::cold]] inline void divergent_barrier(Thread& t, const char* op,
                                                                     Site site) {
  Block& b = *t.block;
  throw Error("simt: divergent barriers: " + describe(t) + " reached " + op + " at " +
              site.str() + " while threads " +
              threads_where(b, [](const Thread& o) { return o.wait == Wait::Barrier; }) +
              " wait in " + b.barrier_op + " at " + b.barrier_site.str());
}

// Returns how many threads of the block passed a true `vote` (for __syncthreads_count & co).
inline uint64_t block_barrier(const char* op, Site site, bool vote) {
  Thread& t = self(op);
  Block& b = *t.block;
  if (b.exited > 0) barrier_after_exit(t, op, site);
  if (b.at_barrier == 0) {
    b.barrier_op = op;
    b.barrier_site = site;
    b.barrier_votes = 0;
  } else if (b.barrier_site != site ||
             (b.barrier_op != op && std::strcmp(b.barrier_op, op) != 0)) {
    divergent_barrier(t, op, site);
  }
  b.barrier_votes += vote;
  if (++b.at_barrier < b.threads.size()) {
    suspend(t, Wait::Barrier, op, site);
    return t.result;
  }
  b.at_barrier = 0;
  for (Thread& o : b.threads) {
    if (o.wait != Wait::Barrier) continue;
    o.result = b.barrier_votes;
    wake(o);
  }
  return b.barrier_votes;
}

inline void grid_barrier(Site site) {
  const char* op = "fastbn_grid_sync";
  Thread& t = self(op);
  Launch& L = *t.block->launch;
  if (!L.cooperative)
    throw Error("simt: fastbn_grid_sync at " + site.str() + " in " + describe(t) +
                ": the kernel was not launched with FASTBN_LAUNCH_COOPERATIVE");
  if (L.exited > 0)
    throw Error("simt: " + describe(t) + " reached fastbn_grid_sync at " + site.str() + " but " +
                std::to_string(L.exited) +
                " threads of the grid have exited (every thread of the grid must reach each "
                "grid sync)");
  if (L.at_grid == 0)
    L.grid_site = site;
  else if (L.grid_site != site)
    throw Error("simt: divergent grid syncs: " + describe(t) + " reached fastbn_grid_sync at " +
                site.str() + " while " + std::to_string(L.at_grid) + " threads wait at " +
                L.grid_site.str());
  if (++L.at_grid < L.total_threads) {
    suspend(t, Wait::Grid, op, site);
    return;
  }
  L.at_grid = 0;
  for (Block* b : L.resident)
    for (Thread& o : b->threads)
      if (o.wait == Wait::Grid) wake(o);
}

}  // namespace simt::detail
