// Runs the CUDA kernels' entry points (kernels/bn_entry.h) on torch tensors: per-channel tensors
// in the accumulation dtype, scratch through ATen, empty batches. Shared by the CUDA backend and
// the SIMT backend, which differ only in their KernelTarget.
#pragma once

#include <vector>

#include "front/bn_args.h"
#include "kernels/bn_entry.h"

namespace fastbn {

struct KernelTarget {
  LaunchInfo (*forward_train)(const TrainLaunchArgs&, const DeviceAllocator&, void* stream);
  LaunchInfo (*forward_eval)(const EvalLaunchArgs&, void* stream);
  LaunchInfo (*backward)(const BackwardLaunchArgs&, const DeviceAllocator&, void* stream);
  void* (*current_stream)(const at::Tensor& like);
  // Zeroed counters reused across calls on the current stream (see DeviceAllocator).
  unsigned* (*counters)(const at::Tensor& like, size_t count);
};

void run_forward_train(const KernelTarget& target, const TrainForwardArgs& args);
void run_forward_eval(const KernelTarget& target, const EvalForwardArgs& args);
void run_backward(const KernelTarget& target, const BackwardArgs& args);

// What the kernels of the calls on this thread ran, oldest first; cleared by the call.
std::vector<LaunchInfo> take_launch_log();

}  // namespace fastbn
