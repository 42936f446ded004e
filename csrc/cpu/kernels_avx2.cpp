// Kernels for AVX2 + FMA + F16C: 32-byte vectors. Only called when the CPU has them.
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
#define FASTBN_VB 32
#define FASTBN_ISA_NS isa_avx2
#include "cpu/kernels_impl.h"

namespace fastbn::cpu {
const KernelTable& kernels_avx2() {
  static const KernelTable table = isa_avx2::make_table("avx2");
  return table;
}
}  // namespace fastbn::cpu
#else
#include "cpu/kernels.h"
namespace fastbn::cpu {
const KernelTable& kernels_avx2() { return kernels_default(); }
}  // namespace fastbn::cpu
#endif
