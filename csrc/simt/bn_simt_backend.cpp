#include "simt/bn_simt_backend.h"

#include <ATen/ATen.h>

#include "front/backend.h"
#include "front/kernel_glue.h"
#include "simt/control.h"

namespace fastbn {
namespace {

void* no_stream(const at::Tensor&) { return nullptr; }

// The emulator runs launches one at a time to completion, so one buffer serves every call.
unsigned* counters(const at::Tensor&, size_t count) {
  static at::Tensor buffer;
  if (!buffer.defined() || buffer.numel() < int64_t(count))
    buffer = at::zeros({int64_t(std::max<size_t>(count, 1024))}, at::TensorOptions().dtype(at::kInt));
  return reinterpret_cast<unsigned*>(buffer.data_ptr<int>());
}

const KernelTarget target{simt_kernels::forward_train, simt_kernels::forward_eval,
                          simt_kernels::backward, no_stream, counters};

void forward_train(const TrainForwardArgs& a) { run_forward_train(target, a); }
void forward_eval(const EvalForwardArgs& a) { run_forward_eval(target, a); }
void backward(const BackwardArgs& a) { run_backward(target, a); }

}  // namespace

const Backend& simt_backend() {
  static const Backend backend{"simt", forward_train, forward_eval, backward};
  return backend;
}

namespace simt_control {

void set_schedule(const std::string& threads, const std::string& blocks, uint64_t seed) {
  simt::Schedule s;
  s.threads = simt::parse_order(threads);
  s.blocks = simt::parse_order(blocks);
  s.seed = seed;
  simt::set_schedule(s);
}

void set_device(int sm_count, int max_blocks_per_sm, int64_t max_smem_per_block) {
  simt::Device d;
  d.sm_count = sm_count;
  d.max_blocks_per_sm = max_blocks_per_sm;
  d.max_smem_per_block = size_t(max_smem_per_block);
  simt::set_device(d);
}

void reset_device() { simt::set_device(simt::Device{}); }

TrafficTotals traffic_since_reset() {
  const simt::Traffic t = simt::total_traffic();
  return {t.bytes_read, t.bytes_written, t.atomics, t.launches};
}

void reset_traffic() { simt::reset_traffic(); }

}  // namespace simt_control
}  // namespace fastbn
