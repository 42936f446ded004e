// Arguments of the three batch-norm operations after the front has checked them and brought
// the tensors into one Layout. Every backend (CPU, CUDA, SIMT) implements the same three calls.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "kernels/bn_layout.h"

namespace fastbn {

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
};

struct EvalForwardArgs {
  Layout layout;
  at::Tensor input, output;
  std::optional<at::Tensor> weight, bias;
  at::Tensor running_mean, running_var;
  double eps;
};

struct BackwardArgs {
  Layout layout;
  at::Tensor grad_output, input;  // both in `layout`
  std::optional<at::Tensor> weight;
  at::Tensor mean, invstd;  // saved batch statistics, or the running ones in eval
  bool training;
  // Undefined when not requested by the output mask.
  at::Tensor grad_input, grad_weight, grad_bias;
};

}  // namespace fastbn
