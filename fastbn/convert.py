"""fastbn.convert_model: swap every torch.nn.BatchNorm1d/2d/3d of a model for fastbn's."""
import torch

from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d

_TWINS = {
    torch.nn.BatchNorm1d: BatchNorm1d,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm3d: BatchNorm3d,
}


def _twin(module):
    """The fastbn module sharing `module`'s parameters and buffers (the same tensors)."""
    cls = _TWINS[type(module)]
    new = cls.__new__(cls)
    new.__dict__ = module.__dict__.copy()
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    return new


def convert_model(module):
    """Return `module` with every torch.nn.BatchNorm1d/2d/3d (exact types: subclasses such as
    SyncBatchNorm or LazyBatchNorm are left alone) replaced by its fastbn twin.

    Parameters and buffers are the same tensors, so the training flag, device, dtype and
    state_dict keys are unchanged and an optimizer built before the conversion still works.
    A BatchNorm passed directly is converted and returned.
    """
    if type(module) in _TWINS:
        return _twin(module)
    for name, child in module.named_children():
        converted = convert_model(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
