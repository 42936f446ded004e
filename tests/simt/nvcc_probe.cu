// One source for both compilers: nvcc -c compiles it against real CUDA (tests/test_simt_emulator.py
// checks that device_compat.cuh works there), and test_probe.cpp includes it into the emulator's
// test binary and runs it. It uses every portable spelling of device_compat.cuh.
#include "kernels/device_compat.cuh"

namespace probe {

constexpr int kBlock = 128;

// y = alpha * x with 16-byte vectors and a scalar tail.
template <class T>
__global__ void scale(const T* __restrict__ x, T* __restrict__ y, int n, T alpha) {
  using V = fastbn::Vec<T, 4>;
  int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (4 * i + 3 < n) {
    V v = fastbn::gload(reinterpret_cast<const V*>(x) + i);
    for (int k = 0; k < 4; ++k) v.v[k] *= alpha;
    fastbn::gstore(reinterpret_cast<V*>(y) + i, v);
  } else {
    for (int k = 4 * i; k < n && k < 4 * i + 4; ++k) fastbn::gstore(y + k, fastbn::gload(x + k) * alpha);
  }
}

// Sum of x over a persistent grid: block partials in dynamic + static shared memory and warp
// shuffles, then a grid sync, then block 0 adds the partials.
template <int BLOCK>
__global__ void grid_sum(const float* __restrict__ x, float* partial, float* total, int n, unsigned* grid_word) {
  FASTBN_DYNAMIC_SMEM(float, per_thread);
  __shared__ float per_warp[BLOCK / 32];
  float acc = 0.0f;
  for (int i = int(blockIdx.x * BLOCK + threadIdx.x); i < n; i += int(gridDim.x * BLOCK))
    acc += fastbn::gload_stream(x + i);
  per_thread[threadIdx.x] = acc;
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (threadIdx.x % 32 == 0) per_warp[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int w = 0; w < BLOCK / 32; ++w) s += per_warp[w];
    fastbn::gstore(partial + blockIdx.x, s);
  }
  fastbn_grid_sync(grid_word);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    float s = 0.0f;
    for (unsigned b = 0; b < gridDim.x; ++b) s += fastbn::gload(partial + b);
    fastbn::gstore(total, s);
  }
}

// Host side: y = 2x, *total = sum(x). `partial` holds one float per SM x resident block.
void run(const float* x, float* y, float* partial, float* total, int n, unsigned* grid_word) {
  FASTBN_LAUNCH((n / 4 + kBlock) / kBlock, kBlock, 0, nullptr, scale<float>)(x, y, n, 2.0f);
  size_t smem = kBlock * sizeof(float);
  int per_sm = fastbn::max_active_blocks_per_sm(grid_sum<kBlock>, kBlock, smem);
  int blocks = per_sm * fastbn::device_sm_count();
  FASTBN_LAUNCH_COOPERATIVE(blocks, kBlock, smem, nullptr, grid_sum<kBlock>)(x, partial, total, n, grid_word);
}

}  // namespace probe
