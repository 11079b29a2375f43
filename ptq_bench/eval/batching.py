"""Cutting rows (sorted longest first) into right-padded forwards with the least padded work.

A forward of rows r_i .. r_{j-1} costs (j - i) x len(r_i) token positions (every row is padded to the
first, longest one) plus a fixed cost per forward (`overhead`, in token positions: the per-call work
that does not grow with the tokens). `cut_sorted` picks the cut points that minimise the total by dynamic
programming over the sorted lengths, under the limits of one forward (`max_tokens` positions, `max_rows`
rows). Which rows share a forward never changes what a row computes beyond float summation order, so
this is a pure cost choice (eval/fast_lm.py, "Numerics")."""

from __future__ import annotations

from dataclasses import dataclass


def cut_sorted(lengths: list[int], max_tokens: int, max_rows: int, overhead: int) -> list[int]:
    """Start index of every forward, for `lengths` sorted longest first. A row longer than max_tokens
    goes alone; otherwise a forward holds at most max_rows rows and rows x longest <= max_tokens."""
    if any(a < b for a, b in zip(lengths, lengths[1:])):
        raise ValueError("cut_sorted needs lengths sorted longest first")
    n = len(lengths)
    best = [0] * (n + 1)  # best[i]: least cost of rows i..n-1
    nxt = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        longest = max(1, lengths[i])
        rows = max(1, min(max_rows, max_tokens // longest, n - i))
        best[i], nxt[i] = min((k * longest + overhead + best[i + k], i + k) for k in range(1, rows + 1))
    starts, i = [], 0
    while i < n:
        starts.append(i)
        i = nxt[i]
    return starts


@dataclass(frozen=True)
class Batching:
    """How FastLM cuts its forwards on one device type (`FastLM._batches`, `cut_sorted`).

    max_tokens: positions per forward (None: HFLM's largest batch, batch_size x max_length);
    overhead: the fixed cost of one forward in token positions, against which padding is weighed;
    rows: rows per forward, and documents per window (whose prefix keys/values are held at once), in
    units of the batch size."""

    max_tokens: int | None
    overhead: int
    rows: int
    basis: str  # where the figures come from


BATCHING = {
    # moderate forwards keep the activations in cache; both figures measured best on this project's
    # 2-core EPYC (max_tokens for quickstart-sized models; overhead best of 8 / 32 / 64 / 128 on SmolLM2)
    "cpu": Batching(512, 32, 4, "measured: benchmarks/README.md, eval_speed.py"),
    # an eager forward of a ~30-layer model launches ~1,000 kernels (~10 ms), about the float32 work of
    # 2,000 positions of a 135M model on an H200: far fewer, fuller forwards than on a CPU. Rows as on the
    # CPU: a window's keys/values grow with it (Llama-3-8B in bf16, 128 documents of 300 tokens: ~5 GB)
    "gpu": Batching(None, 2048, 4, "estimated, not yet measured: eval_speed.py --overhead / --rows on a GPU"),
}


def batching_for(device_type: str) -> Batching:
    """The batching of a device type ("cpu", "cuda", ...): the CPU's measured figures, the GPU's for any other."""
    return BATCHING["cpu" if device_type == "cpu" else "gpu"]
