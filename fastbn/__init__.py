"""fastbn: fused batch-normalization kernels for PyTorch, as drop-in modules.

    model = fastbn.convert_model(model)          # every nn.BatchNorm1d/2d/3d → fastbn
    model = fastbn.revert_model(model)           # and back to torch.nn (same tensors)
    bn = fastbn.BatchNorm2d(64)                  # or one module at a time
    bn_relu = fastbn.BatchNormAct2d(64, act="relu")   # bn then relu in one pass: bn_relu(x, residual)
    model = fastbn.fuse_activations(model)       # FX: bn → (add →) relu becomes BatchNormAct
    y = fastbn.functional.batch_norm(x, rm, rv, w, b, training=True)
"""
import torch

from . import _build_info


def _check_torch_version():
    # The C++ extension links against one torch's ABI; a different torch would fail with an
    # undefined-symbol error that tells the user nothing.
    built, have = _build_info.TORCH_VERSION, torch.__version__
    if built != have:
        raise ImportError(
            f"fastbn was built for torch {built}, but you have torch {have}. Rebuild fastbn "
            "against the installed torch: pip install --no-build-isolation --force-reinstall "
            "--no-deps <path to fastbn>")


_check_torch_version()

from . import _C  # noqa: E402  (registers the fastbn:: operators)
from . import ops  # noqa: E402,F401  (fake kernels for torch.compile)
from . import functional, reference  # noqa: E402,F401
from ._backend import backend  # noqa: E402
from .convert import convert_model, revert_model  # noqa: E402
from .fuse import fuse_activations  # noqa: E402
from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormAct1d,  # noqa: E402
                      BatchNormAct2d, BatchNormAct3d)

__version__ = _build_info.VERSION

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct1d", "BatchNormAct2d",
           "BatchNormAct3d", "backend", "fuse_activations", "convert_model", "functional",
           "reference", "revert_model", "__version__"]
