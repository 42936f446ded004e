"""fastbn.fuse_activations: an opt-in torch.fx pass that fuses `bn → act` and
`bn → add → act` into fastbn.BatchNormAct modules (one pass over memory instead of three)."""
import operator

import torch
import torch.nn.functional as F

from .convert import activation_of, fused_twin

_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
_ADDS = (operator.add, operator.iadd, torch.add)


def _exact_batch_norm(module):
    """A torch.nn or fastbn BatchNorm1d/2d/3d (not a subclass with other behaviour)."""
    from . import modules
    return type(module) in _BATCH_NORMS or type(module) in (
        modules.BatchNorm1d, modules.BatchNorm2d, modules.BatchNorm3d)


def _activation(node, modules):
    """(name, negative_slope) when node applies an activation fastbn fuses to its first
    argument, else None."""
    if node.op == "call_module":
        return activation_of(modules[node.target])
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu):
            return "relu", 0.01
        if node.target in (F.silu,):
            return "silu", 0.01
        if node.target is F.leaky_relu:
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            return ("leaky_relu", slope) if isinstance(slope, (int, float)) else None
    if node.op == "call_method" and node.target == "relu":
        return "relu", 0.01
    return None


def _is_add(node):
    if node.op == "call_function" and node.target in _ADDS:
        return len(node.args) == 2 and not node.kwargs
    return node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2 \
        and not node.kwargs


def fuse_activations(model):
    """Return a torch.fx.GraphModule of `model` in which every BatchNorm (torch.nn's or
    fastbn's BatchNorm1d/2d/3d, called once) followed only by a ReLU, SiLU or LeakyReLU, or by
    an addition and then one of those (a ResNet block's `bn2 → += identity → relu`; nn.Identity
    modules between them are passed over), is one
    fastbn.BatchNormAct module: act(bn(x) + residual). The fused module shares the
    BatchNorm's parameters and buffers and takes its name, so state_dict keys do not change.

    The addition's other operand must have the BatchNorm output's shape (the fused op checks it
    at run time). The model must be traceable by torch.fx.symbolic_trace.
    """
    gm = model if isinstance(model, torch.fx.GraphModule) else torch.fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _exact_batch_norm(modules[node.target]):
            continue
        if calls[node.target] != 1 or len(node.users) != 1 or len(node.args) != 1:
            continue
        (after,) = node.users
        # nn.Identity between them (timm's drop_block when it is off) is passed over
        skipped = []
        while (after.op == "call_module" and type(modules[after.target]) is torch.nn.Identity
               and len(after.users) == 1):
            skipped.append(after)
            (after,) = after.users
        source = skipped[-1] if skipped else node  # what `after` reads
        residual = None
        if _is_add(after) and len(after.users) == 1 and after.args.count(source) == 1:
            residual = after.args[1] if after.args[0] is source else after.args[0]
            if not isinstance(residual, torch.fx.Node):
                continue
            (act_node,) = after.users
        else:
            act_node, after = after, None
        act = _activation(act_node, modules)
        if act is None or act_node.args[0] is not (after if after is not None else source):
            continue
        fused = fused_twin(modules[node.target], *act)
        _set_submodule(gm, node.target, fused)
        modules[node.target] = fused
        if residual is not None:
            after.prepend(node)  # after the residual's computation (e.g. a downsample branch)
            node.args = (node.args[0], residual)
        act_node.replace_all_uses_with(node)
        gm.graph.erase_node(act_node)
        if after is not None:
            gm.graph.erase_node(after)
        for identity in reversed(skipped):
            gm.graph.erase_node(identity)
    gm.graph.lint()
    gm.recompile()
    return gm


def _set_submodule(root, target, module):
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
