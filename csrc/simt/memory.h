// Global-memory accesses, atomics and dynamic shared memory as kernels see them.
//
// Loads and stores through fastbn::gload/gstore (and __ldg) are counted per launch, so tests can
// assert a kernel's memory-traffic budget, and checked for null and misaligned addresses, which
// fault on a GPU. Atomics are plain read-modify-writes: one fiber runs at a time.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "scheduler.h"

namespace simt {

namespace detail {

[[noreturn, gnu::noinline, gnu::cold]] inline void watchdog(const Thread& t) {
  throw Error("simt: watchdog: " + describe(t) + " made " + std::to_string(t.ops - 1) +
              " memory operations without reaching a synchronisation point; a spin-wait on "
              "another thread cannot finish in the emulator (threads are not preempted)");
}

// Adds n to one traffic counter of the running launch; outside kernels nothing is counted.
inline void count(uint64_t Traffic::*counter, uint64_t n) {
  Thread* t = tls_self;
  if (t == nullptr) return;
  t->block->launch->traffic.*counter += n;
  if (++t->ops > t->block->launch->device.watchdog_ops) watchdog(*t);
}

[[noreturn, gnu::noinline, gnu::cold]] inline void bad_address(const void* p, const char* what,
                                                              size_t size, size_t align,
                                                              Site site) {
  if (p == nullptr) throw Error(std::string("simt: ") + what + " of a null pointer at " + site.str());
  throw Error(std::string("simt: misaligned ") + what + " of " + std::to_string(size) +
              " bytes at " + site.str() + ": the type needs " + std::to_string(align) +
              "-byte alignment");
}

// Null and misaligned addresses fault on a GPU.
template <class T>
void check_address(const T* p, const char* what, Site site) {
  if (p == nullptr || reinterpret_cast<uintptr_t>(p) % alignof(T) != 0)
    bad_address(p, what, sizeof(T), alignof(T), site);
}

template <class T, class... U>
constexpr bool one_of = (std::is_same_v<T, U> || ...);

template <class T>
struct same {
  using type = T;
};

}  // namespace detail

template <class T>
T load(const T* p, Site site = Site::here()) {
  detail::check_address(p, "load", site);
  detail::count(&Traffic::bytes_read, sizeof(T));
  return *p;
}

template <class T>
void store(T* p, const T& v, Site site = Site::here()) {
  detail::check_address(p, "store", site);
  detail::count(&Traffic::bytes_written, sizeof(T));
  *p = v;
}

// Applies f to *p, returns the old value.
template <class T, class F>
T atomic_rmw(T* p, F f, Site site) {
  detail::check_address(p, "atomic", site);
  detail::count(&Traffic::atomics, 1);
  T old = *p;
  *p = f(old);
  return old;
}

// The block's dynamic shared memory (FASTBN_DYNAMIC_SMEM): the launch's smem_bytes, filled with
// 0xFF (NaN for floats) when the block starts, so a read before a write shows.
inline void* dynamic_smem() { return detail::self("dynamic shared memory").block->smem.data(); }
inline size_t dynamic_smem_bytes() {
  return detail::self("dynamic shared memory").block->smem_bytes;
}

}  // namespace simt
