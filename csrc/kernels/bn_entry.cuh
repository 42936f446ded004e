// Implementation of the entry points declared in bn_entry.h: dtype dispatch into the launch
// templates. Included once per target with FASTBN_ENTRY_NS set (cuda_kernels or simt_kernels).
#pragma once

#include "kernels/bn_entry.h"
#include "kernels/bn_launch.cuh"

#ifndef FASTBN_ENTRY_NS
#error "define FASTBN_ENTRY_NS before including bn_entry.cuh"
#endif

namespace fastbn {
namespace FASTBN_ENTRY_NS {
namespace {

template <typename F>
LaunchInfo with_type(DType dtype, const F& f) {
  switch (dtype) {
    case DType::Float: return f.template operator()<float>();
    case DType::Double: return f.template operator()<double>();
    case DType::Half: return f.template operator()<__half>();
    case DType::BFloat16: return f.template operator()<__nv_bfloat16>();
  }
  return f.template operator()<float>();
}

}  // namespace

LaunchInfo forward_train(const TrainLaunchArgs& a, const DeviceAllocator& alloc, void* stream) {
  return with_type(a.dtype, [&]<typename T>() {
    using A = acc_t<T>;
    const typename ForwardOp<T>::Params p{
        {static_cast<const T*>(a.input)}, static_cast<T*>(a.output),
        static_cast<const A*>(a.weight), static_cast<const A*>(a.bias),
        static_cast<A*>(a.running_mean), static_cast<A*>(a.running_var), a.num_batches_tracked,
        a.cumulative, a.momentum, a.eps, static_cast<A*>(a.save_mean),
        static_cast<A*>(a.save_invstd), static_cast<const T*>(a.residual), a.activation,
        static_cast<A>(a.negative_slope)};
    return launch_forward_train<T>(p, a.layout, alloc, stream);
  });
}

LaunchInfo forward_eval(const EvalLaunchArgs& a, void* stream) {
  return with_type(a.dtype, [&]<typename T>() {
    using A = acc_t<T>;
    const typename ForwardOp<T>::Params p{
        {static_cast<const T*>(a.input)}, static_cast<T*>(a.output),
        static_cast<const A*>(a.weight), static_cast<const A*>(a.bias),
        const_cast<A*>(static_cast<const A*>(a.running_mean)),
        const_cast<A*>(static_cast<const A*>(a.running_var)), nullptr, false, 0.0, a.eps,
        nullptr, nullptr, static_cast<const T*>(a.residual), a.activation,
        static_cast<A>(a.negative_slope)};
    return launch_forward_eval<T>(p, a.layout, stream);
  });
}

LaunchInfo backward(const BackwardLaunchArgs& a, const DeviceAllocator& alloc, void* stream) {
  return with_type(a.dtype, [&]<typename T>() {
    using A = acc_t<T>;
    const typename BackwardOp<T>::Params p{
        {static_cast<const T*>(a.input), static_cast<const T*>(a.grad_output)},
        static_cast<T*>(a.grad_input), static_cast<const A*>(a.weight),
        static_cast<const A*>(a.mean), static_cast<const A*>(a.invstd), a.training,
        static_cast<A*>(a.grad_weight), static_cast<A*>(a.grad_bias),
        static_cast<const A*>(a.bias), static_cast<const T*>(a.residual), a.activation,
        static_cast<A>(a.negative_slope), static_cast<T*>(a.grad_pre)};
    return launch_backward<T>(p, a.layout, alloc, stream);
  });
}

}  // namespace FASTBN_ENTRY_NS
}  // namespace fastbn
