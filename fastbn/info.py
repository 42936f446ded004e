"""python -m fastbn.info: what this fastbn build is and what it runs on."""
import platform

import torch


def cpu_kernel_isa():
    """Instruction set of the CPU kernels in use: the best this CPU supports, at most
    FASTBN_CPU_ISA when set."""
    from fastbn import _C
    return _C._cpu_kernel_isa()


def build_report():
    """Lines describing the build (as recorded by setup.py) and the machine."""
    import fastbn
    from fastbn import _build_info as b
    from fastbn._backend import available_backends

    cuda = (f"compiled against CUDA {b.CUDA_VERSION} for architectures {b.CUDA_ARCHS}"
            if "cuda" in b.BACKENDS else "not compiled (CPU-only build)")
    gpu = (torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible")
    return [
        f"fastbn {fastbn.__version__}",
        f"built against torch {b.TORCH_VERSION}; running torch {torch.__version__}",
        f"backends compiled: {', '.join(b.BACKENDS)}",
        f"CPU backends (fastbn.backend): {', '.join(available_backends())}",
        f"CUDA: {cuda}",
        f"GPU: {gpu}",
        f"CPU: {platform.machine()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads",
        f"CPU kernels: {cpu_kernel_isa()} (FASTBN_CPU_ISA=avx512bf16|avx512|avx2|default caps it)",
        f"C++ flags: {' '.join(b.CPU_FLAGS)}",
    ]


def main():
    print("\n".join(build_report()))


if __name__ == "__main__":
    main()
