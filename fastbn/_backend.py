"""fastbn.backend: choose the implementation that CPU tensors run on."""
import contextlib

from . import _C


def available_backends():
    """Names of the CPU backends compiled into this build ("cpu" is the C++ CPU kernels)."""
    return list(_C._cpu_backends())


@contextlib.contextmanager
def backend(name):
    """Run fastbn's ops on CPU tensors with backend `name` inside the block:

        with fastbn.backend("cpu"):
            y = bn(x)

    Raises ValueError for a name this build does not have. The choice is per thread.
    """
    if not isinstance(name, str) or name not in available_backends():
        raise ValueError(f"fastbn: unknown backend {name!r}; this build has "
                         f"{', '.join(map(repr, available_backends()))}")
    previous = _C._get_cpu_backend()
    _C._set_cpu_backend(name)
    try:
        yield
    finally:
        _C._set_cpu_backend(previous)
