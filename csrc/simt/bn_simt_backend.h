// The "simt" CPU backend and the emulator controls the Python tests use (fastbn._C._simt_*).
#pragma once

#include <cstdint>
#include <string>

namespace fastbn::simt_control {

// Schedule orders: "forward", "reverse" or "random" (seeded), for threads and for blocks.
void set_schedule(const std::string& threads, const std::string& blocks, uint64_t seed);
// The simulated GPU: SM count, resident blocks per SM, dynamic shared memory per block.
void set_device(int sm_count, int max_blocks_per_sm, int64_t max_smem_per_block);
void reset_device();

struct TrafficTotals {
  uint64_t bytes_read, bytes_written, atomics, launches;
};
TrafficTotals traffic_since_reset();
void reset_traffic();

}  // namespace fastbn::simt_control
