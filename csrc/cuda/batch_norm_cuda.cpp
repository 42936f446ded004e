// The CUDA backend: the kernels of csrc/kernels on the tensor's device and current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <map>
#include <mutex>
#include <utility>

#include "front/backend.h"
#include "front/kernel_glue.h"

namespace fastbn {
namespace {

void* current_stream(const at::Tensor& like) {
  return c10::cuda::getCurrentCUDAStream(like.get_device()).stream();
}

// One zeroed counter buffer per (device, stream), allocated once (grown when a larger channel
// count needs more): the kernels reset the counters themselves, so there is no memset per call
// and the launches stay capturable in a CUDA graph.
unsigned* counters(const at::Tensor& like, size_t count) {
  static std::mutex mu;
  static std::map<std::pair<int, cudaStream_t>, at::Tensor> buffers;
  std::lock_guard<std::mutex> lock(mu);
  auto& buffer = buffers[{like.get_device(), c10::cuda::getCurrentCUDAStream(like.get_device()).stream()}];
  if (!buffer.defined() || buffer.numel() < int64_t(count))
    buffer = at::zeros({int64_t(std::max<size_t>(count, 1024))}, like.options().dtype(at::kInt));
  return reinterpret_cast<unsigned*>(buffer.data_ptr<int>());
}

const KernelTarget target{cuda_kernels::forward_train, cuda_kernels::forward_eval,
                          cuda_kernels::backward, current_stream, counters};

void forward_train(const TrainForwardArgs& a) {
  const c10::cuda::CUDAGuard guard(a.input.device());
  run_forward_train(target, a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();  // a bad launch configuration surfaces here, not later
}

void forward_eval(const EvalForwardArgs& a) {
  const c10::cuda::CUDAGuard guard(a.input.device());
  run_forward_eval(target, a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();  // a bad launch configuration surfaces here, not later
}

void backward(const BackwardArgs& a) {
  const c10::cuda::CUDAGuard guard(a.input.device());
  run_backward(target, a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();  // a bad launch configuration surfaces here, not later
}

}  // namespace

const Backend& cuda_backend() {
  static const Backend backend{"cuda", forward_train, forward_eval, backward};
  return backend;
}

}  // namespace fastbn
