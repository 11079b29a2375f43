"""Counting the kernels a piece of PyTorch code launches, for the benchmarks whose cost on a GPU is launches
(gptq_loop.py, bitlinear_kernel.py --float-path): a device-independent figure measured on any machine."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class KernelCount(TorchDispatchMode):
    """Counts dispatched aten operations that are not views (each launches a kernel on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.n += not func.is_view
        return func(*args, **(kwargs or {}))
