#include "front/checks.h"

#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <sstream>

namespace fastbn {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

bool is_half_type(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

std::string torch_size(c10::SymIntArrayRef sizes) {
  std::ostringstream out;
  out << "torch.Size([";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << "])";
  return out.str();
}

void check_input(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() >= 2, "fastbn: expected input of shape (N, C, ...) with at least 2 "
                    "dimensions, got ", input.dim(), "D input");
  // Meta tensors (shape-only: deferred initialization, shape propagation) go to the fake
  // kernels of fastbn/ops.py, which torch.library also registers as the Meta kernels.
#ifdef FASTBN_WITH_CUDA
  TORCH_CHECK(input.is_cpu() || input.is_cuda() || input.is_meta(), "fastbn: input on ",
              input.device(), " is not supported (CPU and CUDA tensors)");
#else
  TORCH_CHECK(input.is_cpu() || input.is_meta(), "fastbn: input on ", input.device(),
              " is not supported: this build of fastbn has only the CPU backend (see python -m "
              "fastbn.info)");
#endif
  TORCH_CHECK(is_supported_dtype(input.scalar_type()), "fastbn: input dtype ", input.scalar_type(),
              " is not supported (float32, float64, float16 or bfloat16)");
}

// Per-channel parameters and statistics: (C,), on the input's device, all of one dtype which is
// the input's, or float32 for half input (the mixed case autocast produces).
//
// The checks also run on fake tensors (in the autograd kernels and, through fastbn._C, in the
// fake kernels), which torch.compile and torch.export trace with symbolic shapes: sizes are read
// as SymInts (sym_size), since sizes() would specialize every dimension, the batch included, to
// the traced example's value.
void check_per_channel(const at::Tensor& input, const OptTensor& t, const char* name,
                       std::optional<at::ScalarType>& param_dtype) {
  if (!t.has_value() || !t->defined()) return;
  const c10::SymInt C = input.sym_size(1);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->sym_size(0) == C, "fastbn: ", name, " should have shape (",
                    C, ",) to match the ", C, " channels of the input, got ",
                    torch_size(t->sym_sizes()));
  TORCH_CHECK(t->device() == input.device(), "fastbn: ", name, " is on ", t->device(),
              " but the input is on ", input.device());
  const auto dtype = t->scalar_type();
  TORCH_CHECK(dtype == input.scalar_type() || (dtype == at::kFloat && is_half_type(input.scalar_type())),
              "fastbn: ", name, " has dtype ", dtype, " but the input has dtype ", input.scalar_type(),
              "; parameters and running statistics must have the input's dtype (or float32 for "
              "float16/bfloat16 input)");
  TORCH_CHECK(!param_dtype || *param_dtype == dtype, "fastbn: ", name, " has dtype ", dtype,
              " but the other parameters have dtype ", *param_dtype);
  param_dtype = dtype;
}

}  // namespace

void check_forward_args(const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
                        const OptTensor& running_mean, const OptTensor& running_var,
                        const OptTensor& num_batches_tracked, bool training, bool cumulative) {
  check_input(input);
  std::optional<at::ScalarType> param_dtype;
  check_per_channel(input, weight, "weight", param_dtype);
  check_per_channel(input, bias, "bias", param_dtype);
  check_per_channel(input, running_mean, "running_mean", param_dtype);
  check_per_channel(input, running_var, "running_var", param_dtype);
  const bool has_mean = running_mean.has_value() && running_mean->defined();
  const bool has_var = running_var.has_value() && running_var->defined();
  TORCH_CHECK_VALUE(has_mean == has_var,
                    "fastbn: running_mean and running_var must be given together or not at all");
  if (!training) {
    TORCH_CHECK_VALUE(has_mean, "fastbn: running_mean and running_var must be defined in "
                      "evaluation mode");
    return;
  }
  if (num_batches_tracked.has_value() && num_batches_tracked->defined()) {
    const auto& nbt = *num_batches_tracked;
    TORCH_CHECK(nbt.numel() == 1 && nbt.scalar_type() == at::kLong,
                "fastbn: num_batches_tracked must be a one-element int64 tensor, got ",
                nbt.scalar_type(), " of shape ", torch_size(nbt.sym_sizes()));
    TORCH_CHECK(nbt.device() == input.device(), "fastbn: num_batches_tracked is on ", nbt.device(),
                " but the input is on ", input.device());
  } else {
    TORCH_CHECK_VALUE(!(cumulative && has_mean), "fastbn: momentum=None (cumulative moving "
                      "average) needs num_batches_tracked");
  }
  c10::SymInt per_channel = input.sym_size(0);
  for (int64_t d = 2; d < input.dim(); ++d) per_channel *= input.sym_size(d);
  TORCH_CHECK_VALUE(per_channel != 1, "Expected more than 1 value per channel when training, got "
                    "input size ", torch_size(input.sym_sizes()));
}

void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                         const OptTensor& weight, const at::Tensor& mean,
                         const at::Tensor& invstd) {
  check_input(input);
  TORCH_CHECK_VALUE(grad_output.sym_sizes() == input.sym_sizes(), "fastbn: grad_output has shape ",
                    torch_size(grad_output.sym_sizes()), " but the input has shape ",
                    torch_size(input.sym_sizes()));
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() &&
                  grad_output.device() == input.device(),
              "fastbn: grad_output must have the input's dtype and device");
  std::optional<at::ScalarType> param_dtype;
  check_per_channel(input, weight, "weight", param_dtype);
  const auto stats = stats_dtype(input.scalar_type());
  for (const auto* t : {&mean, &invstd}) {
    TORCH_CHECK(t->dim() == 1 && t->sym_size(0) == input.sym_size(1) &&
                    t->scalar_type() == stats && t->device() == input.device(),
                "fastbn: saved mean/invstd must be ", stats, " tensors of shape (",
                input.sym_size(1), ",) on the input's device");
  }
}

void check_fused_args(const at::Tensor& input, const OptTensor& residual, int64_t activation) {
  TORCH_CHECK_VALUE(activation >= 0 && activation <= 3, "fastbn: activation must be 0 (none), "
                    "1 (relu), 2 (silu) or 3 (leaky_relu), got ", activation);
  if (!residual.has_value() || !residual->defined()) return;
  const at::Tensor& r = *residual;
  TORCH_CHECK_VALUE(r.sym_sizes() == input.sym_sizes(), "fastbn: residual has shape ",
                    torch_size(r.sym_sizes()), " but the input has shape ",
                    torch_size(input.sym_sizes()));
  TORCH_CHECK(r.scalar_type() == input.scalar_type(), "fastbn: residual has dtype ",
              r.scalar_type(), " but the input has dtype ", input.scalar_type());
  TORCH_CHECK(r.device() == input.device(), "fastbn: residual is on ", r.device(),
              " but the input is on ", input.device());
}

void check_fused_backward_args(const at::Tensor& input, const OptTensor& bias,
                               const OptTensor& residual, int64_t activation, bool residual_grad) {
  check_fused_args(input, residual, activation);
  std::optional<at::ScalarType> param_dtype;
  check_per_channel(input, bias, "bias", param_dtype);
  TORCH_CHECK_VALUE(!residual_grad || (residual.has_value() && residual->defined()),
                    "fastbn: residual_grad=True needs the residual");
}

at::Tensor canonical_input(const at::Tensor& input) {
  if (input.is_contiguous() || input.movedim(1, -1).is_contiguous()) return input;
  return input.contiguous(input.suggest_memory_format());
}

at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  return at::empty_like(like).copy_(t);
}

Layout layout_of(const at::Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1);
  int64_t S = 1;
  for (int64_t d = 2; d < x.dim(); ++d) S *= x.size(d);
  // With one spatial element both orders are the same (N, C) matrix; rows of C vectorize.
  const bool channels_last = S == 1 || !x.is_contiguous();
  return {N, C, S, channels_last};
}

at::ScalarType stats_dtype(at::ScalarType input_dtype) {
  return input_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace fastbn
