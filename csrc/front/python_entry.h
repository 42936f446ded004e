// fastbn._C's eager entry points into the operators (see python_entry.cpp).
#pragma once

#include <Python.h>

namespace fastbn {

// _batch_norm_train(input, weight, bias, running_mean, running_var, num_batches_tracked,
// momentum, eps[, residual, activation, negative_slope]) -> (output, save_mean, save_invstd)
PyObject* py_batch_norm_train(PyObject* self, PyObject* args);
// _batch_norm_eval(input, weight, bias, running_mean, running_var, eps[, residual, activation,
// negative_slope]) -> output
PyObject* py_batch_norm_eval(PyObject* self, PyObject* args);
// _check_forward_args(input, weight, bias, running_mean, running_var, num_batches_tracked,
// training, cumulative) and _check_backward_args(grad_output, input, weight, mean, invstd):
// the operators' argument checks (checks.h), raising as the operators do; None when they pass.
PyObject* py_check_forward_args(PyObject* self, PyObject* args);
PyObject* py_check_backward_args(PyObject* self, PyObject* args);
// _check_fused_args(input, bias, residual, activation, residual_grad): check_fused_backward_args,
// which covers the forwards' fused checks too (bias None, residual_grad False).
PyObject* py_check_fused_args(PyObject* self, PyObject* args);

}  // namespace fastbn
