"""The benchmark suite: which inputs are timed (shapes, dtypes, layouts, modes).

A case is one (shape, dtype, layout, mode) on one device; every provider (contender) is
timed on every case. Shapes are the BatchNorm2d inputs of real networks plus small and odd
ones that exercise the kernels' edge handling.
"""
import dataclasses
import itertools

import torch

# ResNet-50's BatchNorm2d inputs, (C, H, W) at 224×224: the stem and the output of each stage.
RESNET50_CHW = [(64, 112, 112), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
# Batch size for the ResNet-50 shapes: at 16 the two largest are 49 MiB in float32 (working
# sets of 98 MiB and more, beyond the 32-64 MiB of L3 a development machine's cores get) and
# the smallest is 6 MiB, so the suite spans in-cache and DRAM-bound sizes.
DEFAULT_BATCH = 16
# The reference shape of /work/shared/design/cpu-anchors.md (25 MiB in float32).
ANCHOR_SHAPE = (32, 64, 56, 56)
# Small and odd: a few KiB, sizes that are no multiple of any vector width, C < threads.
ODD_SHAPES = [(3, 5, 7, 11), (16, 3, 13, 17)]

PRESETS = {
    "resnet50": "the 5 BatchNorm2d inputs of ResNet-50 at batch --batch "
                "(64x112x112, 256x56x56, 512x28x28, 1024x14x14, 2048x7x7)",
    "anchor": "32x64x56x56, the reference shape of the CPU design notes",
    "odd": "3x5x7x11 and 16x3x13x17 (small, odd sizes, fewer channels than threads)",
}
DEFAULT_SHAPES = ["resnet50", "anchor", "odd"]
QUICK_SHAPES = ["anchor", "16x3x13x17"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_DTYPES = ["float32", "bfloat16", "float16"]
QUICK_DTYPES = ["float32", "bfloat16"]

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
DEFAULT_LAYOUTS = list(LAYOUTS)

MODES = {
    "forward-train": "training-mode forward (batch statistics, running-stat update); the input "
                     "requires grad, so the autograd graph is recorded as in training",
    "backward": "only the backward of a training forward recorded once before timing: "
                "torch.autograd.grad(y, (x, weight, bias), dy, retain_graph=True)",
    "forward-backward": "training forward then torch.autograd.grad(y, (x, weight, bias), dy)",
    "eval": "inference forward with running statistics, under torch.no_grad()",
}
DEFAULT_MODES = list(MODES)

# Tensors of the input's size that a mode must move at the least (reads + writes), and how
# many distinct ones it touches (its working set, for the fits-in-cache column).
MIN_TRAFFIC = {"forward-train": 2, "eval": 2, "backward": 3, "forward-backward": 5}
WORKING_SET = {"forward-train": 2, "eval": 2, "backward": 3, "forward-backward": 4}


def parse_shape(text):
    """'16x64x56x56' -> (16, 64, 56, 56)."""
    try:
        shape = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"bad shape {text!r}: expected NxCxHxW, e.g. 16x64x56x56") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"bad shape {text!r}: expected 4 positive sizes NxCxHxW")
    return shape


def expand_shapes(names, batch=DEFAULT_BATCH):
    """Preset names and NxCxHxW strings -> list of shapes, in order, without duplicates."""
    shapes = []
    for name in names:
        if name == "resnet50":
            new = [(batch, c, h, w) for c, h, w in RESNET50_CHW]
        elif name == "anchor":
            new = [ANCHOR_SHAPE]
        elif name == "odd":
            new = list(ODD_SHAPES)
        else:
            new = [parse_shape(name)]
        shapes += [s for s in new if s not in shapes]
    return shapes


def shape_str(shape):
    return "x".join(map(str, shape))


@dataclasses.dataclass(frozen=True)
class Case:
    shape: tuple
    dtype: str
    layout: str
    mode: str
    device: str

    @property
    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def input_bytes(self):
        return self.numel * DTYPES[self.dtype].itemsize

    @property
    def min_traffic_bytes(self):
        """Bytes a mode has to move at the least (read x once, write y once, ...)."""
        return MIN_TRAFFIC[self.mode] * self.input_bytes

    @property
    def working_set_bytes(self):
        return WORKING_SET[self.mode] * self.input_bytes

    @property
    def group(self):
        """Cases sharing inputs and (compiled) modules: everything but the mode."""
        return (self.shape, self.dtype, self.layout, self.device)


def build_cases(shapes, dtypes, layouts, modes, devices):
    """All combinations, grouped so that cases sharing inputs and compiled modules are adjacent."""
    return [Case(s, d, l, m, dev)
            for dev, s, d, l, m in itertools.product(devices, shapes, dtypes, layouts, modes)]
