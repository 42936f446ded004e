"""fastbn.BatchNorm1d/2d/3d: torch.nn's classes (same constructor, parameters, buffers,
state_dict) whose forward runs fastbn's fused operators."""
import torch

from .functional import _batch_norm


_MISSING = object()


def _member(module, table, name):
    """module.<name> for a parameter or buffer, straight from its table (nn.Module.__getattr__
    costs about 0.3 µs per lookup, a fifth of a small call); the attribute itself when the
    name is not there (e.g. a parametrized weight, which becomes a property)."""
    value = table.get(name, _MISSING)
    return getattr(module, name) if value is _MISSING else value


def _call_module_node(module, proxy):
    """What torch.fx.symbolic_trace records for torch.nn's BatchNorm, a leaf module: a
    call_module node, so that the traced GraphModule's .train()/.eval() still switch the mode.
    FX takes only modules defined in torch.nn as leaves and traces into fastbn's forward, whose
    graph would fix the mode at trace time (and whose rank check would branch on a Proxy).
    None when there is no module to name: the module is the traced root itself, or the proxy
    comes from a graph rather than a Tracer; then the forward is traced through."""
    tracer = proxy.tracer
    if not isinstance(tracer, torch.fx.Tracer):
        return None
    path = tracer.path_of_module(module)
    return tracer.create_proxy("call_module", path, (proxy,), {}) if path else None


class _FastBatchNorm:
    """Mixin overriding torch.nn.modules.batchnorm._BatchNorm.forward."""

    def forward(self, input):
        if isinstance(input, torch.fx.Proxy):
            node = _call_module_node(self, input)
            if node is not None:
                return node
        else:
            self._check_input_dim(input)
        params, buffers = self._parameters, self._buffers
        running_mean = _member(self, buffers, "running_mean")
        running_var = _member(self, buffers, "running_var")
        # Same mode logic as torch.nn: running stats are used in eval when present, and
        # updated in training when tracked; eval without them normalizes with batch stats.
        tracking = self.training and self.track_running_stats
        use_batch_stats = self.training or (running_mean is None and running_var is None)
        keep_stats = not self.training or self.track_running_stats
        return _batch_norm(
            input,
            running_mean if keep_stats else None,
            running_var if keep_stats else None,
            _member(self, params, "weight"),
            _member(self, params, "bias"),
            use_batch_stats,
            self.momentum,
            self.eps,
            _member(self, buffers, "num_batches_tracked") if tracking else None,
        )


class BatchNorm1d(_FastBatchNorm, torch.nn.BatchNorm1d):
    """Drop-in torch.nn.BatchNorm1d (input (N, C) or (N, C, L))."""


class BatchNorm2d(_FastBatchNorm, torch.nn.BatchNorm2d):
    """Drop-in torch.nn.BatchNorm2d (input (N, C, H, W), contiguous or channels_last)."""


class BatchNorm3d(_FastBatchNorm, torch.nn.BatchNorm3d):
    """Drop-in torch.nn.BatchNorm3d (input (N, C, D, H, W), contiguous or channels_last_3d)."""
