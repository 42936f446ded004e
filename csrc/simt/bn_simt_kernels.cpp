// The CUDA kernels of csrc/kernels compiled by g++ under the SIMT emulator: the same source
// nvcc compiles in csrc/cuda/batch_norm_kernels.cu, executed on the CPU (fastbn.backend("simt")).
#define FASTBN_SIMT 1
#define FASTBN_ENTRY_NS simt_kernels
#include "kernels/bn_entry.cuh"
