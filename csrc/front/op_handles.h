// Typed dispatcher handles of the fastbn:: operators: calls through them go through every
// dispatch key (autograd, tracing, Python modes, the device) without boxing the arguments.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>

#include "front/checks.h"

namespace fastbn {

inline const auto& train_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastbn::batch_norm_train", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                           const OptTensor&, const OptTensor&, std::optional<double>, double,
                           const OptTensor&, int64_t, double)>();
  return op;
}

inline const auto& eval_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastbn::batch_norm_eval", "")
                       .typed<at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&,
                                         const at::Tensor&, const at::Tensor&, double,
                                         const OptTensor&, int64_t, double)>();
  return op;
}

inline const auto& backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastbn::batch_norm_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const OptTensor&,
                           const at::Tensor&, const at::Tensor&, bool, std::array<bool, 3>,
                           const OptTensor&, const OptTensor&, int64_t, double, bool)>();
  return op;
}

}  // namespace fastbn
