// Shared memory (static and dynamic), atomics, traffic counting, address checks, exceptions.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "harness.h"

// The word fastbn_grid_sync needs (on a GPU it is device memory the launcher provides).
static unsigned test_grid_word = 0;

namespace {

// out[3b..3b+2]: what thread 0 saw before writing, the value every thread read back, and the
// count of threads that incremented the block's shared counter.
__global__ void static_smem(int* out) {
  __shared__ int value;
  __shared__ unsigned counter;
  if (threadIdx.x == 0) {
    out[3 * blockIdx.x] = value;
    value = 1000 + int(blockIdx.x);
    counter = 0;
  }
  __syncthreads();
  atomicAdd(&counter, 1u);
  int seen = value;
  __syncthreads();
  if (seen != 1000 + int(blockIdx.x)) out[3 * blockIdx.x + 1] = -1;
  if (threadIdx.x == 0) {
    out[3 * blockIdx.x + 1] = seen;
    out[3 * blockIdx.x + 2] = int(counter);
  }
}

// Cooperative: every block is resident, so per-block storage must survive other blocks running.
__global__ void static_smem_across_grid_sync(int* out) {
  __shared__ int value;
  if (threadIdx.x == 0) value = int(blockIdx.x) * 10;
  __syncthreads();
  fastbn_grid_sync(&test_grid_word);
  if (threadIdx.x == 0) out[blockIdx.x] = value;
}

// out[b]: bytes of dynamic shared memory that were not 0xFF at block start; out[nb + b]: size.
__global__ void dynamic_smem(int* out, int bytes, int blocks) {
  FASTBN_DYNAMIC_SMEM(unsigned char, buf);
  __syncthreads();
  if (threadIdx.x == 0) {
    int bad = 0;
    for (int i = 0; i < bytes; ++i) bad += buf[i] != 0xFF;
    out[blockIdx.x] = bad + (reinterpret_cast<uintptr_t>(buf) % 16 != 0 ? 1000 : 0);
    out[blocks + blockIdx.x] = int(simt::dynamic_smem_bytes());
  }
  __syncthreads();
  for (int i = threadIdx.x; i < bytes; i += blockDim.x) buf[i] = 0;  // the next block must not see this
}

__global__ void dynamic_smem_floats(float* out) {
  FASTBN_DYNAMIC_SMEM(float, s);
  out[threadIdx.x] = s[threadIdx.x];  // uninitialised: NaN
}

struct Counters {
  float f;
  double d;
  int i;
  unsigned u;
  unsigned long long ull;
  unsigned inc;
  int max, min;
  int cas_max;
  int exch;
};

__global__ void atomics(Counters* c) {
  int t = int(blockIdx.x * blockDim.x + threadIdx.x);
  atomicAdd(&c->f, 0.5f);
  atomicAdd(&c->d, 0.25);
  atomicAdd(&c->i, -1);
  atomicSub(&c->u, 2u);
  atomicAdd(&c->ull, 1ull << 33);
  atomicInc(&c->inc, 9u);  // wraps to 0 after 9
  atomicMax(&c->max, t);
  atomicMin(&c->min, -t);
  int old = c->cas_max, assumed;
  do {  // the classic CAS loop
    assumed = old;
    old = atomicCAS(&c->cas_max, assumed, assumed > 3 * t ? assumed : 3 * t);
  } while (old != assumed);
  atomicExch(&c->exch, 42);
}

__global__ void copy_vec4(const float* x, float* y, int n) {
  using V = fastbn::Vec<float, 4>;
  int t = int(blockIdx.x * blockDim.x + threadIdx.x);
  int stride = int(gridDim.x * blockDim.x);
  int nv = n / 4;
  for (int i = t; i < nv; i += stride)
    fastbn::gstore(reinterpret_cast<V*>(y) + i, fastbn::gload(reinterpret_cast<const V*>(x) + i));
  for (int i = 4 * nv + t; i < n; i += stride) fastbn::gstore(y + i, fastbn::gload_stream(x + i));
}

__global__ void misaligned_load(const float* x, float* y) {
  auto v = fastbn::gload(reinterpret_cast<const fastbn::Vec<float, 4>*>(x + 1));
  y[threadIdx.x] = v.v[0];
}

__global__ void null_store(float* y) { fastbn::gstore(y + threadIdx.x, 1.0f); }

struct KernelFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

__global__ void throws(int* out, int who) {
  __syncthreads();
  if (int(threadIdx.x) == who) throw KernelFailure("boom from thread " + std::to_string(who));
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Thread 0 spins on a flag thread 1 sets: a GPU might finish, the emulator never preempts.
__global__ void spin_wait(int* flag) {
  if (threadIdx.x == 0)
    while (atomicAdd(flag, 0) == 0) {
    }
  if (threadIdx.x == 1) atomicExch(flag, 1);
}

__global__ void nested_launch(int* out);
__global__ void nothing(int*) {}
__global__ void nested_launch(int* out) { FASTBN_LAUNCH(1, 1, 0, nullptr, nothing)(out); }

}  // namespace

SIMT_CASE(smem_static_is_per_block) {
  const int blocks = 5;
  for (simt::Order order : kOrders) {
    simt::ScopedSchedule schedule({order, order, 2});
    std::vector<int> out(3 * blocks, -7);
    FASTBN_LAUNCH(blocks, 96, 0, nullptr, static_smem)(out.data());
    for (int b = 0; b < blocks; ++b) {
      CHECK_EQ(out[3 * b], 0);  // a fresh block never sees another block's value
      CHECK_EQ(out[3 * b + 1], 1000 + b);
      CHECK_EQ(out[3 * b + 2], 96);
    }
  }
}

SIMT_CASE(smem_static_is_per_block_in_cooperative_launch) {
  const int blocks = 6;
  for (simt::Order order : kOrders) {
    simt::ScopedSchedule schedule({order, order, 4});
    std::vector<int> out(blocks, -1);
    FASTBN_LAUNCH_COOPERATIVE(blocks, 64, 0, nullptr, static_smem_across_grid_sync)(out.data());
    for (int b = 0; b < blocks; ++b) CHECK_EQ(out[b], 10 * b);
  }
}

SIMT_CASE(smem_dynamic_size_and_poison) {
  const int blocks = 3;
  for (int bytes : {0, 1, 100, 4096, 48 * 1024}) {
    std::vector<int> out(2 * blocks, -1);
    FASTBN_LAUNCH(blocks, 128, bytes, nullptr, dynamic_smem)(out.data(), bytes, blocks);
    for (int b = 0; b < blocks; ++b) {
      CHECK_EQ(out[b], 0);
      CHECK_EQ(out[blocks + b], bytes);
    }
  }
  std::vector<float> f(64);
  FASTBN_LAUNCH(1, 64, 64 * sizeof(float), nullptr, dynamic_smem_floats)(f.data());
  for (float v : f) CHECK(std::isnan(v));
}

SIMT_CASE(atomics_all_kinds) {
  const int blocks = 3, threads = 64, n = blocks * threads;
  for (simt::Order order : kOrders) {
    simt::ScopedSchedule schedule({order, order, 8});
    Counters c{};
    c.u = 1000;
    FASTBN_LAUNCH(blocks, threads, 0, nullptr, atomics)(&c);
    CHECK_EQ(c.f, 0.5f * n);
    CHECK_EQ(c.d, 0.25 * n);
    CHECK_EQ(c.i, -n);
    CHECK_EQ(c.u, 1000u - 2u * n);
    CHECK_EQ(c.ull, (unsigned long long)n << 33);
    CHECK_EQ(c.inc, unsigned(n % 10));
    CHECK_EQ(c.max, n - 1);
    CHECK_EQ(c.min, -(n - 1));
    CHECK_EQ(c.cas_max, 3 * (n - 1));
    CHECK_EQ(c.exch, 42);
    // Threads are not preempted, so every CAS loop succeeds at its first attempt.
    CHECK_EQ(simt::last_launch_traffic().atomics, uint64_t(n) * 10);
  }
}

SIMT_CASE(traffic_copy_counts_exact_bytes) {
  for (int n : {4096, 4096 + 3}) {
    std::vector<float> x(n), y(n, 0.0f);
    for (int i = 0; i < n; ++i) x[i] = float(i);
    simt::reset_traffic();
    FASTBN_LAUNCH(4, 256, 0, nullptr, copy_vec4)(x.data(), y.data(), n);
    CHECK(x == y);
    simt::Traffic t = simt::last_launch_traffic();
    CHECK_EQ(t.bytes_read, 4ull * n);
    CHECK_EQ(t.bytes_written, 4ull * n);
    CHECK_EQ(t.atomics, 0ull);
    CHECK_EQ(t.launches, 1ull);
    FASTBN_LAUNCH(4, 256, 0, nullptr, copy_vec4)(x.data(), y.data(), n);
    simt::Traffic total = simt::total_traffic();
    CHECK_EQ(total.bytes_read, 8ull * n);
    CHECK_EQ(total.launches, 2ull);
  }
  simt::reset_traffic();
  CHECK_EQ(simt::total_traffic().bytes_read, 0ull);
}

SIMT_CASE(memory_misaligned_and_null_errors) {
  alignas(16) float x[8] = {};
  float y[32];
  EXPECT_ERROR(FASTBN_LAUNCH(1, 32, 0, nullptr, misaligned_load)(x, y), "misaligned load",
               "16 bytes", "test_memory.cpp:");
  EXPECT_ERROR(FASTBN_LAUNCH(1, 32, 0, nullptr, null_store)(nullptr), "store of a null pointer");
}

SIMT_CASE(exception_in_kernel_propagates) {
  std::vector<int> out(64);
  for (simt::Order order : kOrders) {
    simt::ScopedSchedule schedule({order, order, 6});
    bool caught = false;
    try {
      FASTBN_LAUNCH(2, 64, 0, nullptr, throws)(out.data(), 37);
    } catch (const KernelFailure& e) {
      caught = std::string(e.what()) == "boom from thread 37";
    }
    CHECK(caught);
  }
  // The emulator is usable again afterwards.
  FASTBN_LAUNCH(2, 64, 0, nullptr, throws)(out.data(), -1);
  for (int v : out) CHECK_EQ(v, 1);
}

SIMT_CASE(watchdog_catches_spin_wait) {
  simt::Device d = simt::device();
  d.watchdog_ops = 10000;
  simt::ScopedDevice device(d);
  int flag = 0;
  EXPECT_ERROR(FASTBN_LAUNCH(1, 32, 0, nullptr, spin_wait)(&flag), "watchdog", "thread 0 ");
}

SIMT_CASE(launch_config_errors) {
  int out = 0;
  EXPECT_ERROR(FASTBN_LAUNCH(1, 2048, 0, nullptr, nothing)(&out), "too many threads per block");
  EXPECT_ERROR(FASTBN_LAUNCH(0, 32, 0, nullptr, nothing)(&out), "empty grid");
  EXPECT_ERROR(FASTBN_LAUNCH(1, 32, 64 * 1024, nullptr, nothing)(&out),
               "too much dynamic shared memory");
  EXPECT_ERROR(FASTBN_LAUNCH(1, 1, 0, nullptr, nested_launch)(&out), "from a kernel");
  EXPECT_ERROR(__syncthreads(), "outside a kernel");
}
