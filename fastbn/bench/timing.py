"""Interleaved timing of several contenders on one case.

After warm-up, each contender's block size (calls per timed block) is calibrated so that a
block lasts about `block_s`. Then `rounds` rounds run; in each round every contender in turn
times `blocks` blocks, in an order shuffled afresh every round (from a seed the caller gives
per case, so runs repeat it), so that slow drift of the machine (frequency, other processes)
affects all contenders alike and none always follows the same one. (A rotating start keeps
the cyclic order: one contender always followed copy_, into a cache full of copy_'s dirty
output, and paid for it by a few % on cache-resident cases.) A sample is one block's time
divided by its calls; the statistics are over all samples. A call longer than a block is
timed alone, and fewer times per turn (at least once per round).

Each turn starts with one untimed block of the contender, so that its timed blocks find the
cache as its own calls leave it rather than as the previous contender left it: a contender
that follows copy_ or one that writes a different output would otherwise pay for writing
back their dirty lines and re-reading its own (seen on a KVM guest: up to 40% on a
24.5 MiB input that fits the guest's share of L3 together with its output).

CPU blocks are timed with time.perf_counter; CUDA blocks with CUDA events after a
synchronize (the launch queue is drained before each block, and the end event is waited on).
"""
import gc
import random
import time

import numpy as np
import torch


class Clock:
    """Times a block of calls on one device, in seconds."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def block(self, fn, calls):
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - t0


def calibrate(clock, fn, block_s, max_calls=100_000):
    """(calls per block so that a block lasts about block_s, at least one call; seconds
    per call)."""
    calls = 1
    while True:
        t = clock.block(fn, calls)
        if t >= block_s / 4 or calls >= max_calls:
            break
        calls *= 4
    per_call = max(t, 1e-9) / calls
    return max(1, min(max_calls, round(block_s / per_call))), per_call


def summarize(samples):
    """Seconds per call -> statistics in milliseconds."""
    a = np.asarray(samples) * 1e3
    p20, p50, p80 = np.percentile(a, [20, 50, 80])
    return {"median_ms": float(p50), "p20_ms": float(p20), "p80_ms": float(p80),
            "min_ms": float(a.min()), "samples": len(a)}


def measure(fns, clock, rounds=10, blocks=3, block_s=0.01, seed=0):
    """Time {name: fn} interleaved; returns {name: statistics (see summarize) + calls/block}."""
    names = list(fns)
    order = random.Random(seed)
    calls, turns = {}, {}
    for n in names:
        calls[n], per_call = calibrate(clock, fns[n], block_s)
        # A call longer than a block is a block of its own; then a turn takes fewer blocks, so
        # that a turn lasts about blocks × block_s (at least one block).
        turns[n] = max(1, min(blocks, round(blocks * block_s / (calls[n] * per_call))))
    samples = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for n in order.sample(names, len(names)):
                clock.block(fns[n], calls[n])  # untimed: see the module docstring
                for _ in range(turns[n]):
                    samples[n].append(clock.block(fns[n], calls[n]) / calls[n])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {n: dict(summarize(samples[n]), calls_per_block=calls[n]) for n in names}
