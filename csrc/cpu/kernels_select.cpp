// Run-time choice of the kernel table (compiled for baseline x86-64).
#include <cstdlib>
#include <cstring>

#include "cpu/kernels.h"

namespace fastbn::cpu {

namespace {
const KernelTable& detect() {
  const char* cap = std::getenv("FASTBN_CPU_ISA");
  const auto allowed = [cap](const char* isa) {
    if (!cap || !*cap) return true;
    if (std::strcmp(cap, "default") == 0) return false;
    if (std::strcmp(cap, "avx2") == 0) return std::strcmp(isa, "avx2") == 0;
    return true;
  };
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (allowed("avx512") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    return kernels_avx512();
  if (allowed("avx2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("bmi2"))
    return kernels_avx2();
#endif
  return kernels_default();
}
}  // namespace

const KernelTable& select_kernels() {
  static const KernelTable& table = detect();
  return table;
}

}  // namespace fastbn::cpu
