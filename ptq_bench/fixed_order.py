"""Reductions whose result does not depend on torch's CPU thread count (see `mean_in_fixed_order`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor

GRAIN = 32768  # torch's intra-op grain size (at::internal::GRAIN_SIZE): smaller reductions run on one thread


def in_memory_order(t: Tensor) -> Tensor:
    """t's elements as one vector in the order they lie in memory (dims by descending stride), the order in
    which torch reduces a dense tensor whatever its view: a transposed weight is read as stored."""
    order = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)
    return t.permute(order).reshape(-1)


def mean_in_fixed_order(t: Tensor) -> Tensor:
    """t.mean() over every element, summed in the same order whatever torch's thread count.

    torch splits a whole-tensor reduction of more than GRAIN elements between its threads, so the last
    bit of such a mean depends on the thread count. Where the mean is a grid's scale (BitNet's mean|W|, a
    per-tensor absmean grid, QuIP's RMS) that bit decides the rounding of every weight on a grid boundary,
    and in training a flipped weight sends the run down another path: the quickstart's b1.58 model ended
    at loss 5.663 trained on 2 threads and 5.477 on 1 (a Ray worker's count). On CPU the sum is taken as
    torch takes it on 2 threads (this project's machine, where every committed row was computed): two
    halves, each summed on one thread, added. Elsewhere (CUDA) torch's own mean, whose order does not
    depend on a CPU thread count. Elements are taken in memory order, as torch iterates a (transposed,
    permuted) tensor."""
    if t.device.type != "cpu":
        return t.mean()
    flat = in_memory_order(t)
    with torch_threads(1):
        halves = [part.sum() for part in flat.tensor_split(1 if flat.numel() <= GRAIN else 2)]
    return sum(halves[1:], halves[0]) / flat.numel()


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the enclosed CPU work on `count` torch threads, whatever the process's count, then restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lapack_threads() -> AbstractContextManager[None]:
    """The thread count CPU factorizations (Cholesky, its inverse) run on, whatever torch's own count.
    LAPACK splits their sums by thread, so GPTQ's and QuIP's inverse-Hessian factor, and with it their rows,
    moved with the thread count (a Ray task runs `cpus_per_cell` threads, a local run all cores): up to
    0.07% in the quickstart's perplexities. 2, the count of this project's machine, where every committed
    row was computed."""
    return torch_threads(2)


__all__ = ["GRAIN", "lapack_threads", "mean_in_fixed_order", "torch_threads"]
