// One inline namespace per compilation target. The kernel templates, their launchers and the
// shared math are compiled by nvcc (the GPU build), by g++ under the SIMT emulator, and (the
// math) by g++ for the CPU backend, all linked into one library: without distinct namespaces
// the identical mangled names of their instantiations would be merged by the linker, and the
// emulator could end up calling the CUDA host stubs.
#pragma once

#if defined(__CUDACC__)
#define FASTBN_TARGET_NS cuda_target
#elif defined(FASTBN_SIMT)
#define FASTBN_TARGET_NS simt_target
#else
#define FASTBN_TARGET_NS host_target
#endif
