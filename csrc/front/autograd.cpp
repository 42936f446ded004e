// Autograd for the fastbn ops, in C++ so that the training forward can mutate the running
// statistics in place (torch.library.register_autograd only takes functional ops) — the same
// model as aten::_native_batch_norm_legit. Backward goes through fastbn::batch_norm_backward.
//
// The graph nodes are built as torch's generated autograd kernels build theirs (a Node with
// SavedVariables, edges from collect_next_edges, the output's history from set_history), not
// through torch::autograd::Function, whose CppNode keeps an AutogradContext (saved data in a
// string-keyed map, sets of dirty and non-differentiable outputs, output metadata). On a
// kilobyte input a training forward that records a graph took 15 µs that way and takes 11 now
// (7 without a graph); after a 4 MiB copy_ has flushed the caches, as the kernels before it do
// in a network, 67 µs and 57. Under compiled autograd the backward node is traced as a call
// of its functional form (apply_with_saved), which runs the same op on the tracer's tensors.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/library.h>

#include <array>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "front/checks.h"
#include "front/op_handles.h"

namespace fastbn {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using torch::dynamo::autograd::CompiledNodeArgs;
using torch::dynamo::autograd::IValuePacker;
using torch::dynamo::autograd::PackedArgs;
using torch::dynamo::autograd::SwapSavedVariables;

OptTensor optional_of(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// fastbn has no forward-mode derivative (jvp). Refused before the op runs: otherwise the
// tangent would be dropped silently (and, with a graph, only after the running statistics
// were updated).
void check_no_forward_ad(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                         const OptTensor& residual) {
  using torch::autograd::isFwGradDefined;
  TORCH_CHECK(!isFwGradDefined(input) && !isFwGradDefined(weight) && !isFwGradDefined(bias) &&
                  !isFwGradDefined(residual),
              "fastbn: forward-mode AD (dual tensors, jvp) is not supported; use "
              "torch.nn.BatchNorm for it");
}

// The training op mutates these in place (its schema says so): their version counters are
// bumped, as the ADInplaceOrView kernel that the dispatch below autograd skips would, so that
// autograd notices if one of them was saved for a backward. (torch.nn bumps
// num_batches_tracked's through its add_.)
void bump_versions(std::initializer_list<const OptTensor*> mutated) {
  for (const OptTensor* t : mutated)
    if (t->has_value() && (*t)->defined()) torch::autograd::impl::bump_version(**t);
}

SavedVariable saved(const at::Tensor& t) { return SavedVariable(t, /*is_output=*/false); }

// What the forward fused after the normalization: y = act(bn(x) + residual).
struct Fused {
  at::Tensor bias, residual;  // saved only with an activation (the backward recomputes its input)
  int64_t activation = 0;
  double negative_slope = 0;
};

// The gradients of either forward (input, weight, bias, residual): training normalized with the
// batch's mean and invstd, eval with the running mean and variance (and eps), whose invstd is
// computed here so that the eval forward does no extra work. Outputs masked out are left
// undefined. Without an activation the residual's gradient is grad_output itself.
variable_list batch_norm_grads(const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& weight, at::Tensor mean, at::Tensor invstd,
                               bool training, double eps, const Fused& fused,
                               std::array<bool, 4> mask) {
  variable_list out(4);
  if (!grad_output.defined()) return out;
  const bool act = fused.activation != 0;
  if (!act && mask[3]) out[3] = grad_output;
  if (!(mask[0] || mask[1] || mask[2] || (act && mask[3]))) return out;
  if (!training) {
    const auto stats = stats_dtype(input.scalar_type());
    mean = mean.to(stats);
    // With an activation in double, as the CPU forward computes it, so that the recomputed
    // activation input matches the forward's (a ReLU's mask at z ≈ 0).
    invstd = act ? (invstd.to(at::kDouble) + eps).rsqrt().to(stats) : (invstd.to(stats) + eps).rsqrt();
  }
  // Under create_graph (grad mode on) this dispatches through autograd (backward_autograd),
  // which makes a second differentiation fail loudly instead of silently; otherwise it goes
  // straight to the device kernel (about 1 µs less per call).
  std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
  if (!at::GradMode::is_enabled()) below_autograd.emplace();
  auto [dx, dw, db, dr] = backward_op().call(
      grad_output, input, optional_of(weight), mean, invstd, training, {mask[0], mask[1], mask[2]},
      act ? optional_of(fused.bias) : std::nullopt, act ? optional_of(fused.residual) : std::nullopt,
      fused.activation, fused.negative_slope, act && mask[3]);
  if (mask[0]) out[0] = std::move(dx);  // masked-out outputs come back empty: left undefined
  if (mask[1]) out[1] = std::move(dw);
  if (mask[2]) out[2] = std::move(db);
  if (act && mask[3]) out[3] = std::move(dr);
  return out;
}

// The node's arguments to batch_norm_grads as compiled autograd passes them to the traced call
// (PackedArgs), with the schema that converts them back from Python.
struct GradsArgs {
  PackedArgs packed;
  std::vector<at::TypePtr> schema;
  template <typename T>
  void add(const T& value) {
    packed.pack(value);
    schema.push_back(IValuePacker<T>::packed_type());
  }
};

variable_list batch_norm_grads_packed(const variable_list& grads, const std::vector<c10::IValue>& args) {
  PackedArgs packed(args);
  const auto input = packed.unpack<at::Tensor>();
  const auto weight = packed.unpack<std::optional<at::Tensor>>();
  auto mean = packed.unpack<at::Tensor>();
  auto invstd = packed.unpack<at::Tensor>();
  const auto training = packed.unpack<bool>();
  const auto eps = packed.unpack<double>();
  Fused fused;
  fused.bias = packed.unpack<std::optional<at::Tensor>>().value_or(at::Tensor());
  fused.residual = packed.unpack<std::optional<at::Tensor>>().value_or(at::Tensor());
  fused.activation = packed.unpack<int64_t>();
  fused.negative_slope = packed.unpack<double>();
  const auto mask = packed.unpack<std::array<bool, 4>>();
  return batch_norm_grads(grads[0], input, weight.value_or(at::Tensor()), std::move(mean),
                          std::move(invstd), training, eps, fused, mask);
}

// The backward of both forwards. Next edges: input, weight, bias, residual (an absent or frozen
// one has an invalid edge, and task_should_compute_output says so). Saved: the input and weight,
// the statistics the forward normalized with (the batch's mean and invstd in training, the
// running mean and variance, with eps, in eval) and, with an activation, bias and residual.
struct BatchNormBackward final : Node {
  SavedVariable input_, weight_, mean_, invstd_, bias_, residual_;
  bool training_ = true;
  double eps_ = 0;  // eval only
  int64_t activation_ = 0;
  double negative_slope_ = 0;

  Fused fused() {
    return {bias_.unpack(), residual_.unpack(), activation_, negative_slope_};
  }

  std::string name() const override {
    return training_ ? "fastbn::BatchNormBackward" : "fastbn::BatchNormEvalBackward";
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    weight_.reset_data();
    mean_.reset_data();
    invstd_.reset_data();
    bias_.reset_data();
    residual_.reset_data();
  }

  std::array<bool, 4> mask() const {
    return {task_should_compute_output(0), task_should_compute_output(1),
            task_should_compute_output(2), task_should_compute_output(3)};
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return batch_norm_grads(grads[0], input_.unpack(), weight_.unpack(), mean_.unpack(),
                            invstd_.unpack(), training_, eps_, fused(), mask());
  }

  // Compiled autograd: what keys the compiled graph (the saved tensors' metadata, the mode) ...
  void compiled_args(CompiledNodeArgs& args) const override {
    args.collect(input_, /*is_output=*/false);
    args.collect(weight_, /*is_output=*/false);
    args.collect(mean_, /*is_output=*/false);
    args.collect(invstd_, /*is_output=*/false);
    args.collect(bias_, /*is_output=*/false);
    args.collect(residual_, /*is_output=*/false);
    args.collect(training_);
    args.collect(eps_);
    args.collect(activation_);
    args.collect(negative_slope_);
  }

  // ... and the node as a call in that graph: batch_norm_grads on the tracer's stand-ins for the
  // saved tensors. It is traceable (the backward op has a fake kernel), so the graph's compiler
  // sees fastbn::batch_norm_backward itself.
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    for (SavedVariable* v : {&input_, &weight_, &mean_, &invstd_, &bias_, &residual_}) saved.before(*v);
    GradsArgs args;
    args.add(input_.unpack());
    args.add(optional_of(weight_.unpack()));
    args.add(mean_.unpack());
    args.add(invstd_.unpack());
    args.add(training_);
    args.add(eps_);
    args.add(optional_of(bias_.unpack()));
    args.add(optional_of(residual_.unpack()));
    args.add(activation_);
    args.add(negative_slope_);
    args.add(mask());
    const auto& compiler = torch::dynamo::autograd::getPyCompilerInterface();
    // (Named as a Python identifier: it becomes an attribute of compiled autograd's op namespace.)
    const auto fn_name = compiler->bind_function(saved.get_py_compiler(),
                                                 training_ ? "fastbn_batch_norm_backward"
                                                           : "fastbn_batch_norm_eval_backward",
                                                 batch_norm_grads_packed, args.schema,
                                                 /*is_custom_function=*/true,
                                                 /*is_traceable=*/true);
    const auto output_metadata = IValuePacker<std::vector<std::optional<torch::autograd::InputMetadata>>>::pack(
        torch::dynamo::autograd::get_input_metadata(next_edges()));
    auto results = compiler->call_function(saved.get_py_compiler(), "apply_functional", fn_name,
                                           grads, std::move(args.packed).vec(), output_metadata);
    for (SavedVariable* v : {&input_, &weight_, &mean_, &invstd_, &bias_, &residual_}) saved.after(*v);
    return results;
  }
};

// Output of the backward op when its own graph was requested (create_graph=True).
struct DoubleBackwardUnsupported final : Node {
  std::string name() const override { return "fastbn::BatchNormDoubleBackward"; }
  variable_list apply(variable_list&&) override {
    TORCH_CHECK(false, "fastbn: double backward (the gradient of batch norm's gradient) is not "
                "supported; use torch.nn.BatchNorm for second-order derivatives");
  }
};

// Makes node the grad_fn of the outputs, then runs the node_creation_hook callbacks (which
// set_history does not run).
void attach(const c10::intrusive_ptr<Node>& node, std::initializer_list<at::Tensor*> outputs) {
  for (at::Tensor* t : outputs) torch::autograd::set_history(*t, node);
  torch::autograd::fire_node_creation_hooks(node);
}

// A BatchNormBackward whose edges lead to input, weight, bias and residual; when none of them
// requires grad (or grad mode is off), none: the forward then runs without recording a graph.
// The running statistics get no edge: one that requires grad is refused, as torch refuses it,
// before the forward changes anything.
c10::intrusive_ptr<BatchNormBackward> backward_node(const at::Tensor& input,
                                                    const OptTensor& weight,
                                                    const OptTensor& bias,
                                                    const OptTensor& running_mean,
                                                    const OptTensor& running_var,
                                                    const OptTensor& residual,
                                                    int64_t activation, double negative_slope) {
  if (!torch::autograd::compute_requires_grad(input, weight, bias, residual)) return {};
  for (const auto& [t, name] : {std::pair{&running_mean, "running_mean"},
                                std::pair{&running_var, "running_var"}})
    TORCH_CHECK(!(t->has_value() && (*t)->defined() && (*t)->requires_grad()),
                "fastbn: batch norm is not differentiable with respect to ", name,
                "; it cannot have requires_grad=True");
  auto node = c10::make_intrusive<BatchNormBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias, residual));
  node->input_ = saved(input);
  node->weight_ = saved(weight.value_or(at::Tensor()));
  if (activation != 0) {
    node->bias_ = saved(bias.value_or(at::Tensor()));
    node->residual_ = saved(residual.value_or(at::Tensor()));
  }
  node->activation_ = activation;
  node->negative_slope_ = negative_slope;
  return node;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> train_autograd(
    const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& running_mean, const OptTensor& running_var,
    const OptTensor& num_batches_tracked, std::optional<double> momentum, double eps,
    const OptTensor& residual, int64_t activation, double negative_slope) {
  // Checked here too: this kernel runs before the dispatcher picks a device, so a tensor on the
  // wrong device gets fastbn's message rather than "could not run ... with the 'X' backend".
  check_forward_args(input, weight, bias, running_mean, running_var, num_batches_tracked,
                     /*training=*/true, /*cumulative=*/!momentum.has_value());
  check_fused_args(input, residual, activation);
  check_no_forward_ad(input, weight, bias, residual);
  const auto node = backward_node(input, weight, bias, running_mean, running_var, residual,
                                  activation, negative_slope);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = train_op().call(input, weight, bias, running_mean, running_var, num_batches_tracked,
                          momentum, eps, residual, activation, negative_slope);
  }
  bump_versions({&running_mean, &running_var, &num_batches_tracked});
  if (node) {
    auto& [y, mean, invstd] = out;  // the statistics are not differentiable: no history
    node->mean_ = saved(mean);
    node->invstd_ = saved(invstd);
    attach(node, {&y});
  }
  return out;
}

at::Tensor eval_autograd(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                         const at::Tensor& running_mean, const at::Tensor& running_var,
                         double eps, const OptTensor& residual, int64_t activation,
                         double negative_slope) {
  check_forward_args(input, weight, bias, running_mean, running_var, std::nullopt,
                     /*training=*/false, /*cumulative=*/false);
  check_fused_args(input, residual, activation);
  check_no_forward_ad(input, weight, bias, residual);
  const auto node = backward_node(input, weight, bias, running_mean, running_var, residual,
                                  activation, negative_slope);
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    y = eval_op().call(input, weight, bias, running_mean, running_var, eps, residual, activation,
                       negative_slope);
  }
  if (node) {
    node->training_ = false;
    node->eps_ = eps;
    node->mean_ = saved(running_mean);
    node->invstd_ = saved(running_var);
    attach(node, {&y});
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const OptTensor& weight,
    const at::Tensor& mean, const at::Tensor& invstd, bool training, std::array<bool, 3> mask,
    const OptTensor& bias, const OptTensor& residual, int64_t activation, double negative_slope,
    bool residual_grad) {
  const bool graph = torch::autograd::compute_requires_grad(grad_output, input, weight, mean,
                                                            invstd, bias, residual);
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = backward_op().call(grad_output, input, weight, mean, invstd, training, mask, bias,
                             residual, activation, negative_slope, residual_grad);
  }
  if (graph) {
    auto node = c10::make_intrusive<DoubleBackwardUnsupported>();
    node->set_next_edges(torch::autograd::collect_next_edges(grad_output, input, weight, mean,
                                                             invstd, bias, residual));
    auto& [dx, dw, db, dr] = out;
    attach(node, {&dx, &dw, &db, &dr});
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastbn, Autograd, m) {
  m.impl("batch_norm_train", &train_autograd);
  m.impl("batch_norm_eval", &eval_autograd);
  m.impl("batch_norm_backward", &backward_autograd);
}

}  // namespace fastbn
