// The SIMT emulator: CUDA kernels compiled by g++, each CUDA thread a fiber. Kernel code
// includes csrc/kernels/device_compat.cuh (which includes cuda_api.h); host code that only
// controls the emulator (schedules, simulated device, traffic counters) may include this file.
// See README.md.
#pragma once

#include "barrier.h"
#include "control.h"
#include "error.h"
#include "launch.h"
#include "memory.h"
#include "scheduler.h"
#include "warp.h"
