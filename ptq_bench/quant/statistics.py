"""Calibration statistics, and how the block runner feeds them (`calibrate.run_blockwise`).

A statistic is an object with `.add(x)` that sees every calibration input vector of one linear: GPTQ's
and QuIP's Hessian, SmoothQuant's per-channel max|x|. Linears that read one input tensor share one
statistic (`SharedInputs`); `take_stat` hands statistics to the solvers.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ptq_bench.errors import QuantError
from ptq_bench.quant.linears import weight_matrix


class Hessian:
    """H = (2/n) sum_x x x^T over every input vector x (float32), as GPTQ's `add_batch`.

    n counts token vectors (the reference counts sequences; the scale cancels in every solver here).
    """

    def __init__(self, cols: int, device: torch.device | str = "cpu") -> None:
        self.H = torch.zeros(cols, cols, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, cols)
        self.H *= self.n / (self.n + x.shape[0])
        self.n += x.shape[0]
        x = x * math.sqrt(2 / self.n)
        self.H += x.T @ x


class ChannelAbsMax:
    """Per input channel max|x| over every calibration vector (SmoothQuant's act_scales). `required` False:
    an input that never comes is no error (an expert no token reached; its norm's maximum is the others')."""

    def __init__(self, cols: int, device: torch.device | str = "cpu", required: bool = True) -> None:
        self.amax = torch.zeros(cols, device=device)
        self.required = required

    def add(self, x: torch.Tensor) -> None:
        self.amax = torch.maximum(self.amax, x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float())


class SharedInputs:
    """Statistic hooks that accumulate each distinct input once: linears that read one tensor (q/k/v after
    the attention norm, gate/up after the MLP norm) share one statistic object, fed once per batch instead
    of once per linear. The values are the same as separate statistics' (a statistic depends only on the
    inputs it is given). Decided on the first batch: the same tensor object, unchanged since (its version
    counter), and the same statistic type; a later batch that breaks that is an error, never a wrong sum.
    `take_stat` hands a shared statistic to its consumers (copies to all but the last)."""

    def __init__(self, stats: dict[str, Any], share: bool = True) -> None:
        self.stats, self.share = stats, share
        self.leader: dict[str, str] = {}  # linear -> the linear whose statistic it uses (itself: its own)
        self.seen: dict[str, tuple[weakref.ref, int]] = {}  # leader -> (latest input, its version then)

    def _reads(self, lead: str, x: torch.Tensor) -> bool:
        """Is `x` the input `lead` last added, unchanged?"""
        ref, version = self.seen[lead]
        return ref() is x and version == _version(x)

    def _choose(self, name: str, x: torch.Tensor) -> str:
        same = (lead for lead in self.seen if self._reads(lead, x) and type(self.stats[lead]) is type(self.stats[name]))
        return next(same, name) if self.share else name

    def hook(self, name: str) -> Callable:
        """A forward pre-hook for linear `name` (its input is all a statistic needs)."""
        def on_input(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if name not in self.leader:
                self.leader[name] = self._choose(name, x)
                self.stats[name] = self.stats[self.leader[name]]
            lead = self.leader[name]
            if lead == name:
                self.stats[name].add(x)
                self.seen[name] = (weakref.ref(x), _version(x))  # weak: the input is not kept alive
            elif not self._reads(lead, x):
                raise QuantError(f"{name} read {lead}'s input on the first calibration batch but not on a later "
                                 "one; their shared statistic would be wrong")
        return on_input


def _version(x: torch.Tensor) -> int:
    return -1 if x.is_inference() else x._version  # inference tensors keep no version counter


def take_stat(stats: dict[str, Any], *names: str) -> Any:
    """Pop the statistic of `names` (linears solved together share it; None if they have none): a solver may
    consume it (GPTQ factors its Hessian in place), so one still shared with a linear not yet solved is
    handed over as a copy."""
    stat = [stats.pop(name, None) for name in names][0]
    if stat is not None and any(s is stat for s in stats.values()):
        stat = copy.deepcopy(stat)
    return stat


def stat_inputs(linear: nn.Module) -> int:
    """Input features of a linear or Conv1D (the size of its statistics)."""
    return weight_matrix(linear).shape[1]
