// Cooperative launches and grid sync, the simulated device, and the emulator's speed.
#include <chrono>
#include <cstdio>
#include <vector>

#include "harness.h"

// The word fastbn_grid_sync needs (on a GPU it is device memory the launcher provides).
static unsigned test_grid_word = 0;

namespace {

constexpr int kThreads = 128;

// Each round: blocks publish partial sums, sync the grid, and every block reads them all.
__global__ void grid_rounds(const float* x, float* partial, float* out, int rounds) {
  __shared__ float s[kThreads];
  int b = int(blockIdx.x), t = int(threadIdx.x), nb = int(gridDim.x);
  for (int r = 0; r < rounds; ++r) {
    s[t] = fastbn::gload(x + b * kThreads + t) * float(r + 1);
    __syncthreads();
    if (t == 0) {
      float sum = 0;
      for (int i = 0; i < kThreads; ++i) sum += s[i];
      fastbn::gstore(partial + b, sum);
    }
    fastbn_grid_sync(&test_grid_word);
    float total = 0;
    for (int i = 0; i < nb; ++i) total += fastbn::gload(partial + i);
    if (t == 0) fastbn::gstore(out + r * nb + b, total);
    fastbn_grid_sync(&test_grid_word);  // nobody overwrites `partial` before every block has read it
  }
}

__global__ void grid_sync_kernel() { fastbn_grid_sync(&test_grid_word); }

__global__ void grid_exit_early() {
  if (blockIdx.x == 1) return;
  fastbn_grid_sync(&test_grid_word);
}

// Thread 0 of block 0 waits at a block barrier its block never reaches: the rest of the grid
// waits for it in the grid sync.
__global__ void grid_deadlock() {
  if (blockIdx.x == 0 && threadIdx.x == 0)
    __syncthreads();
  else
    fastbn_grid_sync(&test_grid_word);
}

__global__ void barriers(float* out, int rounds) {
  __shared__ float s[256];
  float v = float(threadIdx.x);
  for (int r = 0; r < rounds; ++r) {
    s[threadIdx.x] = v;
    __syncthreads();
    v += s[(threadIdx.x + 1) % blockDim.x];
    __syncthreads();
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

double run_ms(bool cooperative, int blocks, int rounds, std::vector<float>& out) {
  auto t0 = std::chrono::steady_clock::now();
  if (cooperative)
    FASTBN_LAUNCH_COOPERATIVE(blocks, 256, 0, nullptr, barriers)(out.data(), rounds);
  else
    FASTBN_LAUNCH(blocks, 256, 0, nullptr, barriers)(out.data(), rounds);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

SIMT_CASE(grid_sync_rounds_all_orders) {
  const int blocks = 8, rounds = 3;
  std::vector<float> x(blocks * kThreads);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 13);
  float base = 0;
  for (float v : x) base += v;
  for (simt::Order order : kOrders) {
    simt::ScopedSchedule schedule({order, order, 12});
    std::vector<float> partial(blocks), out(rounds * blocks, -1);
    FASTBN_LAUNCH_COOPERATIVE(blocks, kThreads, 0, nullptr, grid_rounds)(
        x.data(), partial.data(), out.data(), rounds);
    for (int r = 0; r < rounds; ++r)
      for (int b = 0; b < blocks; ++b) CHECK_EQ(out[r * blocks + b], base * float(r + 1));
  }
}

SIMT_CASE(grid_sync_outside_cooperative_launch_error) {
  EXPECT_ERROR(FASTBN_LAUNCH(2, 32, 0, nullptr, grid_sync_kernel)(), "fastbn_grid_sync",
               "not launched with FASTBN_LAUNCH_COOPERATIVE", "test_grid.cpp:");
}

SIMT_CASE(grid_sync_errors_in_cooperative_launch) {
  for (simt::Order order : {simt::Order::Forward, simt::Order::Reverse}) {
    simt::ScopedSchedule schedule({order, order, 0});
    EXPECT_ERROR(FASTBN_LAUNCH_COOPERATIVE(3, 32, 0, nullptr, grid_exit_early)(), "exited",
                 "fastbn_grid_sync", "every thread of the grid");
  }
  EXPECT_ERROR(FASTBN_LAUNCH_COOPERATIVE(2, 32, 0, nullptr, grid_deadlock)(), "deadlock",
               "block (0,0,0): threads [0] wait in __syncthreads",
               "threads [1-31] wait in fastbn_grid_sync", "block (1,0,0): threads [0-31] wait");
}

SIMT_CASE(device_props_and_occupancy) {
  simt::Device d;
  d.sm_count = 2;
  d.max_blocks_per_sm = 3;
  d.max_threads_per_sm = 2048;
  d.max_smem_per_sm = 100 * 1024;
  d.max_smem_per_block = 48 * 1024;
  simt::ScopedDevice device(d);
  CHECK_EQ(fastbn::device_sm_count(), 2);
  CHECK_EQ(fastbn::device_max_smem_per_block(), size_t(48 * 1024));
  CHECK_EQ(fastbn::max_active_blocks_per_sm(grid_sync_kernel, 256, 0), 3);
  CHECK_EQ(fastbn::max_active_blocks_per_sm(grid_sync_kernel, 1024, 0), 2);   // threads per SM
  CHECK_EQ(fastbn::max_active_blocks_per_sm(grid_sync_kernel, 64, 40 * 1024), 2);  // smem per SM
  CHECK_EQ(fastbn::max_active_blocks_per_sm(grid_sync_kernel, 64, 64 * 1024), 0);  // over a block's
  FASTBN_LAUNCH_COOPERATIVE(6, 256, 0, nullptr, grid_sync_kernel)();
  EXPECT_ERROR(FASTBN_LAUNCH_COOPERATIVE(7, 256, 0, nullptr, grid_sync_kernel)(),
               "cooperative launch too large", "7 blocks", "2 SMs x 3 blocks");
}

SIMT_CASE(speed_64_blocks_256_threads_10_barriers) {
  const int blocks = 64, rounds = 5;  // 2 barriers per round
  std::vector<float> a(blocks * 256), b(blocks * 256);
  simt::Device d;
  d.sm_count = 64;
  simt::ScopedDevice device(d);
  // The first launches grow the fiber stack pool (mmap + first touch); time warm launches.
  run_ms(false, blocks, rounds, a);
  run_ms(true, blocks, rounds, b);
  double ms_seq = run_ms(false, blocks, rounds, a);
  double ms_coop = run_ms(true, blocks, rounds, b);
  CHECK(a == b);
  std::printf("64 blocks x 256 threads x 10 barriers: %.1f ms (cooperative: %.1f ms)\n", ms_seq,
              ms_coop);
  CHECK(ms_seq < 2000 && ms_coop < 5000);  // generous: only catches pathological slowdowns
}
