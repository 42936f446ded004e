// Autograd for the fastbn ops, in C++ so that the training forward can mutate the running
// statistics in place (torch.library.register_autograd only takes functional ops) — the same
// model as aten::_native_batch_norm_legit. Backward goes through fastbn::batch_norm_backward.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <string>

#include "front/checks.h"
#include "front/op_handles.h"

namespace fastbn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

OptTensor optional_of(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

at::Tensor undefined_if_empty_mask(const at::Tensor& grad, bool wanted) {
  return wanted ? grad : at::Tensor();
}

// fastbn has no forward-mode derivative (jvp). Refused before the op runs: Function::apply
// would raise only after the forward (with the running statistics already updated), and the
// shortcut below autograd (needs_graph) would drop the tangent silently.
void check_no_forward_ad(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias) {
  using torch::autograd::isFwGradDefined;
  TORCH_CHECK(!isFwGradDefined(input) && !isFwGradDefined(weight) && !isFwGradDefined(bias),
              "fastbn: forward-mode AD (dual tensors, jvp) is not supported; use "
              "torch.nn.BatchNorm for it");
}

// Whether a call goes through Function::apply: grad mode on and a differentiable argument
// that requires grad. Otherwise the forward goes straight below autograd, without
// Function::apply's bookkeeping (a few µs, most of a kilobyte-sized eval call).
bool needs_graph(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias) {
  if (!at::GradMode::is_enabled()) return false;
  auto wants_grad = [](const OptTensor& t) {
    return t.has_value() && t->defined() && t->requires_grad();
  };
  return input.requires_grad() || wants_grad(weight) || wants_grad(bias);
}

// The training op mutates these in place (its schema says so): their version counters are
// bumped, as the ADInplaceOrView kernel that the dispatch below autograd skips would, so that
// autograd notices if one of them was saved for a backward. (torch.nn bumps
// num_batches_tracked's through its add_.)
void bump_versions(std::initializer_list<const OptTensor*> mutated) {
  for (const OptTensor* t : mutated)
    if (t->has_value() && (*t)->defined()) torch::autograd::impl::bump_version(**t);
}

// Shared by training and eval: the saved tensors are (input, weight, mean, invstd).
// Returns one entry per argument of the forward (num_args; the gradients first).
variable_list run_backward(AutogradContext* ctx, const at::Tensor& grad_output, bool training,
                           size_t num_args) {
  const auto saved = ctx->get_saved_variables();
  const at::Tensor& input = saved[0];
  const at::Tensor& weight = saved[1];
  at::Tensor mean = saved[2], invstd = saved[3];
  if (!training) {  // saved running stats; fold eps here so that eval forward does no extra work
    const auto stats = stats_dtype(input.scalar_type());
    mean = mean.to(stats);
    invstd = (invstd.to(stats) + ctx->saved_data["eps"].toDouble()).rsqrt();
  }
  // needs_input_grad counts only the tensor arguments that were given: without a weight, the
  // bias is the second.
  const size_t bias_edge = weight.defined() ? 2 : 1;
  const std::array<bool, 3> mask = {
      ctx->needs_input_grad(0), weight.defined() && ctx->needs_input_grad(1),
      ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(bias_edge)};
  variable_list grads(num_args);  // sized once: a small call feels every allocation
  if (!grad_output.defined()) return grads;
  // Under create_graph (grad mode on) this dispatches through autograd to BackwardFunction
  // below, which makes a second differentiation fail loudly instead of silently; otherwise it
  // goes straight to the device kernel (about 1 µs less per call).
  std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
  if (!at::GradMode::is_enabled()) below_autograd.emplace();
  auto [dx, dw, db] = backward_op().call(grad_output, input, optional_of(weight), mean, invstd,
                                         training, mask);
  grads[0] = undefined_if_empty_mask(dx, mask[0]);
  grads[1] = undefined_if_empty_mask(dw, mask[1]);
  grads[2] = undefined_if_empty_mask(db, mask[2]);
  return grads;
}

struct TrainFunction : public torch::autograd::Function<TrainFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const OptTensor& weight, const OptTensor& bias,
                               const OptTensor& running_mean, const OptTensor& running_var,
                               const OptTensor& num_batches_tracked,
                               std::optional<double> momentum, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mean, invstd] = train_op().call(input, weight, bias, running_mean, running_var,
                                             num_batches_tracked, momentum, eps);
    bump_versions({&running_mean, &running_var, &num_batches_tracked});
    ctx->save_for_backward({input, weight.value_or(at::Tensor()), mean, invstd});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->mark_non_differentiable({mean, invstd});
    // The saved statistics never get a gradient: no zero tensors materialized for them.
    ctx->set_materialize_grads(false);
    return {y, mean, invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return run_backward(ctx, grads[0], /*training=*/true, /*num_args=*/8);
  }
};

struct EvalFunction : public torch::autograd::Function<EvalFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const OptTensor& weight, const OptTensor& bias,
                               const at::Tensor& running_mean, const at::Tensor& running_var,
                               double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = eval_op().call(input, weight, bias, running_mean, running_var, eps);
    ctx->save_for_backward({input, weight.value_or(at::Tensor()), running_mean, running_var});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["eps"] = eps;
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return run_backward(ctx, grads[0], /*training=*/false, /*num_args=*/6);
  }
};

// Only reached when a graph of the backward was requested (create_graph=True).
struct BackwardFunction : public torch::autograd::Function<BackwardFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& input, const OptTensor& weight,
                               const at::Tensor& mean, const at::Tensor& invstd, bool training,
                               std::array<bool, 3> mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [dx, dw, db] = backward_op().call(grad_output, input, weight, mean, invstd, training, mask);
    return {dx, dw, db};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, "fastbn: double backward (the gradient of batch norm's gradient) is not "
                "supported; use torch.nn.BatchNorm for second-order derivatives");
  }
};

}  // namespace
}  // namespace fastbn

// CppNode<F>::apply as torch 2.14 defines it (custom_function.h), but with the node's name
// computed once per process: torch's passes name() to CppNode_apply_functional on every call
// (for its error messages), and Node::name() demangles the type's name each time: about 4k
// instructions, a tenth of what a kilobyte-sized backward executes in the autograd engine.
// Explicit specializations, so they must precede the first Function<F>::apply below; on a
// torch upgrade, compare with its CppNode<T>::apply.
#define FASTBN_CPP_NODE_APPLY(F)                                                              \
  template <>                                                                                 \
  torch::autograd::variable_list torch::autograd::CppNode<F>::apply(                          \
      torch::autograd::variable_list&& inputs) {                                              \
    std::lock_guard<std::mutex> lock(mutex_);                                                 \
    static const std::string node_name = name();                                              \
    return CppNode_apply_functional<F>(std::move(inputs), ctx_, is_variable_input_,           \
                                       output_info_, node_name);                              \
  }
FASTBN_CPP_NODE_APPLY(fastbn::TrainFunction)
FASTBN_CPP_NODE_APPLY(fastbn::EvalFunction)
FASTBN_CPP_NODE_APPLY(fastbn::BackwardFunction)
#undef FASTBN_CPP_NODE_APPLY

namespace fastbn {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> train_autograd(
    const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& running_mean, const OptTensor& running_var,
    const OptTensor& num_batches_tracked, std::optional<double> momentum, double eps) {
  // Checked here too: this kernel runs before the dispatcher picks a device, so a tensor on the
  // wrong device gets fastbn's message rather than "could not run ... with the 'X' backend".
  check_forward_args(input, weight, bias, running_mean, running_var, num_batches_tracked,
                     /*training=*/true, /*cumulative=*/!momentum.has_value());
  check_no_forward_ad(input, weight, bias);
  if (!needs_graph(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto out = train_op().call(input, weight, bias, running_mean, running_var,
                               num_batches_tracked, momentum, eps);
    bump_versions({&running_mean, &running_var, &num_batches_tracked});
    return out;
  }
  auto out = TrainFunction::apply(input, weight, bias, running_mean, running_var,
                                  num_batches_tracked, momentum, eps);
  return {out[0], out[1], out[2]};
}

at::Tensor eval_autograd(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                         const at::Tensor& running_mean, const at::Tensor& running_var,
                         double eps) {
  check_forward_args(input, weight, bias, running_mean, running_var, std::nullopt,
                     /*training=*/false, /*cumulative=*/false);
  check_no_forward_ad(input, weight, bias);
  if (!needs_graph(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return eval_op().call(input, weight, bias, running_mean, running_var, eps);
  }
  return EvalFunction::apply(input, weight, bias, running_mean, running_var, eps)[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const OptTensor& weight,
    const at::Tensor& mean, const at::Tensor& invstd, bool training, std::array<bool, 3> mask) {
  auto out = BackwardFunction::apply(grad_output, input, weight, mean, invstd, training, mask);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastbn, Autograd, m) {
  m.impl("batch_norm_train", &train_autograd);
  m.impl("batch_norm_eval", &eval_autograd);
  m.impl("batch_norm_backward", &backward_autograd);
}

}  // namespace fastbn
