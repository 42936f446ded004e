// Argument checks and layout preparation shared by every backend. Everything here runs before
// any buffer is written, so a rejected call leaves running stats and counters as they were.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "kernels/bn_layout.h"

namespace fastbn {

using OptTensor = std::optional<at::Tensor>;

void check_forward_args(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                        const OptTensor& running_mean, const OptTensor& running_var,
                        const OptTensor& num_batches_tracked, bool training, bool cumulative);

void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                         const OptTensor& weight, const at::Tensor& mean,
                         const at::Tensor& invstd);

// The fused epilogue: activation one of 0..3 (none, relu, silu, leaky_relu), a residual of the
// input's shape, dtype and device.
void check_fused_args(const at::Tensor& input, const OptTensor& residual, int64_t activation);
// The backward's: those, the forward's bias (which the backward needs with an activation), and
// a residual when its gradient is asked for.
void check_fused_backward_args(const at::Tensor& input, const OptTensor& bias,
                               const OptTensor& residual, int64_t activation, bool residual_grad);

// The input itself when it is dense in NCS or NSC order, else a copy in the memory format
// torch would pick for it (so channels_last stays channels_last).
at::Tensor canonical_input(const at::Tensor& input);

// `t` with exactly the strides of `like` (a copy only when they differ).
at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like);

Layout layout_of(const at::Tensor& canonical);

// float32 statistics for float32/float16/bfloat16 input, float64 for float64.
at::ScalarType stats_dtype(at::ScalarType input_dtype);

}  // namespace fastbn
