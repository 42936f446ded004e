"""fastbn.BatchNorm1d/2d/3d: torch.nn's classes (same constructor, parameters, buffers,
state_dict) whose forward runs fastbn's fused operators; fastbn.BatchNormAct1d/2d/3d: the same
with an activation (and an optional residual) fused into the normalization."""
import torch

from . import ops
from .functional import _batch_norm


_MISSING = object()


def _member(module, table, name):
    """module.<name> for a parameter or buffer, straight from its table (nn.Module.__getattr__
    costs about 0.3 µs per lookup, a fifth of a small call); the attribute itself when the
    name is not there (e.g. a parametrized weight, which becomes a property)."""
    value = table.get(name, _MISSING)
    return getattr(module, name) if value is _MISSING else value


def _call_module_node(module, proxy, *more):
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
    return tracer.create_proxy("call_module", path, (proxy, *more), {}) if path else None


class _FastBatchNorm:
    """Mixin overriding torch.nn.modules.batchnorm._BatchNorm.forward."""

    def forward(self, input):
        return self._fused_forward(input, None, 0, 0.01)

    def _fused_forward(self, input, residual, activation, negative_slope):
        if isinstance(input, torch.fx.Proxy):
            extra = () if residual is None else (residual,)
            node = _call_module_node(self, input, *extra)
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
            activation,
            negative_slope,
            residual,
        )


class _FastBatchNormAct(_FastBatchNorm):
    """The batch norm followed by an activation, in one pass: act(bn(input) + residual).
    Parameters, buffers and state_dict are torch.nn.BatchNorm's (the activation has none)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, act="relu",
                 negative_slope=0.01):
        code = ops.activation_code(act)  # raises before any parameter is made
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self._act_code = code
        self.act = act
        self.negative_slope = negative_slope

    def forward(self, input, residual=None):
        """act(bn(input) + residual); residual: None or a tensor of the input's shape."""
        return self._fused_forward(input, residual, self._act_code, self.negative_slope)

    def extra_repr(self):
        slope = f", negative_slope={self.negative_slope}" if self.act == "leaky_relu" else ""
        return f"{super().extra_repr()}, act={self.act!r}{slope}"


class BatchNorm1d(_FastBatchNorm, torch.nn.BatchNorm1d):
    """Drop-in torch.nn.BatchNorm1d (input (N, C) or (N, C, L))."""


class BatchNorm2d(_FastBatchNorm, torch.nn.BatchNorm2d):
    """Drop-in torch.nn.BatchNorm2d (input (N, C, H, W), contiguous or channels_last)."""


class BatchNorm3d(_FastBatchNorm, torch.nn.BatchNorm3d):
    """Drop-in torch.nn.BatchNorm3d (input (N, C, D, H, W), contiguous or channels_last_3d)."""


class BatchNormAct1d(_FastBatchNormAct, torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d then an activation ('relu', 'silu', 'leaky_relu'), fused."""


class BatchNormAct2d(_FastBatchNormAct, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d then an activation ('relu', 'silu', 'leaky_relu'), fused; forward
    takes an optional residual added before the activation (a ResNet block's shortcut)."""


class BatchNormAct3d(_FastBatchNormAct, torch.nn.BatchNorm3d):
    """torch.nn.BatchNorm3d then an activation ('relu', 'silu', 'leaky_relu'), fused."""
