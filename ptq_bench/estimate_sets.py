"""What the perplexity sets cost a run, for `estimate`: each cell's perplexity pass (the model's timed
forward batch times its batches of windows), each PTQ cell's KLD work besides its forwards (one window's
`kld.window_kl` timed on random values, times its windows) and the disk of the KLD references (`eval/kld.py`: one
float32 file of base log-probs per model with PTQ cells and per set, windows x (seq_len - 1) x vocabulary
x 4 bytes, built once under `cache_dir/kld` and reopened by later runs; `run` refuses to start one the
disk has no room for). A set's windows are counted from its ids under the model's tokenizer
(`estimate_prep.Prep.projected_ids`); without a data folder a whole set's are unknown (NaN)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ptq_bench.console import hms
from ptq_bench.estimate_act import cell_rates
from ptq_bench.eval.kld import ROOM_ADVICE, reference_bytes, window_kl
from ptq_bench.paths import free_bytes
from ptq_bench.recipe import Recipe, expand_cells

UNKNOWN = "whole sets: their window count needs the data folder"


def ppl_rows(recipe: Recipe) -> int:
    """Windows per perplexity forward batch (eval.batch_size, fewer when max_windows is smaller)."""
    return min(recipe.eval.batch_size, recipe.eval.perplexity.max_windows or recipe.eval.batch_size)


def set_windows(recipe: Recipe, ids: dict[str, float]) -> dict[str, float]:
    """Perplexity set -> the windows a run evaluates: floor(ids / seq_len), at most max_windows; NaN for a
    whole set whose ids were not counted."""
    p = recipe.eval.perplexity
    out = {}
    for s in p.sets:
        n = ids[s] // p.seq_len if s in ids else p.max_windows or math.nan
        out[s] = min(n, p.max_windows or n)
    return out


def set_sizes(recipe: Recipe, name: str, vocab: int, ids: dict[str, float]) -> tuple[dict[str, float], float | None]:
    """Model `name`'s windows per set (`set_windows`) and its KLD references' bytes (`kld_bytes`)."""
    windows = set_windows(recipe, ids)
    return windows, kld_bytes(recipe, name, vocab, windows)


def windows_unknown(recipe: Recipe, found: list[Any]) -> bool:
    """Whether a model's window count of a perplexity set is unknown (a whole set without the data folder)."""
    return any(math.isnan(m.windows.get(s, math.nan)) for m in found for s in recipe.eval.perplexity.sets)


def kld_bytes(recipe: Recipe, name: str, vocab: int, windows: dict[str, float]) -> float | None:
    """Bytes of model `name`'s KLD references (None: it has none; NaN: a set's windows unknown)."""
    p = recipe.eval.perplexity
    if not (recipe.eval.kld and p.sets and any(c.model == name and c.method != "none" for c in expand_cells(recipe))):
        return None
    return sum(reference_bytes(windows[s], p.seq_len, vocab) for s in p.sets)


def ppl_lines(recipe: Recipe, found: list[Any]) -> tuple[list[str], list[float]]:
    """The perplexity projection's line and seconds per cell (`expand_cells`' order): its model's batches of
    windows at the cell's rates (`found`: estimate.Measured; `estimate_act.cell_rates`); none when a whole
    set's windows are unknown."""
    p, cells, rows = recipe.eval.perplexity, expand_cells(recipe), ppl_rows(recipe)
    if not p.sets or not found:
        return [], []
    head = f"perplexity: {hms(max(m.ppl_batch_s for m in found))} per batch of {rows} x {p.seq_len} (slowest model); "
    if windows_unknown(recipe, found):
        return [head + UNKNOWN], []
    by_model = {m.name: m for m in found}
    per_cell = []
    for c in cells:
        m = by_model[c.model]
        r = cell_rates(m, c, rows)
        per_cell.append(r.ppl_batch_s * sum(-(-int(n) // r.rows) for n in m.windows.values()))
    counts = ", ".join(f"{s} " + " / ".join(dict.fromkeys(str(int(m.windows[s])) for m in found)) for s in p.sets)
    return [head + f"windows {counts}: {hms(max(per_cell))} per cell (slowest), "
            f"{hms(sum(per_cell))} for {len(cells)} cells"], per_cell


def kl_window(vocab: int, seq_len: int, device: str) -> Callable[[], Any]:
    """One window of `kld.compare`'s work besides the forward (`kld.window_kl`: the base log-probs read, the
    float64 KL per token, top-1 agreement), on random values of the window's shape, as a call to time."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(3)
    base = torch.log_softmax(torch.randn(seq_len - 1, vocab, generator=g), -1).numpy()
    logits, top1 = torch.randn(seq_len - 1, vocab, generator=g).to(device), np.zeros(seq_len - 1, np.int64)
    return lambda: window_kl(base, logits, top1)


def kld_part(recipe: Recipe, found: list[Any]) -> tuple[list[str], list[float]]:
    """The KLD lines and seconds per cell (`expand_cells`' order): each PTQ cell's distance work (its model's
    timed window, `kl_window_s`, times its windows), and the references' size (per model when several) against
    the room in the cache folder."""
    refs = [m for m in found if m.kld_bytes is not None]
    if not refs:
        return [], []
    per_model = {m.name: m.kl_window_s * sum(m.windows.values()) for m in refs}
    cells = expand_cells(recipe)
    ptq = [c.method != "none" and c.model in per_model for c in cells]
    per_cell = [per_model[c.model] if is_ptq else 0.0 for c, is_ptq in zip(cells, ptq)]
    seconds, n_cells = sum(per_cell), sum(ptq)
    room = _room_line(recipe, {m.name: m.kld_bytes for m in refs})
    if math.isnan(seconds):
        return [room], []
    return [f"KLD (float64 KL over the vocabulary, {hms(max(m.kl_window_s for m in refs))} per window, slowest "
            f"model): {hms(max(per_model.values()))} per PTQ cell besides its forwards, {hms(seconds)} for "
            f"{n_cells} PTQ cells", room], per_cell


def _room_line(recipe: Recipe, sizes: dict[str, float]) -> str:
    """The references' size (model -> bytes) against the room in the cache folder."""
    total, where = sum(sizes.values()), recipe.cache_path / "kld"
    room = free_bytes(where)
    per = f" ({', '.join(f'{k} {_gb(v)}' for k, v in sizes.items())})" if len(sizes) > 1 else ""
    line = (f"KLD references (float32 base log-probs and top-1 ids, written to {where} unless a run left them "
            f"there): {_gb(total)}{per}; {_gb(room)} free there")
    if math.isnan(total):
        return f"{line} ({UNKNOWN})"
    if total > room:
        line += f" — more than is free: the run stops before building one that does not fit ({ROOM_ADVICE})"
    return line


def _gb(n: float) -> str:
    return "? GB" if math.isnan(n) else f"{n / 1e9:.3g} GB"
