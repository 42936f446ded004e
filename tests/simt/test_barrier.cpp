// __syncthreads semantics and the barrier misuse errors.
#include <algorithm>
#include <vector>

#include "harness.h"

namespace {

constexpr int kBlock = 256;

// Tree reduction in shared memory: correct only if every level is separated by a barrier.
__global__ void block_sum(const float* x, float* out, int n) {
  __shared__ float s[kBlock];
  int i = blockIdx.x * kBlock + threadIdx.x;
  s[threadIdx.x] = i < n ? fastbn::gload(x + i) : 0.0f;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride /= 2) {
    if (int(threadIdx.x) < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) fastbn::gstore(out + blockIdx.x, s[0]);
}

// Reads its neighbour's slot; with `synced` false the barrier between write and read is missing.
__global__ void neighbour(float* out, float base, bool synced) {
  __shared__ float s[kBlock];
  s[threadIdx.x] = base + float(threadIdx.x);
  if (synced) __syncthreads();
  float v = s[(threadIdx.x + 1) % kBlock];
  fastbn::gstore(out + blockIdx.x * kBlock + threadIdx.x, v);
}

std::vector<float> run_neighbour(simt::Order order, bool synced) {
  simt::ScopedSchedule schedule({order, order, 1});
  std::vector<float> out(2 * kBlock);
  FASTBN_LAUNCH(2, kBlock, 0, nullptr, neighbour)(out.data(), 1.0f, synced);
  return out;
}

__global__ void divergent(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void early_exit(int* out, int exit_below) {
  if (int(threadIdx.x) < exit_below) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void late_exit(int* out) {
  if (threadIdx.x == 40) return;  // other threads wait at the barrier by the time 40 runs
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Lanes 1-31 wait in a warp sync for lane 0, which waits at the block barrier for them.
__global__ void deadlocks() {
  if (threadIdx.x >= 1 && threadIdx.x < 32) __syncwarp();
  __syncthreads();
}

__global__ void votes(int* out, int threshold) {
  int pred = int(threadIdx.x) < threshold;
  int count = __syncthreads_count(pred);
  int all = __syncthreads_and(pred);
  int any = __syncthreads_or(pred);
  if (threadIdx.x == 5) {
    out[0] = count;
    out[1] = all;
    out[2] = any;
  }
}

// 2D block: threadIdx/blockDim/gridDim components and the linear order barriers count over.
__global__ void geometry(int* out) {
  __shared__ int s[8 * 4];
  int lin = threadIdx.y * blockDim.x + threadIdx.x;
  s[lin] = lin;
  __syncthreads();
  int b = blockIdx.y * gridDim.x + blockIdx.x;
  out[b * 32 + lin] = s[31 - lin] + 100 * b;
}

}  // namespace

SIMT_CASE(barrier_block_reduction_all_orders) {
  int n = 5 * kBlock + 17;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = float(i % 97);
  int blocks = (n + kBlock - 1) / kBlock;
  for (simt::Order order : kOrders) {
    simt::ScopedSchedule schedule({order, order, 7});
    std::vector<float> out(blocks, -1.0f);
    FASTBN_LAUNCH(blocks, kBlock, 0, nullptr, block_sum)(x.data(), out.data(), n);
    for (int b = 0; b < blocks; ++b) {
      float expect = 0;
      for (int i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) expect += x[i];
      CHECK_EQ(out[b], expect);
    }
  }
}

SIMT_CASE(barrier_missing_is_caught_by_order) {
  // The race: Forward runs thread t before t+1 wrote its slot, Reverse after.
  CHECK(run_neighbour(simt::Order::Forward, false) != run_neighbour(simt::Order::Reverse, false));
  auto fixed = run_neighbour(simt::Order::Forward, true);
  CHECK(fixed == run_neighbour(simt::Order::Reverse, true));
  CHECK(fixed == run_neighbour(simt::Order::Random, true));
  CHECK_EQ(fixed[0], 2.0f);
  CHECK_EQ(fixed[kBlock - 1], 1.0f);
}

SIMT_CASE(barrier_divergent_error) {
  std::vector<int> out(64);
  EXPECT_ERROR(FASTBN_LAUNCH(1, 64, 0, nullptr, divergent)(out.data()), "divergent barriers",
               "test_barrier.cpp:", "__syncthreads", "threads [0-15]");
}

SIMT_CASE(barrier_exited_while_others_wait_error) {
  std::vector<int> out(64);
  for (simt::Order order : kOrders) {
    simt::ScopedSchedule schedule({order, order, 3});
    // Exit first, barrier later (Forward) or the reverse (Reverse): both are reported.
    EXPECT_ERROR(FASTBN_LAUNCH(1, 64, 0, nullptr, early_exit)(out.data(), 8), "exited",
                 "__syncthreads");
  }
  EXPECT_ERROR(FASTBN_LAUNCH(1, 64, 0, nullptr, late_exit)(out.data()), "thread 40",
               "exited while threads [0-39", "wait in __syncthreads at", "test_barrier.cpp:");
}

SIMT_CASE(barrier_deadlock_error_names_threads_and_sites) {
  EXPECT_ERROR(FASTBN_LAUNCH(1, 64, 0, nullptr, deadlocks)(), "deadlock", "block (0,0,0)",
               "threads [0, 32-63] wait in __syncthreads at ",
               "threads [1-31] wait in __syncwarp(mask 0xffffffff) at ", "test_barrier.cpp:");
}

SIMT_CASE(barrier_count_and_or) {
  std::vector<int> out(3);
  FASTBN_LAUNCH(1, 100, 0, nullptr, votes)(out.data(), 37);
  CHECK_EQ(out[0], 37);
  CHECK_EQ(out[1], 0);
  CHECK_EQ(out[2], 1);
  FASTBN_LAUNCH(1, 100, 0, nullptr, votes)(out.data(), 100);
  CHECK_EQ(out[0], 100);
  CHECK_EQ(out[1], 1);
  FASTBN_LAUNCH(1, 100, 0, nullptr, votes)(out.data(), 0);
  CHECK_EQ(out[2], 0);
}

SIMT_CASE(barrier_2d_geometry) {
  std::vector<int> out(6 * 32, -1);
  FASTBN_LAUNCH(dim3(3, 2), dim3(8, 4), 0, nullptr, geometry)(out.data());
  for (int b = 0; b < 6; ++b)
    for (int lin = 0; lin < 32; ++lin) CHECK_EQ(out[b * 32 + lin], 31 - lin + 100 * b);
}
