"""fastbn.convert_model / fastbn.revert_model: swap every torch.nn.BatchNorm1d/2d/3d of a model
for fastbn's, and back. timm's BatchNormAct2d becomes fastbn.BatchNormAct2d."""
import warnings

import torch

from . import ops
from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormAct1d, BatchNormAct2d,
                      BatchNormAct3d, _FastBatchNorm)

_TWINS = {
    torch.nn.BatchNorm1d: BatchNorm1d,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm3d: BatchNorm3d,
}
_ORIGINALS = {fast: original for original, fast in _TWINS.items()}


def _twin(module, cls):
    """A `cls` module sharing `module`'s parameters and buffers (the same tensors)."""
    new = cls.__new__(cls)
    new.__dict__ = module.__dict__.copy()
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    return new


_FUSED = ((torch.nn.BatchNorm1d, BatchNormAct1d), (torch.nn.BatchNorm2d, BatchNormAct2d),
          (torch.nn.BatchNorm3d, BatchNormAct3d))


def fused_twin(bn, act, negative_slope=0.01):
    """A fastbn.BatchNormAct{1,2,3}d sharing `bn`'s tensors (a torch.nn or fastbn BatchNorm),
    with the activation `act` ('relu', 'silu', 'leaky_relu'). Child modules are not kept."""
    cls = next(fused for base, fused in _FUSED if isinstance(bn, base))
    new = _twin(bn, cls)
    new._modules = {}
    new._act_code = ops.activation_code(act)
    new.act = act
    new.negative_slope = negative_slope
    return new


def activation_of(module):
    """(name, negative_slope) of an activation module fastbn fuses, else None."""
    if type(module) is torch.nn.ReLU:
        return "relu", 0.01
    if type(module) is torch.nn.SiLU:
        return "silu", 0.01
    if type(module) is torch.nn.LeakyReLU:
        return "leaky_relu", module.negative_slope
    return None


def _is_timm_bn_act(module):
    cls = type(module)
    return cls.__name__ == "BatchNormAct2d" and cls.__module__.startswith("timm.")


class _BatchNormThenAct(BatchNorm2d):
    """fastbn.BatchNorm2d followed by a timm BatchNormAct2d's own drop and act modules (an
    activation fastbn does not fuse, or a drop that is not Identity): the same state_dict keys
    as timm's module."""

    def forward(self, input):
        return self.act(self.drop(super().forward(input)))


def _convert_timm(module):
    act = activation_of(module.act) if getattr(module, "act", None) is not None else None
    plain_act = type(getattr(module, "act", None)) is torch.nn.Identity
    no_drop = type(getattr(module, "drop", torch.nn.Identity())) is torch.nn.Identity
    if no_drop and act is not None:
        return fused_twin(module, *act)
    if no_drop and plain_act:
        new = _twin(module, BatchNorm2d)
        new._modules = {}
        return new
    return _twin(module, _BatchNormThenAct)


def _swap(module, table, convert_timm):
    if type(module) in table:
        return _twin(module, table[type(module)])
    if convert_timm and _is_timm_bn_act(module):
        return _convert_timm(module)
    if (convert_timm and isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            and not isinstance(module, _FastBatchNorm)):
        warnings.warn(f"fastbn.convert_model: {type(module).__module__}.{type(module).__name__} "
                      "is a BatchNorm subclass fastbn does not know; left unchanged", stacklevel=3)
        return module
    for name, child in module.named_children():
        swapped = _swap(child, table, convert_timm)
        if swapped is not child:
            setattr(module, name, swapped)
    return module


def convert_model(module):
    """Return `module` with every torch.nn.BatchNorm1d/2d/3d (exact types) replaced by its
    fastbn twin, and every timm BatchNormAct2d by fastbn.BatchNormAct2d when its activation is
    ReLU, SiLU or LeakyReLU and its drop is Identity (else by fastbn.BatchNorm2d followed by
    the module's own drop and act). Other subclasses of BatchNorm (SyncBatchNorm,
    LazyBatchNorm*, ...) are left alone, with a warning.

    Parameters and buffers are the same tensors, so the training flag, device, dtype and
    state_dict keys are unchanged and an optimizer built before the conversion still works.
    A BatchNorm passed directly is converted and returned.
    """
    return _swap(module, _TWINS, convert_timm=True)


def revert_model(module):
    """The inverse of convert_model for fastbn.BatchNorm1d/2d/3d: each becomes the torch.nn
    module it stands for, sharing the same tensors. For tools that know only torch.nn's classes
    (torch.jit.script, torch.ao.quantization.fuse_modules, exporters without fastbn's ops) and
    for handing the model to code without fastbn installed. (Fused BatchNormAct modules are
    left as they are: torch.nn has no such class.)"""
    return _swap(module, _ORIGINALS, convert_timm=False)

