// Kernels for AVX-512 (F, BW, VL, DQ): 64-byte vectors. Only called when the CPU has them.
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,popcnt")
// GCC 12's _mm512_cvtps_ph leaves an unused operand undefined on purpose.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define FASTBN_VB 64
#define FASTBN_ISA_NS isa_avx512
#include "cpu/kernels_impl.h"

namespace fastbn::cpu {
const KernelTable& kernels_avx512() {
  static const KernelTable table = isa_avx512::make_table("avx512");
  return table;
}
}  // namespace fastbn::cpu
#else
#include "cpu/kernels.h"
namespace fastbn::cpu {
const KernelTable& kernels_avx512() { return kernels_default(); }
}  // namespace fastbn::cpu
#endif
