// Host-side control of the emulator: schedule orders, the simulated device, traffic counters.
// Settings and counters are process-wide (a test sets them on one thread, a binding may launch
// from another); launches are serialised, so "the last launch" is well defined.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>

#include "error.h"
#include "stack_pool.h"

namespace simt {

// Order in which ready CUDA threads run between two synchronisation points, and in which blocks
// run. A kernel whose output depends on the order has a race.
enum class Order { Forward, Reverse, Random };

inline Order parse_order(const std::string& s) {
  if (s == "forward") return Order::Forward;
  if (s == "reverse") return Order::Reverse;
  if (s == "random") return Order::Random;
  throw Error("simt: unknown schedule order '" + s + "' (forward, reverse, random)");
}

struct Schedule {
  Order threads = Order::Forward;
  Order blocks = Order::Forward;
  uint64_t seed = 0;  // for Order::Random; each launch draws its own seed from it
};

// The simulated GPU that occupancy queries and launch checks see. Tests shrink it to force a
// launcher onto its fallback path.
struct Device {
  int sm_count = 4;
  int max_threads_per_block = 1024;
  int max_threads_per_sm = 2048;
  int max_blocks_per_sm = 16;
  size_t max_smem_per_block = 48 * 1024;  // dynamic shared memory one launch may request
  size_t max_smem_per_sm = 100 * 1024;
  // Global accesses + atomics one thread may make without reaching a sync point before the
  // watchdog declares a spin-wait (which can never finish: blocks do not run concurrently).
  uint64_t watchdog_ops = uint64_t(1) << 26;
};

// Global-memory traffic through fastbn::gload/gstore/__ldg (bytes) and atomics (operations).
struct Traffic {
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t atomics = 0;
  uint64_t launches = 0;
  Traffic& operator+=(const Traffic& o) {
    bytes_read += o.bytes_read;
    bytes_written += o.bytes_written;
    atomics += o.atomics;
    launches += o.launches;
    return *this;
  }
};

namespace detail {

struct Global {
  std::mutex mu;  // guards the settings and counters below
  Schedule schedule;
  std::mt19937_64 rng;
  Device device;
  Traffic last, total;

  // Held for a whole launch: static __shared__ storage is per OS thread and the stack pool is
  // shared, so two launches must never interleave.
  std::mutex launch_mu;
  StackPool stacks;  // guarded by launch_mu
};

inline Global& global() {
  static Global g;
  return g;
}

}  // namespace detail

inline void set_schedule(const Schedule& s) {
  auto& g = detail::global();
  std::lock_guard<std::mutex> lock(g.mu);
  g.schedule = s;
  g.rng.seed(s.seed);
}

inline Schedule schedule() {
  auto& g = detail::global();
  std::lock_guard<std::mutex> lock(g.mu);
  return g.schedule;
}

inline void set_device(const Device& d) {
  auto& g = detail::global();
  std::lock_guard<std::mutex> lock(g.mu);
  g.device = d;
}

inline Device device() {
  auto& g = detail::global();
  std::lock_guard<std::mutex> lock(g.mu);
  return g.device;
}

inline Traffic last_launch_traffic() {
  auto& g = detail::global();
  std::lock_guard<std::mutex> lock(g.mu);
  return g.last;
}

// Summed over all launches since the last reset_traffic(): the budget of a multi-kernel op.
inline Traffic total_traffic() {
  auto& g = detail::global();
  std::lock_guard<std::mutex> lock(g.mu);
  return g.total;
}

inline void reset_traffic() {
  auto& g = detail::global();
  std::lock_guard<std::mutex> lock(g.mu);
  g.last = g.total = Traffic{};
}

// What cudaOccupancyMaxActiveBlocksPerMultiprocessor would say on the simulated device. Static
// shared memory and registers are not modelled.
inline int max_active_blocks_per_sm(const Device& d, int block_threads, size_t dynamic_smem) {
  if (block_threads <= 0 || block_threads > d.max_threads_per_block) return 0;
  if (dynamic_smem > d.max_smem_per_block) return 0;
  int warps = (block_threads + 31) / 32;
  int n = std::min(d.max_blocks_per_sm, d.max_threads_per_sm / (warps * 32));
  if (dynamic_smem > 0) n = std::min<int64_t>(n, int64_t(d.max_smem_per_sm / dynamic_smem));
  return std::max(n, 0);
}

inline int max_active_blocks_per_sm(int block_threads, size_t dynamic_smem) {
  return max_active_blocks_per_sm(device(), block_threads, dynamic_smem);
}

// Restores the previous setting at scope exit (tests).
class ScopedSchedule {
 public:
  explicit ScopedSchedule(const Schedule& s) : saved_(schedule()) { set_schedule(s); }
  ~ScopedSchedule() { set_schedule(saved_); }

 private:
  Schedule saved_;
};

class ScopedDevice {
 public:
  explicit ScopedDevice(const Device& d) : saved_(device()) { set_device(d); }
  ~ScopedDevice() { set_device(saved_); }

 private:
  Device saved_;
};

}  // namespace simt
