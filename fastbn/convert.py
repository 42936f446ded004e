"""fastbn.convert_model / fastbn.revert_model: swap every torch.nn.BatchNorm1d/2d/3d of a model
for fastbn's, and back."""
import torch

from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d

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


def _swap(module, table):
    if type(module) in table:
        return _twin(module, table[type(module)])
    for name, child in module.named_children():
        swapped = _swap(child, table)
        if swapped is not child:
            setattr(module, name, swapped)
    return module


def convert_model(module):
    """Return `module` with every torch.nn.BatchNorm1d/2d/3d (exact types: subclasses such as
    SyncBatchNorm or LazyBatchNorm are left alone) replaced by its fastbn twin.

    Parameters and buffers are the same tensors, so the training flag, device, dtype and
    state_dict keys are unchanged and an optimizer built before the conversion still works.
    A BatchNorm passed directly is converted and returned.
    """
    return _swap(module, _TWINS)


def revert_model(module):
    """The inverse of convert_model: every fastbn.BatchNorm1d/2d/3d becomes the torch.nn module
    it stands for, sharing the same tensors. For tools that know only torch.nn's classes
    (torch.jit.script, torch.ao.quantization.fuse_modules, exporters without fastbn's ops) and
    for handing the model to code without fastbn installed."""
    return _swap(module, _ORIGINALS)
