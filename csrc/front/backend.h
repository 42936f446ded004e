// Which implementation CPU tensors run on (fastbn.backend(name) in Python). Thread-local, like
// a context manager's scope: it is read when an op is called, not when a graph is traced.
#pragma once

#include <string>
#include <vector>

#include "front/bn_args.h"

namespace fastbn {

struct Backend {
  const char* name;
  void (*forward_train)(const TrainForwardArgs&);
  void (*forward_eval)(const EvalForwardArgs&);
  void (*backward)(const BackwardArgs&);
};

// The backend for the input's device: the CUDA kernels for CUDA tensors, else the selected
// CPU backend.
const Backend& backend_for(const at::Tensor& input);

// The CUDA backend (csrc/cuda), in builds with FASTBN_WITH_CUDA.
const Backend& cuda_backend();
// The CUDA kernels run by the SIMT emulator on CPU tensors (csrc/simt), with FASTBN_WITH_SIMT.
const Backend& simt_backend();

// The CPU backends compiled into this build, "cpu" first.
const std::vector<Backend>& cpu_backends();
const Backend& current_cpu_backend();
// Throws c10::ValueError for a name not in cpu_backends().
void set_cpu_backend(const std::string& name);

}  // namespace fastbn
