#include "front/backend.h"

#include <c10/util/Exception.h>

#include "cpu/batch_norm_cpu.h"

namespace fastbn {

const std::vector<Backend>& cpu_backends() {
  static const std::vector<Backend> backends = {
      {"cpu", cpu::forward_train, cpu::forward_eval, cpu::backward},
#ifdef FASTBN_WITH_SIMT
      simt_backend(),
#endif
  };
  return backends;
}

namespace {
thread_local size_t current_index = 0;
}

const Backend& current_cpu_backend() { return cpu_backends()[current_index]; }

const Backend& backend_for(const at::Tensor& input) {
#ifdef FASTBN_WITH_CUDA
  if (input.is_cuda()) return cuda_backend();
#endif
  return current_cpu_backend();
}

void set_cpu_backend(const std::string& name) {
  const auto& backends = cpu_backends();
  std::string known;
  for (size_t i = 0; i < backends.size(); ++i) {
    if (name == backends[i].name) {
      current_index = i;
      return;
    }
    known += (i ? ", " : "") + std::string("'") + backends[i].name + "'";
  }
  TORCH_CHECK_VALUE(false, "fastbn: unknown backend '", name, "'; this build has ", known);
}

}  // namespace fastbn
