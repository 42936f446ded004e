// The fused CPU backend: at::parallel_for over cache-sized pieces of each channel.
#pragma once

#include "front/bn_args.h"

namespace fastbn::cpu {

void forward_train(const TrainForwardArgs& args);
void forward_eval(const EvalForwardArgs& args);
void backward(const BackwardArgs& args);

// Name of the kernel table in use (the best this CPU supports, capped by FASTBN_CPU_ISA).
const char* kernel_isa();

}  // namespace fastbn::cpu
