// Type-erased entry points of the CUDA kernels, callable from ordinary C++ (the torch glue in
// csrc/cuda and csrc/simt) without CUDA or kernel headers. Implemented by bn_entry.cuh, which
// is compiled twice: by nvcc (namespace cuda_kernels) and by g++ under the SIMT emulator
// (namespace simt_kernels).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/bn_layout.h"

namespace fastbn {

enum class DType { Float, Double, Half, BFloat16 };

// Per-channel pointers (weight, bias, statistics, gradients of weight and bias) are contiguous
// in the accumulation type: float, or double for double input. Null = absent / not wanted.
struct TrainLaunchArgs {
  Layout layout;
  DType dtype;
  const void* input;
  void* output;
  const void *weight, *bias;
  void *running_mean, *running_var;
  const int64_t* num_batches_tracked;
  bool cumulative;
  double momentum, eps;
  void *save_mean, *save_invstd;
  // Fused after the normalization: y = act(bn(x) + residual) (residual: input's layout, or null;
  // activation: bn_math.h's Act).
  const void* residual;
  int activation;
  double negative_slope;
};

struct EvalLaunchArgs {
  Layout layout;
  DType dtype;
  const void* input;
  void* output;
  const void *weight, *bias, *running_mean, *running_var;
  double eps;
  const void* residual;
  int activation;
  double negative_slope;
};

struct BackwardLaunchArgs {
  Layout layout;
  DType dtype;
  const void *grad_output, *input;
  void* grad_input;
  const void *weight, *mean, *invstd;
  bool training;
  void *grad_weight, *grad_bias;
  // With an activation: the forward's bias and residual (to recompute the activation's input)
  // and where g = dy·act'(z) goes (input's layout); the dx pass then reads g.
  const void *bias, *residual;
  int activation;
  double negative_slope;
  void* grad_pre;
};

// Device memory from the caller (ATen's caching allocator on the GPU).
struct DeviceAllocator {
  void* ctx;
  // Scratch that lives until the launches of this call have completed (stream-ordered).
  void* (*scratch)(void* ctx, size_t bytes);
  // At least `count` counters, zeroed once and reused by every call on this stream: the
  // kernels leave them at zero again.
  unsigned* (*counters)(void* ctx, size_t count);
};

// Which kernels a call ran (tests check that each path is exercised).
enum class Path { Persistent, TwoKernels, ApplyOnly };

struct LaunchInfo {
  Path path;
  int vec;     // elements per vector access
  int splits;  // blocks per channel tile
};

#define FASTBN_DECLARE_KERNEL_ENTRY_POINTS(ns)                                                   \
  namespace ns {                                                                                 \
  LaunchInfo forward_train(const TrainLaunchArgs&, const DeviceAllocator&, void* stream);       \
  LaunchInfo forward_eval(const EvalLaunchArgs&, void* stream);                                  \
  LaunchInfo backward(const BackwardLaunchArgs&, const DeviceAllocator&, void* stream);          \
  }

FASTBN_DECLARE_KERNEL_ENTRY_POINTS(cuda_kernels)
FASTBN_DECLARE_KERNEL_ENTRY_POINTS(simt_kernels)

}  // namespace fastbn
