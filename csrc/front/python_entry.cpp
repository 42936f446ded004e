// The operators called straight from Python in eager mode. torch.ops.fastbn.* boxes every
// argument, matches it against the schema and unboxes it again: about 2 µs per call, and 15 µs
// once a large kernel has pushed the interpreter's and the dispatcher's data out of the cache,
// as every batch norm does. These functions take the same arguments and call the same
// operators through their typed handles, so the dispatcher still runs every key (autograd,
// tracing, Python modes, the device). fastbn/ops.py calls them only where torch.ops would add
// nothing: not under torch.compile and with no __torch_function__ override or mode. Arguments
// of unexpected types return NotImplemented, and the caller falls back to torch.ops, which
// reports them as it does for any operator.
//
// The argument checks are here too, for the fake kernels of fastbn/ops.py: torch.library also
// registers those as the operators' Meta kernels, which inference mode reaches without the
// autograd kernels that check first (a meta weight with a CPU input would otherwise return an
// uninitialized CPU tensor).
#include "front/python_entry.h"

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>
#include <tuple>

#include "front/checks.h"
#include "front/op_handles.h"

namespace fastbn {
namespace {

bool tensor_arg(PyObject* o, at::Tensor& out) {
  if (!THPVariable_Check(o)) return false;
  out = THPVariable_Unpack(o);
  return true;
}

bool optional_tensor_arg(PyObject* o, OptTensor& out) {
  if (o == Py_None) return true;
  at::Tensor t;
  if (!tensor_arg(o, t)) return false;
  out = std::move(t);
  return true;
}

bool float_arg(PyObject* o, double& out) {
  if (!PyFloat_Check(o) && !PyLong_Check(o)) return false;
  out = PyFloat_AsDouble(o);
  return !(out == -1.0 && PyErr_Occurred());
}

bool int_arg(PyObject* o, int64_t& out) {
  if (!PyLong_Check(o)) return false;
  out = PyLong_AsLongLong(o);
  return !(out == -1 && PyErr_Occurred());
}

// The optional trailing (residual, activation, negative_slope) of the forwards.
struct FusedArgs {
  OptTensor residual;
  int64_t activation = 0;
  double negative_slope = 0.01;
  bool parse(PyObject* r, PyObject* act, PyObject* slope) {
    return (r == nullptr || optional_tensor_arg(r, residual)) &&
           (act == nullptr || int_arg(act, activation)) &&
           (slope == nullptr || float_arg(slope, negative_slope));
  }
};

// Releases the GIL for the operator (as torch.ops does), also when it throws.
class WithoutGil {
 public:
  WithoutGil() : state_(PyEval_SaveThread()) {}
  ~WithoutGil() { PyEval_RestoreThread(state_); }
  WithoutGil(const WithoutGil&) = delete;
  WithoutGil& operator=(const WithoutGil&) = delete;

 private:
  PyThreadState* state_;
};

}  // namespace

PyObject* py_batch_norm_train(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *input, *weight, *bias, *running_mean, *running_var, *counter, *momentum, *eps;
  PyObject *residual = nullptr, *activation = nullptr, *slope = nullptr;
  if (!PyArg_UnpackTuple(args, "_batch_norm_train", 8, 11, &input, &weight, &bias,
                         &running_mean, &running_var, &counter, &momentum, &eps, &residual,
                         &activation, &slope))
    return nullptr;
  at::Tensor x;
  OptTensor w, b, rm, rv, n;
  std::optional<double> m;
  double e = 0, mv = 0;
  FusedArgs f;
  if (!tensor_arg(input, x) || !optional_tensor_arg(weight, w) ||
      !optional_tensor_arg(bias, b) || !optional_tensor_arg(running_mean, rm) ||
      !optional_tensor_arg(running_var, rv) || !optional_tensor_arg(counter, n) ||
      !float_arg(eps, e) || (momentum != Py_None && !float_arg(momentum, mv)) ||
      !f.parse(residual, activation, slope)) {
    if (PyErr_Occurred()) return nullptr;
    Py_RETURN_NOTIMPLEMENTED;
  }
  if (momentum != Py_None) m = mv;
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  {
    WithoutGil unlocked;
    out = train_op().call(x, w, b, rm, rv, n, m, e, f.residual, f.activation, f.negative_slope);
  }
  return Py_BuildValue("(NNN)", THPVariable_Wrap(std::move(std::get<0>(out))),
                       THPVariable_Wrap(std::move(std::get<1>(out))),
                       THPVariable_Wrap(std::move(std::get<2>(out))));
  END_HANDLE_TH_ERRORS
}

PyObject* py_batch_norm_eval(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *input, *weight, *bias, *running_mean, *running_var, *eps;
  PyObject *residual = nullptr, *activation = nullptr, *slope = nullptr;
  if (!PyArg_UnpackTuple(args, "_batch_norm_eval", 6, 9, &input, &weight, &bias, &running_mean,
                         &running_var, &eps, &residual, &activation, &slope))
    return nullptr;
  at::Tensor x, rm, rv;
  OptTensor w, b;
  double e = 0;
  FusedArgs f;
  if (!tensor_arg(input, x) || !optional_tensor_arg(weight, w) ||
      !optional_tensor_arg(bias, b) || !tensor_arg(running_mean, rm) ||
      !tensor_arg(running_var, rv) || !float_arg(eps, e) ||
      !f.parse(residual, activation, slope)) {
    if (PyErr_Occurred()) return nullptr;
    Py_RETURN_NOTIMPLEMENTED;
  }
  at::Tensor out;
  {
    WithoutGil unlocked;
    out = eval_op().call(x, w, b, rm, rv, e, f.residual, f.activation, f.negative_slope);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

PyObject* py_check_forward_args(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *input, *weight, *bias, *running_mean, *running_var, *counter, *training, *cumulative;
  if (!PyArg_UnpackTuple(args, "_check_forward_args", 8, 8, &input, &weight, &bias,
                         &running_mean, &running_var, &counter, &training, &cumulative))
    return nullptr;
  at::Tensor x;
  OptTensor w, b, rm, rv, n;
  if (!tensor_arg(input, x) || !optional_tensor_arg(weight, w) ||
      !optional_tensor_arg(bias, b) || !optional_tensor_arg(running_mean, rm) ||
      !optional_tensor_arg(running_var, rv) || !optional_tensor_arg(counter, n)) {
    PyErr_SetString(PyExc_TypeError, "_check_forward_args: expected tensors or None");
    return nullptr;
  }
  check_forward_args(x, w, b, rm, rv, n, PyObject_IsTrue(training), PyObject_IsTrue(cumulative));
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyObject* py_check_backward_args(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *grad_output, *input, *weight, *mean, *invstd;
  if (!PyArg_UnpackTuple(args, "_check_backward_args", 5, 5, &grad_output, &input, &weight,
                         &mean, &invstd))
    return nullptr;
  at::Tensor dy, x, m, s;
  OptTensor w;
  if (!tensor_arg(grad_output, dy) || !tensor_arg(input, x) || !optional_tensor_arg(weight, w) ||
      !tensor_arg(mean, m) || !tensor_arg(invstd, s)) {
    PyErr_SetString(PyExc_TypeError, "_check_backward_args: expected tensors (weight: or None)");
    return nullptr;
  }
  check_backward_args(dy, x, w, m, s);
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyObject* py_check_fused_args(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *input, *bias, *residual, *activation, *residual_grad;
  if (!PyArg_UnpackTuple(args, "_check_fused_args", 5, 5, &input, &bias, &residual, &activation,
                         &residual_grad))
    return nullptr;
  at::Tensor x;
  OptTensor b, r;
  int64_t act = 0;
  if (!tensor_arg(input, x) || !optional_tensor_arg(bias, b) || !optional_tensor_arg(residual, r) ||
      !int_arg(activation, act)) {
    PyErr_SetString(PyExc_TypeError, "_check_fused_args: expected (tensor, tensor or None, tensor "
                    "or None, int, bool)");
    return nullptr;
  }
  check_fused_backward_args(x, b, r, act, PyObject_IsTrue(residual_grad));
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

}  // namespace fastbn
