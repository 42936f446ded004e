// The two memory orders every backend handles. Any other strided input is copied into one of
// them by the front (csrc/front/checks.cpp) before a kernel sees it.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTBN_LAYOUT_HD __host__ __device__
#else
#define FASTBN_LAYOUT_HD
#endif

namespace fastbn {

struct Layout {
  int64_t N;  // batch
  int64_t C;  // channels
  int64_t S;  // spatial elements per (n, c): product of the sizes after dim 1
  // false: NCS order, element (n, c, s) at (n·C + c)·S + s   (contiguous)
  // true:  NSC order, element (n, c, s) at (n·S + s)·C + c   (channels_last, channels_last_3d)
  bool channels_last;

  FASTBN_LAYOUT_HD int64_t per_channel() const { return N * S; }
  FASTBN_LAYOUT_HD int64_t numel() const { return N * C * S; }
};

}  // namespace fastbn
