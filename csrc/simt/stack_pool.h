// Fiber stacks: 64 KiB each with a PROT_NONE guard page below, so an overflow faults at once
// instead of corrupting the neighbouring fiber. Stacks are mapped on demand and kept for reuse
// (mmap + mprotect per launch would dominate small launches).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <vector>

#include "error.h"

namespace simt::detail {

constexpr size_t kStackBytes = 64 * 1024;

class StackPool {
 public:
  StackPool() = default;
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;
  ~StackPool() {
    for (void* s : free_) munmap(static_cast<char*>(s) - guard(), guard() + kStackBytes);
  }

  // Lowest usable address of a kStackBytes stack.
  void* acquire() {
    if (!free_.empty()) {
      void* s = free_.back();
      free_.pop_back();
      return s;
    }
    size_t g = guard();
    void* m = mmap(nullptr, g + kStackBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw Error("simt: cannot map a fiber stack (too many CUDA threads?)");
    if (mprotect(m, g, PROT_NONE) != 0) {
      munmap(m, g + kStackBytes);
      throw Error("simt: cannot protect a fiber stack guard page");
    }
    return static_cast<char*>(m) + g;
  }

  void release(void* stack) { free_.push_back(stack); }

 private:
  static size_t guard() {
    static const size_t page = size_t(sysconf(_SC_PAGESIZE));
    return page;
  }
  std::vector<void*> free_;
};

}  // namespace simt::detail
