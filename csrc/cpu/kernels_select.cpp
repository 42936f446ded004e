// Run-time choice of the kernel table (compiled for baseline x86-64).
#include <cstdlib>
#include <cstring>

#include <c10/util/Exception.h>

#include "cpu/kernels.h"

namespace fastbn::cpu {

namespace {
// Tables from the most capable down; FASTBN_CPU_ISA=<name> allows that one and those below it.
constexpr const char* kOrder[] = {"avx512bf16", "avx512", "avx2", "default"};

const KernelTable& detect() {
  const char* cap = std::getenv("FASTBN_CPU_ISA");
  if (cap && *cap) {
    bool known = false;
    for (const char* name : kOrder) known = known || std::strcmp(name, cap) == 0;
    TORCH_CHECK(known, "FASTBN_CPU_ISA=", cap,
                ": expected one of avx512bf16, avx512, avx2, default (or unset)");
  }
  // isa is allowed unless it comes before the cap in kOrder.
  const auto allowed = [cap](const char* isa) {
    if (!cap || !*cap) return true;
    for (const char* name : kOrder) {
      if (std::strcmp(name, cap) == 0) return true;
      if (std::strcmp(name, isa) == 0) return false;
    }
    return true;
  };
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi2");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  if (allowed("avx512bf16") && avx512 && __builtin_cpu_supports("avx512bf16"))
    return kernels_avx512bf16();
  if (allowed("avx512") && avx512) return kernels_avx512();
  if (allowed("avx2") && avx2) return kernels_avx2();
#endif
  return kernels_default();
}
}  // namespace

const KernelTable& select_kernels() {
  static const KernelTable& table = detect();
  return table;
}

}  // namespace fastbn::cpu
