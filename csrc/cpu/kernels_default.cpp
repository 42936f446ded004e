// Kernels for baseline x86-64 (SSE2) or any other architecture: 16-byte vectors.
#define FASTBN_ISA_NS isa_default
#include "cpu/kernels_impl.h"

namespace fastbn::cpu {
const KernelTable& kernels_default() {
  static const KernelTable table = isa_default::make_table("default");
  return table;
}
}  // namespace fastbn::cpu
