"""How the benchmark process gets the memory of large CPU tensors.

With glibc's default settings every block above its mmap threshold (at most 32 MiB) is a
fresh mmap, and freeing it unmaps it: the next call's output is faulted in and zeroed by the
kernel page by page. On this project's 2-core machine a 49 MiB `x.clone()` takes about 24 ms
that way against 2.6 ms for `copy_` into an existing tensor, so in every batch-norm call
with outputs that large the page faults, not the kernel, are what gets timed; and they cost
the same for every contender.

"steady" (the default) runs the benchmark with glibc serving large blocks from its heap and
keeping freed memory, as in a training loop under tcmalloc or jemalloc (which
`torch.backends.xeon.run_cpu` preloads when it finds them, for the same reason): from the
second call on, an output reuses the memory the previous one freed. Every contender
allocates the same way, and copy_ keeps its preallocated destination. The settings are glibc
tunables, read only at process start, so the command re-executes itself once with them; the
thread cache and fast bins are off because the small remainders they hold, split off by
aligned allocations, would keep a freed block from merging back to the size the next call
asks for. "system" leaves the allocator as it is.
"""
import os
import platform
import sys

POLICIES = {
    "steady": "glibc keeps freed memory: outputs reuse it instead of page-faulting fresh "
              "mmaps (default)",
    "system": "the process's allocator unchanged (outputs above 32 MiB page-fault on every "
              "call)",
}

TUNABLES = {
    "glibc.malloc.mmap_max": "0",                 # no mmap: large blocks from the heap
    "glibc.malloc.trim_threshold": str(1 << 30),  # keep freed memory (up to 1 GiB on top)
    "glibc.malloc.tcache_count": "0",
    "glibc.malloc.mxfast": "0",
}
_MARK = "FASTBN_BENCH_ALLOCATOR"


def _with_tunables(existing):
    kept = [t for t in (existing or "").split(":") if t and t.split("=")[0] not in TUNABLES]
    return ":".join(kept + [f"{k}={v}" for k, v in TUNABLES.items()])


def reexec_with(policy, argv):
    """For "steady" on glibc, re-executes `python -m fastbn.bench argv` with the tunables set
    (once: the marker in the environment stops a second time). Returns only if no re-exec."""
    if policy != "steady" or os.environ.get(_MARK) or platform.libc_ver()[0] != "glibc":
        return
    env = dict(os.environ, GLIBC_TUNABLES=_with_tunables(os.environ.get("GLIBC_TUNABLES")))
    env[_MARK] = policy
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fastbn.bench", *argv], env)


def in_effect():
    """What this process runs with, for the result file."""
    if os.environ.get(_MARK) == "steady":
        return "steady (GLIBC_TUNABLES " + ", ".join(f"{k.split('.')[-1]}={v}"
                                                      for k, v in TUNABLES.items()) + ")"
    return "system"
