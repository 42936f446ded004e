"""What the benchmark ran on: recorded with every result file."""
import os
import platform
import re
import subprocess
import time

import torch


def _run(cmd, cwd=None):
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _size_bytes(text):
    """'32 MiB (1 instance)' -> bytes of one instance (lscpu prints totals over instances)."""
    m = re.match(r"\s*([\d.]+)\s*([KMG]i?B?)\s*(?:\((\d+) instances?\))?", text or "")
    if not m:
        return None
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)[0]]
    return int(float(m.group(1)) * scale) // int(m.group(3) or 1)


def lscpu():
    """Model name and cache sizes (per instance, in bytes) from lscpu, if it is there."""
    out = _run(["lscpu"]) or ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info = {"cpu_model": fields.get("Model name")}
    for key, name in [("L1d cache", "l1d"), ("L2 cache", "l2"), ("L3 cache", "l3")]:
        if key in fields:
            info[f"{name}_bytes"] = _size_bytes(fields[key])
            info[f"{name}_lscpu"] = fields[key]
    return info


def cache_speed_limit_bytes(reported_bytes, floor_mib=8, factor=0.85):
    """Largest copy_ working set (input + output) still copied at cache speed, in bytes; None
    if copy_ never slowed down within the sizes tried.

    A virtual machine reports its host's whole L3 (480 MiB on one development machine) while
    its own share is much smaller, so whether a case "fits the LLC" is measured: copy_ of
    floor_mib MiB sets the cache-speed bandwidth, then the size doubles until copy_ (the best
    of 9 calls) runs below `factor` of it. The sizes stop at twice the reported L3 and at a
    sixteenth of the RAM (at most 1 GiB of working set); a copy_ that never slows down there
    means floor_mib was already beyond the cache (or the cache beyond the sizes), so no
    measurement is returned.
    """
    ram = memory_bytes() or 2**34
    limit = min(2 * (reported_bytes or 2**29), ram // 16, 2**30)

    def gbps(mib):
        a = torch.ones(mib << 18)  # mib MiB of float32
        b = torch.empty_like(a)
        b.copy_(a)  # page in both
        times = []
        for _ in range(9):  # the best of several: a working set reaches the cache gradually
            t0 = time.perf_counter()
            b.copy_(a)
            times.append(time.perf_counter() - t0)
        return 2 * (mib << 20) / min(times) / 1e9

    reference = gbps(floor_mib)
    mib = floor_mib
    while 2 * (2 * mib << 20) <= limit:
        if gbps(2 * mib) < factor * reference:
            return 2 * mib << 20
        mib *= 2
    return None


def memory_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cuda_peak_gbps(index=0):
    """Theoretical DRAM bandwidth: 2 transfers per memory clock × bus width."""
    props = torch.cuda.get_device_properties(index)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def fastbn_info():
    import fastbn
    from fastbn import _build_info
    src = os.path.dirname(os.path.dirname(os.path.abspath(fastbn.__file__)))
    from fastbn.info import cpu_kernel_isa
    return {"fastbn_version": fastbn.__version__,
            "fastbn_backends": list(_build_info.BACKENDS),
            "fastbn_cpu_kernels": cpu_kernel_isa(),
            "fastbn_git": _run(["git", "describe", "--always", "--dirty"], cwd=src)}


def machine_info(devices):
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_bytes": memory_bytes(),
        "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **lscpu(),
        **fastbn_info(),
    }
    if "cpu" in devices:
        info["l3_cache_speed_bytes"] = cache_speed_limit_bytes(info.get("l3_bytes"))
    if any(d.startswith("cuda") for d in devices):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}",
                    gpu_l2_bytes=getattr(props, "L2_cache_size", None),
                    gpu_peak_gbps=cuda_peak_gbps(0))
    return info


def last_level_cache(info, device):
    """Bytes of the cache a working set has to fit in to stay on chip between calls."""
    if device.startswith("cuda"):
        return info.get("gpu_l2_bytes")
    sizes = [b for b in (info.get("l3_bytes"), info.get("l3_cache_speed_bytes")) if b]
    return min(sizes) if sizes else None


def describe(info):
    """One or two lines for the top of the table."""
    mib = lambda b: f"{b / 2**20:g} MiB" if b else "?"  # noqa: E731
    ram = (info.get("memory_bytes") or 0) / 2**30
    l3_speed = (f" (copy_ at cache speed up to a {mib(info['l3_cache_speed_bytes'])} working set)"
                if info.get("l3_cache_speed_bytes") else "")
    line = (f"{info.get('cpu_model') or platform.machine()}: {info['cpu_count']} cores, "
            f"{info['torch_threads']} torch threads, {info['cpu_capability']}, "
            f"L2 {mib(info.get('l2_bytes'))}/core, L3 {mib(info.get('l3_bytes'))}"
            f"{l3_speed}, "
            f"RAM {ram:.0f} GiB; torch {info['torch_version']}, "
            f"fastbn {info['fastbn_version']} ({info.get('fastbn_git') or 'no git'}"
            f"{', CPU kernels ' + info['fastbn_cpu_kernels'] if info.get('fastbn_cpu_kernels') else ''})")
    if info.get("cpu_allocator"):
        line += f"\nCPU allocator: {info['cpu_allocator']}"
    if info.get("gpu"):
        line += (f"\nGPU {info['gpu']} (sm {info['gpu_capability']}), "
                 f"peak {info.get('gpu_peak_gbps') or 0:.0f} GB/s")
    return line
