// The one header every CUDA kernel template includes. Under nvcc it maps onto real CUDA; under
// g++ with -DFASTBN_SIMT it maps onto the SIMT emulator (csrc/simt), which runs the same kernels
// on the CPU in the test suite.
//
// Kernels use the standard CUDA device names (threadIdx, __syncthreads, __shfl_xor_sync,
// atomicAdd, __half, ...) plus fastbn's portable spellings below:
//   FASTBN_LAUNCH(grid, block, smem_bytes, stream, kernel<...>)(args...)
//   FASTBN_LAUNCH_COOPERATIVE(grid, block, smem_bytes, stream, kernel<...>)(args...)
//   fastbn_grid_sync(unsigned* word)         grid-wide barrier, cooperative launches only; the
//                                            word is this barrier's alone (bit 31 flips)
//   FASTBN_DYNAMIC_SMEM(T, name);            T* name = the block's dynamic shared memory
//   fastbn::gload(p) / gload_stream(p) / gstore(p, v)   every global-memory access
//   fastbn::Vec<T, N>                        aligned vector for 8/16-byte accesses
//   fastbn::device_sm_count(), device_max_smem_per_block(),
//   fastbn::max_active_blocks_per_sm(kernel<...>, block_threads, smem_bytes)
// Launch errors: under nvcc check cudaGetLastError() after either launch macro; the emulator
// throws simt::Error from the launch itself.
#pragma once

#include "target.h"

#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__)

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#elif defined(FASTBN_SIMT)

// CUDA's host_defines.h turns __shared__ into an ignored attribute under g++, which would make
// `__shared__ float s[N]` a per-thread array. Per OS thread is per block in the emulator (see
// csrc/simt/launch.h). This must come before any CUDA header.
#undef __shared__
#define __shared__ static thread_local
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../simt/cuda_api.h"

#else
#error "device_compat.cuh: compile with nvcc, or with g++ -DFASTBN_SIMT for the SIMT emulator"
#endif

namespace fastbn {
inline namespace FASTBN_TARGET_NS {

// N elements moved as one access; 16-byte ones become 128-bit loads on the GPU.
template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

#if defined(__CUDACC__)

#define FASTBN_LAUNCH(grid, block, smem_bytes, stream, ...) \
  __VA_ARGS__<<<(grid), (block), (smem_bytes), (stream)>>>
#define FASTBN_LAUNCH_COOPERATIVE(grid, block, smem_bytes, stream, ...) \
  ::fastbn::detail::cooperative_launcher((grid), (block), (smem_bytes), (stream), __VA_ARGS__)
// Aligned for 16-byte vectors; one array name shared by every kernel, as nvcc requires.
#define FASTBN_DYNAMIC_SMEM(T, name)                                     \
  extern __shared__ __align__(16) unsigned char fastbn_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(fastbn_dynamic_smem_)

template <class T>
__device__ __forceinline__ T gload(const T* p) {
  return *p;
}

template <class T>
__device__ __forceinline__ void gstore(T* p, const T& v) {
  *p = v;
}

namespace detail {
// A type __ldcs accepts with T's size, or void when T's alignment does not allow one.
template <class T>
using ldcs_carrier = std::conditional_t<
    sizeof(T) == 16 && alignof(T) >= 16, int4,
    std::conditional_t<
        sizeof(T) == 8 && alignof(T) >= 8, int2,
        std::conditional_t<
            sizeof(T) == 4 && alignof(T) >= 4, unsigned int,
            std::conditional_t<sizeof(T) == 2 && alignof(T) >= 2, unsigned short,
                               std::conditional_t<sizeof(T) == 1, unsigned char, void>>>>>;
}  // namespace detail

// Last use of the data: a streaming load that does not keep the line in cache.
template <class T>
__device__ __forceinline__ T gload_stream(const T* p) {
  using C = detail::ldcs_carrier<T>;
  if constexpr (std::is_void_v<C>) {
    return *p;
  } else {
    C c = __ldcs(reinterpret_cast<const C*>(p));
    T out;
    memcpy(&out, &c, sizeof(T));
    return out;
  }
}

inline int device_sm_count() {
  int dev = 0, n = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  return n;
}

inline size_t device_max_smem_per_block() {
  int dev = 0, n = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlock, dev);
  return size_t(n);
}

template <class... P>
int max_active_blocks_per_sm(void (*kernel)(P...), int block_threads, size_t smem_bytes) {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, block_threads, smem_bytes) !=
      cudaSuccess)
    return 0;
  return n;
}

namespace detail {
template <class... P>
struct CooperativeLauncher {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem_bytes;
  cudaStream_t stream;

  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    std::apply(
        [&](auto&... p) {
          void* ptrs[] = {static_cast<void*>(&p)..., nullptr};
          // The error, if any, is also what cudaGetLastError() returns next.
          (void)cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block,
                                            ptrs, smem_bytes, stream);
        },
        params);
  }
};

template <class... P>
CooperativeLauncher<P...> cooperative_launcher(dim3 grid, dim3 block, size_t smem_bytes,
                                               cudaStream_t stream, void (*kernel)(P...)) {
  return {kernel, grid, block, smem_bytes, stream};
}
}  // namespace detail

}  // namespace FASTBN_TARGET_NS
}  // namespace fastbn

// Grid-wide barrier of a cooperative launch on a caller-provided word that needs no memset
// between calls: every block adds 1 except block 0, which adds 2^31 − (blocks − 1), so the sum
// flips bit 31 exactly when the last block arrives and leaves the low bits as they were. The
// word must serve no other purpose. This is
// cooperative_groups' scheme; its this_grid().sync() also fetches a driver handle whose stack
// frame made ptxas report spills on sm_120.
__device__ __forceinline__ void fastbn_grid_sync(unsigned* barrier) {
  __syncthreads();
  if (threadIdx.x + threadIdx.y + threadIdx.z == 0) {
    const unsigned blocks = gridDim.x * gridDim.y * gridDim.z;
    const unsigned add = blockIdx.x + blockIdx.y + blockIdx.z == 0 ? 0x80000000u - (blocks - 1) : 1u;
    unsigned old, now;
    // Release our writes with the arrival, acquire the others' with the poll (sm_70+).
    asm volatile("atom.add.release.gpu.u32 %0, [%1], %2;" : "=r"(old) : "l"(barrier), "r"(add) : "memory");
    do {
      asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(now) : "l"(barrier) : "memory");
    } while (((old ^ now) & 0x80000000u) == 0);
  }
  __syncthreads();
}

#else  // FASTBN_SIMT

// The stream is evaluated and ignored: the emulator runs every launch synchronously.
#define FASTBN_LAUNCH(grid, block, smem_bytes, stream, ...) \
  (static_cast<void>(stream), ::simt::launch((grid), (block), (smem_bytes), __VA_ARGS__))
#define FASTBN_LAUNCH_COOPERATIVE(grid, block, smem_bytes, stream, ...) \
  (static_cast<void>(stream),                                          \
   ::simt::launch_cooperative((grid), (block), (smem_bytes), __VA_ARGS__))
#define FASTBN_DYNAMIC_SMEM(T, name) T* name = static_cast<T*>(::simt::dynamic_smem())

template <class T>
T gload(const T* p, simt::Site site = simt::Site::here()) {
  return simt::load(p, site);
}

template <class T>
T gload_stream(const T* p, simt::Site site = simt::Site::here()) {
  return simt::load(p, site);
}

template <class T>
void gstore(T* p, const T& v, simt::Site site = simt::Site::here()) {
  simt::store(p, v, site);
}

inline int device_sm_count() { return simt::device().sm_count; }

inline size_t device_max_smem_per_block() { return simt::device().max_smem_per_block; }

template <class... P>
int max_active_blocks_per_sm(void (*)(P...), int block_threads, size_t smem_bytes) {
  return simt::max_active_blocks_per_sm(block_threads, smem_bytes);
}

}  // namespace FASTBN_TARGET_NS
}  // namespace fastbn

// The emulator's own grid barrier (blocks do not run concurrently, so the GPU's spin on
// `barrier` would never end); the word is still required, as on the GPU.
inline void fastbn_grid_sync(unsigned* barrier, simt::Site site = simt::Site::here()) {
  if (barrier == nullptr) throw simt::Error("fastbn_grid_sync: null barrier word at " + site.str());
  simt::detail::grid_barrier(site);
}

#endif
