// The Python extension module fastbn._C. Importing it runs the TORCH_LIBRARY registrations;
// the functions below select the CPU backend (fastbn.backend in Python), report on the build,
// and call the operators from Python in eager mode (python_entry.cpp).
#include <Python.h>

#include <c10/util/Exception.h>

#include "cpu/batch_norm_cpu.h"
#include "front/backend.h"
#include "front/kernel_glue.h"
#include "front/python_entry.h"
#ifdef FASTBN_WITH_SIMT
#include "simt/bn_simt_backend.h"
#endif

namespace {

PyObject* set_cpu_backend(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (!name) return nullptr;
  try {
    fastbn::set_cpu_backend(name);
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* get_cpu_backend(PyObject*, PyObject*) {
  return PyUnicode_FromString(fastbn::current_cpu_backend().name);
}

PyObject* cpu_backends(PyObject*, PyObject*) {
  const auto& backends = fastbn::cpu_backends();
  PyObject* names = PyList_New(static_cast<Py_ssize_t>(backends.size()));
  for (size_t i = 0; i < backends.size(); ++i) {
    PyList_SET_ITEM(names, i, PyUnicode_FromString(backends[i].name));
  }
  return names;
}

PyObject* cpu_kernel_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(fastbn::cpu::kernel_isa());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  }
}

// [(path, vector width, splits)] of the kernel launches of this thread's recent calls.
PyObject* take_launch_log(PyObject*, PyObject*) {
  static const char* names[] = {"persistent", "two_kernels", "apply_only"};
  const auto log = fastbn::take_launch_log();
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(log.size()));
  for (size_t i = 0; i < log.size(); ++i) {
    PyList_SET_ITEM(out, i, Py_BuildValue("(sii)", names[static_cast<int>(log[i].path)],
                                          log[i].vec, log[i].splits));
  }
  return out;
}

// Runs f, turning a C++ exception into a Python RuntimeError.
template <typename F>
PyObject* guarded(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

#ifdef FASTBN_WITH_SIMT
PyObject* simt_set_schedule(PyObject*, PyObject* args) {
  const char *threads, *blocks;
  unsigned long long seed;
  if (!PyArg_ParseTuple(args, "ssK", &threads, &blocks, &seed)) return nullptr;
  return guarded([&] {
    fastbn::simt_control::set_schedule(threads, blocks, seed);
    Py_RETURN_NONE;
  });
}

PyObject* simt_set_device(PyObject*, PyObject* args) {
  int sm_count, blocks_per_sm;
  long long smem;
  if (!PyArg_ParseTuple(args, "iiL", &sm_count, &blocks_per_sm, &smem)) return nullptr;
  return guarded([&] {
    fastbn::simt_control::set_device(sm_count, blocks_per_sm, smem);
    Py_RETURN_NONE;
  });
}

PyObject* simt_reset_device(PyObject*, PyObject*) {
  fastbn::simt_control::reset_device();
  Py_RETURN_NONE;
}

PyObject* simt_traffic(PyObject*, PyObject*) {
  const auto t = fastbn::simt_control::traffic_since_reset();
  return Py_BuildValue("{sKsKsKsK}", "bytes_read", (unsigned long long)t.bytes_read,
                       "bytes_written", (unsigned long long)t.bytes_written, "atomics",
                       (unsigned long long)t.atomics, "launches", (unsigned long long)t.launches);
}

PyObject* simt_reset_traffic(PyObject*, PyObject*) {
  fastbn::simt_control::reset_traffic();
  Py_RETURN_NONE;
}
#endif

PyMethodDef methods[] = {
    {"_set_cpu_backend", set_cpu_backend, METH_O, "Select the implementation of CPU tensors."},
    {"_get_cpu_backend", get_cpu_backend, METH_NOARGS, "Name of the selected CPU backend."},
    {"_cpu_backends", cpu_backends, METH_NOARGS, "Names of the CPU backends in this build."},
    {"_cpu_kernel_isa", cpu_kernel_isa, METH_NOARGS, "Instruction set of the CPU kernels."},
    {"_take_launch_log", take_launch_log, METH_NOARGS, "Kernel paths of recent calls."},
    {"_batch_norm_train", fastbn::py_batch_norm_train, METH_VARARGS,
     "fastbn::batch_norm_train past torch.ops (eager mode; see fastbn/ops.py)."},
    {"_batch_norm_eval", fastbn::py_batch_norm_eval, METH_VARARGS,
     "fastbn::batch_norm_eval past torch.ops (eager mode; see fastbn/ops.py)."},
    {"_check_forward_args", fastbn::py_check_forward_args, METH_VARARGS,
     "The forward operators' argument checks (for the fake kernels)."},
    {"_check_backward_args", fastbn::py_check_backward_args, METH_VARARGS,
     "The backward operator's argument checks (for the fake kernel)."},
    {"_check_fused_args", fastbn::py_check_fused_args, METH_VARARGS,
     "The checks of the fused residual and activation (for the fake kernels)."},
#ifdef FASTBN_WITH_SIMT
    {"_simt_set_schedule", simt_set_schedule, METH_VARARGS, "(threads, blocks, seed) orders."},
    {"_simt_set_device", simt_set_device, METH_VARARGS, "(sm_count, blocks_per_sm, smem)."},
    {"_simt_reset_device", simt_reset_device, METH_NOARGS, "Default simulated device."},
    {"_simt_traffic", simt_traffic, METH_NOARGS, "Global-memory traffic since the reset."},
    {"_simt_reset_traffic", simt_reset_traffic, METH_NOARGS, "Zero the traffic counters."},
#endif
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
