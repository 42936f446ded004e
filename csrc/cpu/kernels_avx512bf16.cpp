// Kernels for AVX-512 with AVX512_BF16: as kernels_avx512.cpp, but float → bfloat16 rounds with
// vcvtneps2bf16 (one instruction instead of seven). Only called when the CPU has it.
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi,bmi2,popcnt")
// GCC 12's _mm512_cvtps_ph leaves an unused operand undefined on purpose.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define FASTBN_VB 64
#define FASTBN_BF16_HW 1
#define FASTBN_ISA_NS isa_avx512bf16
#include "cpu/kernels_impl.h"

namespace fastbn::cpu {
const KernelTable& kernels_avx512bf16() {
  static const KernelTable table = isa_avx512bf16::make_table("avx512bf16");
  return table;
}
}  // namespace fastbn::cpu
#else
#include "cpu/kernels.h"
namespace fastbn::cpu {
const KernelTable& kernels_avx512bf16() { return kernels_default(); }
}  // namespace fastbn::cpu
#endif
