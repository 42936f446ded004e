// Arguments of the three batch-norm operations after the front has checked them and brought
// the tensors into one Layout. Every backend (CPU, CUDA, SIMT) implements the same three calls.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "kernels/bn_layout.h"

namespace fastbn {

// What follows the normalization, fused into its elementwise pass: y = act(bn(x) + residual).
struct FusedEpilogue {
  std::optional<at::Tensor> residual;  // in `layout`, the input's shape and dtype
  int activation = 0;                  // kernels/bn_math.h's Act: none, relu, silu, leaky_relu
  double negative_slope = 0;           // leaky_relu's
  bool plain() const { return activation == 0 && !residual.has_value(); }
};

struct TrainForwardArgs {
  Layout layout;
  at::Tensor input;   // in `layout`
  at::Tensor output;  // in `layout`, input's dtype
  std::optional<at::Tensor> weight, bias;
  std::optional<at::Tensor> running_mean, running_var;  // updated in place when given
  std::optional<at::Tensor> num_batches_tracked;        // already incremented by the front
  bool cumulative;  // momentum=None: factor 1/num_batches_tracked
  double momentum;
  double eps;
  at::Tensor save_mean, save_invstd;  // (C,), float32 (float64 for float64 input)
  FusedEpilogue fused;
};

struct EvalForwardArgs {
  Layout layout;
  at::Tensor input, output;
  std::optional<at::Tensor> weight, bias;
  at::Tensor running_mean, running_var;
  double eps;
  FusedEpilogue fused;
};

struct BackwardArgs {
  Layout layout;
  at::Tensor grad_output, input;  // both in `layout`
  std::optional<at::Tensor> weight;
  at::Tensor mean, invstd;  // saved batch statistics, or the running ones in eval
  bool training;
  // Undefined when not requested by the output mask.
  at::Tensor grad_input, grad_weight, grad_bias;
  // With an activation (fused.activation ≠ 0): the forward's bias and residual, from which the
  // backward recomputes the activation's input, and where g = dy·act'(z) goes (in `layout`):
  // the residual's gradient when it is wanted, else grad_input (dx is then computed in place),
  // else scratch.
  std::optional<at::Tensor> bias;
  FusedEpilogue fused;
  at::Tensor grad_pre;
};

}  // namespace fastbn
