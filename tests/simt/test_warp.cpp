// Warp collectives: shuffle width/segment rules, votes, __syncwarp, and the mask errors.
#include <cmath>
#include <vector>

#include "harness.h"

namespace {

constexpr unsigned kFull = 0xffffffffu;

template <class T>
T lane_value(unsigned lane) {
  return T(lane * 3 + 1) * T(sizeof(T) == 8 ? 1LL << 33 : 1);  // 8-byte types: use high bits
}

// Each thread records idx/up/down/xor shuffles of its lane value.
template <class T>
__global__ void shuffles(T* out, int width, int arg) {
  unsigned lane = threadIdx.x % 32;
  T v = lane_value<T>(lane);
  T* o = out + 4 * threadIdx.x;
  o[0] = __shfl_sync(kFull, v, arg, width);
  o[1] = __shfl_up_sync(kFull, v, unsigned(arg), width);
  o[2] = __shfl_down_sync(kFull, v, unsigned(arg), width);
  o[3] = __shfl_xor_sync(kFull, v, arg, width);
}

// The source lanes as the CUDA programming guide states them.
int expect_idx(int lane, int width, int arg) { return lane / width * width + arg % width; }
int expect_up(int lane, int width, int arg) { return lane % width >= arg ? lane - arg : lane; }
int expect_down(int lane, int width, int arg) {
  return lane % width + arg < width ? lane + arg : lane;
}
int expect_xor(int lane, int width, int arg) {
  int s = lane ^ arg;
  return s < (lane / width + 1) * width ? s : lane;  // earlier segments yes, later ones no
}

template <class T>
void check_shuffles() {
  const int threads = 64;
  for (int width : {1, 2, 4, 8, 16, 32})
    for (int arg : {0, 1, 3, 4, 7, 16, 31}) {
      std::vector<T> out(4 * threads);
      FASTBN_LAUNCH(1, threads, 0, nullptr, shuffles<T>)(out.data(), width, arg);
      for (int t = 0; t < threads; ++t) {
        int lane = t % 32;
        CHECK_EQ(out[4 * t + 0], lane_value<T>(expect_idx(lane, width, arg)));
        CHECK_EQ(out[4 * t + 1], lane_value<T>(expect_up(lane, width, arg)));
        CHECK_EQ(out[4 * t + 2], lane_value<T>(expect_down(lane, width, arg)));
        CHECK_EQ(out[4 * t + 3], lane_value<T>(expect_xor(lane, width, arg)));
      }
    }
}

// Butterfly (all lanes get the sum) and tree (lane 0 gets it) reductions in segments of `width`.
__global__ void warp_sums(const float* x, float* xor_sum, float* down_sum, int width) {
  float v = x[threadIdx.x];
  float a = v, b = v;
  for (int o = width / 2; o > 0; o /= 2) {
    a += __shfl_xor_sync(kFull, a, o, width);
    b += __shfl_down_sync(kFull, b, unsigned(o), width);
  }
  xor_sum[threadIdx.x] = a;
  down_sum[threadIdx.x] = b;
}

__global__ void half_xor(__half* out) {
  __half v = __float2half_rn(float(threadIdx.x) * 0.5f);
  out[threadIdx.x] = __shfl_xor_sync(kFull, v, 1);
}

__global__ void vote(unsigned* out, unsigned mask) {
  unsigned lane = threadIdx.x % 32;
  if (!(mask >> lane & 1)) return;
  int pred = lane % 3 == 0;
  out[3 * threadIdx.x + 0] = __ballot_sync(mask, pred);
  out[3 * threadIdx.x + 1] = __any_sync(mask, pred);
  out[3 * threadIdx.x + 2] = __all_sync(mask, pred || lane >= 30);
}

// Half warps shuffle independently, from different call sites, at the same time.
__global__ void half_warps(int* out) {
  unsigned lane = threadIdx.x % 32;
  int v = int(lane) * 10;
  if (lane < 16)
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, v, 15);
  else
    out[threadIdx.x] = __shfl_sync(0xffff0000u, v, 16 + 1);
}

// A lane of the mask reading a lane outside it gets an undefined value: NaN here.
__global__ void reads_outside_mask(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, float(threadIdx.x), 8);
}

// Lanes of a full warp arriving from different call sites complete one collective (sm_70+).
__global__ void different_sites(int* out) {
  int v = int(threadIdx.x) + 100;
  if (threadIdx.x % 2)
    out[threadIdx.x] = __shfl_sync(kFull, v, 3);
  else
    out[threadIdx.x] = __shfl_sync(kFull, v, 3);
}

// Shared memory exchange inside a warp, ordered by __syncwarp.
__global__ void syncwarp_exchange(int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = int(threadIdx.x) * 2;
  __syncwarp();
  out[threadIdx.x] = s[(threadIdx.x + 1) % 32 + threadIdx.x / 32 * 32];
}

__global__ void caller_not_in_mask() { __syncwarp(0x2); }

__global__ void mask_names_exited() {
  if (threadIdx.x >= 16) return;
  __syncwarp(kFull);
}

__global__ void mask_names_absent() { __syncwarp(kFull); }

__global__ void disagree_op() {
  float v = 1.0f;
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(kFull, v, 1);
  else
    v = __shfl_down_sync(kFull, v, 1);
}

__global__ void disagree_width() {
  float v = __shfl_xor_sync(kFull, 1.0f, 1, threadIdx.x < 16 ? 16 : 32);
  (void)v;
}

__global__ void overlapping_masks() {
  if (threadIdx.x < 16)
    __syncwarp(0x0000ffffu);
  else
    __syncwarp(0xffffff00u);
}

__global__ void bad_width() { (void)__shfl_xor_sync(kFull, 1, 1, 12); }

}  // namespace

SIMT_CASE(warp_shuffle_float) { check_shuffles<float>(); }
SIMT_CASE(warp_shuffle_double) { check_shuffles<double>(); }
SIMT_CASE(warp_shuffle_int) { check_shuffles<int>(); }
SIMT_CASE(warp_shuffle_unsigned) { check_shuffles<unsigned>(); }
SIMT_CASE(warp_shuffle_long_long) { check_shuffles<long long>(); }

SIMT_CASE(warp_shuffle_spot_values) {
  // Independent of the formulas above: a few lanes worked out by hand.
  std::vector<int> out(4 * 32);
  FASTBN_LAUNCH(1, 32, 0, nullptr, shuffles<int>)(out.data(), 8, 5);
  auto src = [&](int lane, int op) { return (out[4 * lane + op] - 1) / 3; };
  CHECK_EQ(src(3, 0), 5);    // idx 5 in segment 0
  CHECK_EQ(src(12, 0), 13);  // idx 5 in segment 1 (lanes 8-15)
  CHECK_EQ(src(4, 1), 4);    // up 5 from position 4: out of segment, own value
  CHECK_EQ(src(13, 1), 8);
  CHECK_EQ(src(2, 2), 7);    // down 5 from position 2
  CHECK_EQ(src(3, 2), 3);    // position 3 + 5 leaves the segment
  CHECK_EQ(src(9, 3), 12);   // 9 ^ 5
  CHECK_EQ(src(2, 3), 7);
  FASTBN_LAUNCH(1, 32, 0, nullptr, shuffles<int>)(out.data(), 8, 9);
  CHECK_EQ(src(3, 3), 3);    // 3 ^ 9 = 10 lies in a later segment: own value
  CHECK_EQ(src(12, 3), 5);   // 12 ^ 9 = 5 lies in an earlier segment: allowed
}

SIMT_CASE(warp_reductions_segmented) {
  std::vector<float> x(64), xs(64), ds(64);
  for (int i = 0; i < 64; ++i) x[i] = float(i);
  for (simt::Order order : kOrders) {
    simt::ScopedSchedule schedule({order, order, 11});
    for (int width : {4, 16, 32}) {
      FASTBN_LAUNCH(1, 64, 0, nullptr, warp_sums)(x.data(), xs.data(), ds.data(), width);
      for (int t = 0; t < 64; ++t) {
        int seg = t / width * width;
        float sum = 0;
        for (int i = seg; i < seg + width; ++i) sum += x[i];
        CHECK_EQ(xs[t], sum);
        if (t == seg) CHECK_EQ(ds[t], sum);
      }
    }
  }
}

SIMT_CASE(warp_shuffle_half) {
  std::vector<__half> out(32);
  FASTBN_LAUNCH(1, 32, 0, nullptr, half_xor)(out.data());
  for (int t = 0; t < 32; ++t) CHECK_EQ(__half2float(out[t]), float(t ^ 1) * 0.5f);
}

SIMT_CASE(warp_ballot_any_all) {
  for (unsigned mask : {kFull, 0x0000ffffu, 0x0f0f0f0fu}) {
    std::vector<unsigned> out(3 * 64, 7);
    FASTBN_LAUNCH(1, 64, 0, nullptr, vote)(out.data(), mask);
    unsigned ballot = 0x49249249u & mask;
    for (int t = 0; t < 64; ++t) {
      if (!(mask >> (t % 32) & 1)) continue;
      CHECK_EQ(out[3 * t + 0], ballot);
      CHECK_EQ(out[3 * t + 1], 1u);
      unsigned all = (mask & ~(0x49249249u | 0xc0000000u)) == 0;
      CHECK_EQ(out[3 * t + 2], all);
    }
  }
}

SIMT_CASE(warp_disjoint_masks_in_flight) {
  std::vector<int> out(64);
  for (simt::Order order : kOrders) {
    simt::ScopedSchedule schedule({order, order, 5});
    FASTBN_LAUNCH(1, 64, 0, nullptr, half_warps)(out.data());
    for (int t = 0; t < 64; ++t) CHECK_EQ(out[t], t % 32 < 16 ? 150 : 170);
  }
}

SIMT_CASE(warp_read_outside_mask_is_nan) {
  std::vector<float> out(16);
  FASTBN_LAUNCH(1, 32, 0, nullptr, reads_outside_mask)(out.data());
  for (int t = 0; t < 8; ++t) CHECK_EQ(out[t], float(t + 8));
  for (int t = 8; t < 16; ++t) CHECK(std::isnan(out[t]));
}

SIMT_CASE(warp_different_call_sites) {
  std::vector<int> out(32);
  FASTBN_LAUNCH(1, 32, 0, nullptr, different_sites)(out.data());
  for (int t = 0; t < 32; ++t) CHECK_EQ(out[t], 103);
}

SIMT_CASE(warp_syncwarp_orders_shared_memory) {
  std::vector<int> out(64);
  for (simt::Order order : kOrders) {
    simt::ScopedSchedule schedule({order, order, 9});
    FASTBN_LAUNCH(1, 64, 0, nullptr, syncwarp_exchange)(out.data());
    for (int t = 0; t < 64; ++t) CHECK_EQ(out[t], ((t + 1) % 32 + t / 32 * 32) * 2);
  }
}

SIMT_CASE(warp_error_caller_not_in_mask) {
  EXPECT_ERROR(FASTBN_LAUNCH(1, 32, 0, nullptr, caller_not_in_mask)(), "__syncwarp(mask 0x00000002",
               "does not include the calling lane", "test_warp.cpp:");
}

SIMT_CASE(warp_error_mask_names_exited_lanes) {
  for (simt::Order order : {simt::Order::Forward, simt::Order::Reverse}) {
    simt::ScopedSchedule schedule({order, order, 0});
    EXPECT_ERROR(FASTBN_LAUNCH(1, 32, 0, nullptr, mask_names_exited)(), "exited", "__syncwarp");
  }
}

SIMT_CASE(warp_error_mask_names_absent_lanes) {
  EXPECT_ERROR(FASTBN_LAUNCH(1, 48, 0, nullptr, mask_names_absent)(), "lanes [16-31]",
               "do not exist", "block of 48 threads");
}

SIMT_CASE(warp_error_lanes_disagree) {
  EXPECT_ERROR(FASTBN_LAUNCH(1, 32, 0, nullptr, disagree_op)(), "__shfl_down_sync",
               "wait for this lane in __shfl_xor_sync");
  EXPECT_ERROR(FASTBN_LAUNCH(1, 32, 0, nullptr, disagree_width)(), "width 32",
               "(mask 0xffffffff, width 16)");
  for (simt::Order order : {simt::Order::Forward, simt::Order::Reverse}) {
    simt::ScopedSchedule schedule({order, order, 0});
    // Forward: lanes 0-15 finish first, so lane 16's mask names an exited lane; Reverse: lane 15
    // finds lanes 16-31 waiting for it with another mask.
    EXPECT_ERROR(FASTBN_LAUNCH(1, 32, 0, nullptr, overlapping_masks)(), "__syncwarp", "lanes [");
  }
}

SIMT_CASE(warp_error_bad_width) {
  EXPECT_ERROR(FASTBN_LAUNCH(1, 32, 0, nullptr, bad_width)(), "power of two");
}
