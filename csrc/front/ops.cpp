// Operator schemas and the backend-facing implementations: check, bring into a Layout, allocate,
// hand to the backend chosen for this device. One schema set serves every backend.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <torch/library.h>

#include "front/backend.h"
#include "front/checks.h"

namespace fastbn {
namespace {

bool defined(const OptTensor& t) { return t.has_value() && t->defined(); }

// Outputs. On the CPU straight from the allocator: at::empty and at::empty_like go through the
// dispatcher, about 0.3 µs each, which a kilobyte-sized call feels.
at::Tensor new_like(const at::Tensor& x) {  // x dense (canonical_input)
  if (x.is_cpu()) return at::detail::empty_strided_cpu(x.sizes(), x.strides(), x.scalar_type());
  return at::empty_like(x);
}

at::Tensor new_vector(int64_t n, const at::TensorOptions& options) {
  if (options.device().is_cpu()) return at::detail::empty_cpu({n}, options);
  return at::empty({n}, options);
}

// The residual and activation as the backends take them: the residual in x's layout.
FusedEpilogue fused_epilogue(const at::Tensor& x, const OptTensor& residual, int64_t activation,
                             double negative_slope) {
  FusedEpilogue e;
  if (defined(residual)) e.residual = match_layout(*residual, x);
  e.activation = int(activation);
  e.negative_slope = negative_slope;
  return e;
}

// A rejected call must not touch any state, so every check runs before the counter moves.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_train(
    const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& running_mean, const OptTensor& running_var,
    const OptTensor& num_batches_tracked, std::optional<double> momentum, double eps,
    const OptTensor& residual, int64_t activation, double negative_slope) {
  check_forward_args(input, weight, bias, running_mean, running_var, num_batches_tracked,
                     /*training=*/true, /*cumulative=*/!momentum.has_value());
  check_fused_args(input, residual, activation);
  const at::Tensor x = canonical_input(input);
  const Layout layout = layout_of(x);
  const auto stats = input.options().dtype(stats_dtype(input.scalar_type()));
  TrainForwardArgs args{layout, x, new_like(x), weight, bias,
                        // An empty batch has no statistics: running stats stay as they were.
                        layout.per_channel() > 0 ? running_mean : std::nullopt,
                        layout.per_channel() > 0 ? running_var : std::nullopt,
                        num_batches_tracked, !momentum.has_value(), momentum.value_or(0.0), eps,
                        new_vector(layout.C, stats), new_vector(layout.C, stats),
                        fused_epilogue(x, residual, activation, negative_slope)};
  if (defined(num_batches_tracked)) {
    // On the CPU a direct increment: add_ is a whole dispatch, a noticeable part of a call on a
    // kilobyte-sized input. (Like the running stats, the counter's version is not bumped: add_
    // here runs below autograd and did not bump it either.)
    if (num_batches_tracked->is_cpu()) ++*num_batches_tracked->data_ptr<int64_t>();
    else num_batches_tracked->add_(1);
  }
  backend_for(x).forward_train(args);
  return {args.output, args.save_mean, args.save_invstd};
}

at::Tensor batch_norm_eval(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                           const at::Tensor& running_mean, const at::Tensor& running_var,
                           double eps, const OptTensor& residual, int64_t activation,
                           double negative_slope) {
  check_forward_args(input, weight, bias, running_mean, running_var, std::nullopt,
                     /*training=*/false, /*cumulative=*/false);
  check_fused_args(input, residual, activation);
  const at::Tensor x = canonical_input(input);
  EvalForwardArgs args{layout_of(x), x, new_like(x), weight, bias, running_mean, running_var,
                       eps, fused_epilogue(x, residual, activation, negative_slope)};
  backend_for(x).forward_eval(args);
  return args.output;
}

// With an activation, g = dy·act'(z) is the residual's gradient: the kernels write it where
// BackwardArgs::grad_pre says. Without one, the residual's gradient is grad_output itself (a
// copy here: an operator's output must not alias its input; the autograd node passes
// grad_output on without calling this).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const OptTensor& weight,
    const at::Tensor& mean, const at::Tensor& invstd, bool training,
    std::array<bool, 3> output_mask, const OptTensor& bias, const OptTensor& residual,
    int64_t activation, double negative_slope, bool residual_grad) {
  check_backward_args(grad_output, input, weight, mean, invstd);
  check_fused_backward_args(input, bias, residual, activation, residual_grad);
  const at::Tensor x = canonical_input(input);
  const at::Tensor dy = match_layout(grad_output, x);
  const int64_t C = x.size(1);
  const auto param_options = input.options().dtype(
      defined(weight) ? weight->scalar_type() : input.scalar_type());
  // Masked-out gradients come back as empty tensors: a schema's Tensor return is never None.
  auto maybe = [](bool wanted, auto make) { return wanted ? make() : at::Tensor(); };
  BackwardArgs args{layout_of(x), dy, x, weight, mean, invstd, training,
                    maybe(output_mask[0], [&] { return new_like(x); }),
                    maybe(output_mask[1], [&] { return new_vector(C, param_options); }),
                    maybe(output_mask[2], [&] { return new_vector(C, param_options); })};
  at::Tensor grad_residual;
  if (activation != 0) {
    args.bias = bias;
    args.fused = fused_epilogue(x, residual, activation, negative_slope);
    if (residual_grad) grad_residual = new_like(x);
    args.grad_pre = residual_grad ? grad_residual : args.grad_input.defined() ? args.grad_input : new_like(x);
  } else if (residual_grad) {
    grad_residual = new_like(x).copy_(dy);
  }
  backend_for(x).backward(args);
  auto or_empty = [&](const at::Tensor& t) { return t.defined() ? t : at::empty({0}, param_options); };
  auto or_none = [&](const at::Tensor& t) { return t.defined() ? t : at::empty({0}, input.options()); };
  return {or_none(args.grad_input), or_empty(args.grad_weight), or_empty(args.grad_bias),
          or_none(grad_residual)};
}

}  // namespace

// activation: 0 none, 1 relu, 2 silu, 3 leaky_relu (kernels/bn_math.h's Act); the forwards
// return act(bn(input) + residual).
TORCH_LIBRARY(fastbn, m) {
  m.def(
      "batch_norm_train(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, float? momentum, float eps, "
      "Tensor? residual=None, int activation=0, float negative_slope=0.01) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_eval(Tensor input, Tensor? weight, Tensor? bias, Tensor running_mean, "
      "Tensor running_var, float eps, Tensor? residual=None, int activation=0, "
      "float negative_slope=0.01) -> Tensor");
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor mean, "
      "Tensor invstd, bool training, bool[3] output_mask, Tensor? bias=None, "
      "Tensor? residual=None, int activation=0, float negative_slope=0.01, "
      "bool residual_grad=False) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastbn, CPU, m) {
  m.impl("batch_norm_train", &batch_norm_train);
  m.impl("batch_norm_eval", &batch_norm_eval);
  m.impl("batch_norm_backward", &batch_norm_backward);
}

#ifdef FASTBN_WITH_CUDA
TORCH_LIBRARY_IMPL(fastbn, CUDA, m) {
  m.impl("batch_norm_train", &batch_norm_train);
  m.impl("batch_norm_eval", &batch_norm_eval);
  m.impl("batch_norm_backward", &batch_norm_backward);
}
#endif

}  // namespace fastbn
