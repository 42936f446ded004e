// Runs the kernels nvcc also compiles (nvcc_probe.cu) under the emulator.
#include <vector>

#include "harness.h"
#include "nvcc_probe.cu"

SIMT_CASE(nvcc_probe_runs_in_emulator) {
  simt::Device d;
  d.sm_count = 3;
  d.max_blocks_per_sm = 2;
  simt::ScopedDevice device(d);
  const int n = 1000 + 3;
  std::vector<float> x(n), y(n), partial(6);
  float total = -1;
  float expect = 0;
  for (int i = 0; i < n; ++i) expect += x[i] = float(i % 7);
  simt::reset_traffic();
  unsigned grid_word = 0;
  probe::run(x.data(), y.data(), partial.data(), &total, n, &grid_word);
  for (int i = 0; i < n; ++i) CHECK_EQ(y[i], 2 * x[i]);
  CHECK_EQ(total, expect);
  simt::Traffic t = simt::total_traffic();
  CHECK_EQ(t.launches, 2ull);
  CHECK_EQ(t.bytes_read, 4ull * n + 4ull * n + 6 * 4);  // scale, grid_sum, partials
  CHECK_EQ(t.bytes_written, 4ull * n + 6 * 4 + 4);
}
