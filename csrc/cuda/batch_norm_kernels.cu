// nvcc's copy of the kernels (the SIMT emulator compiles the same source in csrc/simt).
#define FASTBN_ENTRY_NS cuda_kernels
#include "kernels/bn_entry.cuh"
