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

// The backends compiled into this build, "cpu" first.
const std::vector<Backend>& cpu_backends();
const Backend& current_cpu_backend();
// Throws c10::ValueError for a name not in cpu_backends().
void set_cpu_backend(const std::string& name);

}  // namespace fastbn
