// The Python extension module fastbn._C. Importing it runs the TORCH_LIBRARY registrations;
// the functions below only select the CPU backend (fastbn.backend in Python).
#include <Python.h>

#include <c10/util/Exception.h>

#include "front/backend.h"

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

PyMethodDef methods[] = {
    {"_set_cpu_backend", set_cpu_backend, METH_O, "Select the implementation of CPU tensors."},
    {"_get_cpu_backend", get_cpu_backend, METH_NOARGS, "Name of the selected CPU backend."},
    {"_cpu_backends", cpu_backends, METH_NOARGS, "Names of the CPU backends in this build."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
