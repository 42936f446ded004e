#include "front/kernel_glue.h"

#include <ATen/ATen.h>

namespace fastbn {
namespace {

thread_local std::vector<LaunchInfo> launch_log;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return DType::Double;
    case at::kHalf: return DType::Half;
    case at::kBFloat16: return DType::BFloat16;
    default: return DType::Float;
  }
}

// Per-channel tensors as the kernels take them: contiguous, in the accumulation dtype. Written
// ones that needed a copy are copied back by write_back() after the launch (stream-ordered).
struct PerChannel {
  explicit PerChannel(at::ScalarType acc_dtype) : acc(acc_dtype) {}
  at::ScalarType acc;
  std::vector<std::pair<at::Tensor, at::Tensor>> to_write_back;  // (user tensor, working copy)

  const void* in(const std::optional<at::Tensor>& t) {
    if (!t.has_value() || !t->defined()) return nullptr;
    return t->scalar_type() == acc && t->is_contiguous() ? t->data_ptr() : keep(t->to(acc).contiguous());
  }
  void* out(const std::optional<at::Tensor>& t, bool read_too) {
    if (!t.has_value() || !t->defined()) return nullptr;
    if (t->scalar_type() == acc && t->is_contiguous()) return t->data_ptr();
    at::Tensor work = read_too ? t->to(acc).contiguous() : at::empty(t->sizes(), t->options().dtype(acc));
    to_write_back.emplace_back(*t, work);
    return work.data_ptr();
  }
  void write_back() {
    for (auto& [user, work] : to_write_back) user.copy_(work);
  }

 private:
  std::vector<at::Tensor> kept;
  const void* keep(at::Tensor t) {
    kept.push_back(std::move(t));
    return kept.back().data_ptr();
  }
};

const void* residual_ptr(const FusedEpilogue& f) {
  return f.residual.has_value() ? f.residual->data_ptr() : nullptr;
}

// Scratch tensors live until the end of the call; the caching allocator makes their reuse
// stream-ordered on the GPU.
struct Allocator {
  const KernelTarget& target;
  const at::Tensor& like;
  std::vector<at::Tensor> scratch;

  DeviceAllocator handle() {
    return {this,
            [](void* self, size_t bytes) -> void* {
              auto* a = static_cast<Allocator*>(self);
              a->scratch.push_back(at::empty({int64_t(bytes)}, a->like.options().dtype(at::kByte)));
              return a->scratch.back().data_ptr();
            },
            [](void* self, size_t count) {
              auto* a = static_cast<Allocator*>(self);
              return a->target.counters(a->like, count);
            }};
  }
};

}  // namespace

void run_forward_train(const KernelTarget& target, const TrainForwardArgs& a) {
  if (a.layout.per_channel() == 0 || a.layout.C == 0) {  // empty batch: running stats untouched
    a.save_mean.zero_();
    a.save_invstd.zero_();
    return;
  }
  PerChannel pc(a.save_mean.scalar_type());
  const TrainLaunchArgs args{a.layout, dtype_of(a.input), a.input.data_ptr(), a.output.data_ptr(),
                             pc.in(a.weight), pc.in(a.bias), pc.out(a.running_mean, true),
                             pc.out(a.running_var, true),
                             a.num_batches_tracked ? a.num_batches_tracked->data_ptr<int64_t>() : nullptr,
                             a.cumulative, a.momentum, a.eps, a.save_mean.data_ptr(),
                             a.save_invstd.data_ptr(), residual_ptr(a.fused),
                             a.fused.activation, a.fused.negative_slope};
  Allocator alloc{target, a.input};
  launch_log.push_back(target.forward_train(args, alloc.handle(), target.current_stream(a.input)));
  pc.write_back();
}

void run_forward_eval(const KernelTarget& target, const EvalForwardArgs& a) {
  if (a.input.numel() == 0) return;
  PerChannel pc(a.input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const EvalLaunchArgs args{a.layout, dtype_of(a.input), a.input.data_ptr(), a.output.data_ptr(),
                            pc.in(a.weight), pc.in(a.bias), pc.in(a.running_mean),
                            pc.in(a.running_var), a.eps, residual_ptr(a.fused),
                            a.fused.activation, a.fused.negative_slope};
  launch_log.push_back(target.forward_eval(args, target.current_stream(a.input)));
}

void run_backward(const KernelTarget& target, const BackwardArgs& a) {
  if (a.input.numel() == 0) {  // nothing to reduce: the sums are zero
    if (a.grad_weight.defined()) a.grad_weight.zero_();
    if (a.grad_bias.defined()) a.grad_bias.zero_();
    return;
  }
  PerChannel pc(a.mean.scalar_type());
  const BackwardLaunchArgs args{a.layout, dtype_of(a.input), a.grad_output.data_ptr(),
                                a.input.data_ptr(),
                                a.grad_input.defined() ? a.grad_input.data_ptr() : nullptr,
                                pc.in(a.weight), pc.in(a.mean), pc.in(a.invstd), a.training,
                                pc.out(a.grad_weight, false), pc.out(a.grad_bias, false),
                                pc.in(a.bias), residual_ptr(a.fused), a.fused.activation,
                                a.fused.negative_slope,
                                a.grad_pre.defined() ? a.grad_pre.data_ptr() : nullptr};
  Allocator alloc{target, a.input};
  launch_log.push_back(target.backward(args, alloc.handle(), target.current_stream(a.input)));
  pc.write_back();
}

std::vector<LaunchInfo> take_launch_log() {
  std::vector<LaunchInfo> out;
  out.swap(launch_log);
  return out;
}

}  // namespace fastbn
