"""`ptq-bench estimate`: a recipe's time projected from this machine's measured throughput, phase by phase
and in total, before anything is run or written; its preparation (tokenizers, texts) in `estimate_prep`.

Every model the recipe trains is built at its shape (the recipe's `arch` with the model's overrides,
`tokenizer.vocab_size` ids) on the chosen device and runs `warmup` + `steps` optimizer steps of the real
training step (`models.train.forward_loss` + `update`: AdamW, gradient clipping, bf16 autocast on CUDA)
on random token ids of the recipe's batch shape; the recipe's step count times the median timed step is
the projection (the median: a shared CPU stalls single steps). A loaded model (`source:`) is timed
loading as a first run loads it, once per model. For every model, trained or loaded, one perplexity
forward batch (`eval.batch_size` windows of `eval.perplexity.seq_len`) is timed the same way, and
projected over the windows the run evaluates; the KLD references' disk is set against the cache's free
space (`estimate_sets`).

Zero-shot tasks (when the recipe has any): each model's rate timed on a sample of every task
(`estimate_zero_shot`); activation-quantized cells at their activation setting's (`estimate_act`).

Quantization: every PTQ setting of a model (its calibration seeds aside) runs on copies of the model cut
to its first 2 and first 4 decoder blocks (1 and 2 for shallower models), with random calibration ids of
the recipe's shape; the line through the two timings gives the per-block part, projected to the model's
block count. (A model cut to one block skips passing that block's output on, so the first block is not
a block's cost.) The first setting of a model runs once untimed first (kernel warm-up). Nothing is written.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptq_bench.console import hms, quiet_lm_eval
from ptq_bench.errors import UnreachedLinear
from ptq_bench.estimate_act import (
    ActKey,
    Rates,
    act_hooks,
    act_name,
    act_settings,
    base_rates,
    cell_rates,
    untimed_lines,
)
from ptq_bench.estimate_model import Probe, cast, first_blocks, open_model, outside_blocks
from ptq_bench.estimate_prep import SHARE, Prep
from ptq_bench.estimate_ray import ray_line, thread_hint
from ptq_bench.estimate_sets import kl_window, kld_part, ppl_lines, ppl_rows, set_sizes, windows_unknown
from ptq_bench.estimate_zero_shot import SAMPLE_REPEATS, ZeroShot, sample_docs
from ptq_bench.prepare import model_schedule
from ptq_bench.ray_pool import cells_by_model
from ptq_bench.recipe import Recipe, expand_cells

UNREACHED = ("not projected: random calibration ids reached no token of an expert; the run's text is routed "
             "otherwise, and may or may not reach every expert (more calibration.n_samples reach more)")


@dataclass
class Measured:
    """One model's measured throughput and the recipe's projection from it (steps 0: loaded, not trained)."""

    name: str
    kind: str
    params: int
    step_s: float  # median seconds of the timed optimizer steps
    steps: int  # the recipe's optimizer steps for this model
    ppl_batch_s: float  # seconds per perplexity forward batch
    peak_bytes: int | None  # CUDA peak allocated memory over the probe (None on CPU)
    zero_shot_s: dict[str, float] = field(default_factory=dict)  # task -> projected seconds at the recipe's limit
    zero_shot_call_s: float = 0.0  # the fixed cost of one evaluate call (one per cell)
    quant_s: dict[str, tuple[float, int]] = field(default_factory=dict)  # setting -> (s per cell, cells)
    windows: dict[str, float] = field(default_factory=dict)  # perplexity set -> windows evaluated (NaN: unknown)
    kld_bytes: float | None = None  # its KLD references' disk (estimate_sets.kld_bytes)
    kl_window_s: float = 0.0  # seconds of one window's KL work in a PTQ cell (estimate_sets.kl_window)
    act: dict[ActKey, Rates] = field(default_factory=dict)  # its activation settings' rates (estimate_act)
    load_s: float = 0.0  # seconds to load it as a first run does (0.0: a model trained here)

    @property
    def train_s(self) -> float:
        return self.step_s * self.steps


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _once(fn: Any, device: str) -> float:
    """Seconds of one `fn()` call, the device synchronized on both sides."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _timed(fn: Any, device: str, warmup: int, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls after `warmup` untimed ones (the median: a shared CPU
    stalls single steps now and then)."""
    for _ in range(warmup):
        fn()
    return statistics.median(_once(fn, device) for _ in range(repeats))


def _random_ids(vocab: int, shape: tuple[int, ...], seed: int, device: str) -> Any:
    """Token ids drawn from a seeded CPU generator (the same on every device), placed on `device`."""
    import torch

    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def _train_step_s(recipe: Recipe, name: str, model: Any, vocab: int, device: str, steps: int, warmup: int) -> float:
    """Median seconds of the real training step (AdamW, clipping, bf16 autocast on CUDA) on random ids."""
    from ptq_bench.models.train import forward_loss, make_optimizer, update

    t = recipe.train
    opt = make_optimizer(model, model_schedule(recipe, name))
    batch = _random_ids(vocab, (t.batch_size, t.seq_len + 1), 0, device)

    def step() -> None:
        loss = forward_loss(model, batch)
        loss.item()  # the real loop reads the loss every step (its divergence check)
        update(model, opt, loss, t.grad_clip)

    model.train()
    try:
        return _timed(step, device, warmup, steps)
    finally:
        model.eval()


def _ppl_batch_s(recipe: Recipe, probe: Probe, repeats: int, rows: int | None = None) -> float:
    """Median seconds of one perplexity forward batch (`rows` windows, default `ppl_rows`, of
    eval.perplexity.seq_len)."""
    import torch

    windows = _random_ids(probe.vocab, (rows or ppl_rows(recipe), recipe.eval.perplexity.seq_len), 1, probe.device)

    def forward() -> None:
        with torch.no_grad():
            probe.model(windows).logits.float()

    with probe.evaluating():
        return _timed(forward, probe.device, 1, repeats)


def _act_rates(recipe: Recipe, probe: Probe, key: ActKey, zero_shot: ZeroShot | None) -> Rates:
    """The probe's rates with activation setting `key` (estimate_act): one perplexity batch as the run batches
    its windows for such a model (one per forward for per-tensor scales), timed once after a warm-up call,
    and the zero-shot sample."""
    from ptq_bench.eval.perplexity import window_batch

    with act_hooks(probe.model, key):
        rows = window_batch(probe.model, ppl_rows(recipe))
        ppl_s = _ppl_batch_s(recipe, probe, 1, rows)
        call_s, tasks = zero_shot.seconds(probe.model, probe.tokenizer) if zero_shot is not None else (0.0, {})
    return Rates(ppl_s, rows, call_s, tasks)


def _quant_settings(recipe: Recipe, name: str) -> dict[str, list[Any]]:
    """Model `name`'s PTQ cells by setting (method and config: calibration seeds are cells of one setting),
    keyed by the setting's label."""
    from ptq_bench.quant.configs import setting_name

    groups: dict[str, list[Any]] = {}
    for c in expand_cells(recipe):
        if c.model == name and c.method != "none":
            groups.setdefault(json.dumps([c.method, c.config_dict()], sort_keys=True), []).append(c)
    return {setting_name(v[0].label, v[0].method, v[0].config_dict()): v for v in groups.values()}


def _apply_s(method: Any, model: Any, config: Any, calib: Any, device: str, where: Any = contextlib.nullcontext) -> float:
    """Seconds of `method` quantizing a copy of `model` (the copy is not timed) in the context `where()`
    (an offloaded model's blocks read from its checkpoint and written to scratch, as `run` does)."""
    target = copy.deepcopy(model, outside_blocks(model))  # the blocks only: methods change nothing else
    with where():
        return _once(lambda: method.apply(target, config, calib), device)


def _probe_blocks(n_blocks: int) -> tuple[int, ...]:
    """Block counts a method is timed on: 2 and 4 (a model cut to one block skips passing the block's
    output on, so one block alone under-states a block's cost), fewer for shallower models."""
    return (2, 4) if n_blocks >= 4 else tuple(range(1, min(n_blocks, 2) + 1))


def _quant_cell_s(recipe: Recipe, name: str, model: Any, vocab: int, device: str,
                  where: Any = contextlib.nullcontext) -> dict[str, tuple[float, int]]:
    """Per PTQ setting of model `name`: (projected seconds of one cell, its cells). The method runs on the
    model cut to its first few blocks (`_probe_blocks`), with random calibration ids; the line through the
    two timings gives the per-block part, projected to the model's block count. NaN seconds: random ids
    left an expert without tokens (the run's text routes otherwise, so that is no refusal of the run)."""
    from ptq_bench.quant import get_method
    from ptq_bench.quant.calibrate import decoder_layers

    settings = _quant_settings(recipe, name)
    if not settings:
        return {}
    n_blocks = len(decoder_layers(model))
    ks = _probe_blocks(n_blocks)
    shorts = [first_blocks(model, k) for k in ks]
    c = recipe.calibration
    ids = _random_ids(vocab, (c.n_samples, c.seq_len), 2, device)
    out: dict[str, tuple[float, int]] = {}
    for i, (label, cells) in enumerate(settings.items()):
        method = get_method(cells[0].method)
        calib = ids if method.needs_calibration else None
        try:
            if i == 0:  # the model's first setting warms up (kernels, allocator) untimed
                _apply_s(method, shorts[0], cells[0].config, calib, device, where)
            t = [_apply_s(method, short, cells[0].config, calib, device, where) for short in shorts]
        except UnreachedLinear:
            out[label] = (math.nan, len(cells))
            continue
        per_block = (t[-1] - t[0]) / (ks[-1] - ks[0]) if len(t) == 2 and t[-1] > t[0] else t[-1] / ks[-1]
        out[label] = (t[-1] + (n_blocks - ks[-1]) * per_block, len(cells))
    return out


def measure(recipe: Recipe, name: str, device: str, steps: int, warmup: int,
            zero_shot: ZeroShot | None = None, prep: Prep | None = None) -> Measured:
    """Time model `name`'s training step (models trained here only, in float32 as `run` trains), then, held
    as `run` holds it (the recipe's dtype; with offload, blocks read from disk), a perplexity forward, its
    zero-shot rate (with `zero_shot`) and its PTQ settings, on `device` (offloaded blocks and a GGUF's
    conversion in a temporary folder)."""
    import torch

    from ptq_bench.kinds import train_steps
    from ptq_bench.models.build import parameter_count

    spec, t = recipe.models[name], recipe.train
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="ptq-bench-estimate-") as folder:
        trained = spec.source is None
        t0 = time.perf_counter()
        probe = open_model(recipe, name, device, Path(folder), prep.trained_vocab() if prep and trained else None)
        load_s = 0.0 if trained else time.perf_counter() - t0
        step_s = _train_step_s(recipe, name, probe.model, probe.vocab, device, steps, warmup) if trained else 0.0
        cast(recipe, probe)
        ppl_s = _ppl_batch_s(recipe, probe, max(1, steps // 2))
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
        call_s, tasks = (zero_shot.seconds(probe.model, probe.tokenizer, probe.evaluating) if zero_shot is not None
                         else (0.0, {}))
        act = {} if probe.blocks is not None else {k: _act_rates(recipe, probe, k, zero_shot)
                                                   for k in act_settings(recipe, name)}
        quant = _quant_cell_s(recipe, name, probe.model, probe.vocab, device, probe.quantizing)
        if prep is not None:  # the texts `run` encodes with its tokenizer
            prep.count(probe.tokenizer)
        wins, refs = set_sizes(recipe, name, probe.vocab, prep.projected_ids(probe.tokenizer) if prep else {})
        kl_s = 0.0 if refs is None else _timed(kl_window(probe.vocab, recipe.eval.perplexity.seq_len, device), device, 1, 2)
    return Measured(name, spec.kind if trained else "source", parameter_count(probe.model), step_s,
                    train_steps(t.tokens, t.seq_len, t.batch_size) if trained else 0, ppl_s, peak, tasks, call_s,
                    quant, wins, refs, kl_s, act, load_s)


def report(recipe: Recipe, found: list[Measured], device: str, hours: float | None,
           prep: dict[str, float] | None = None) -> list[str]:
    """The printed lines: the preparation (`estimate_prep.Prep.seconds`), per model, each phase, the total."""
    t = recipe.train
    tok_per_step = t.seq_len * t.batch_size
    trained = [m for m in found if m.steps]
    lines = [f"device {device}" + (f"; train batch {t.batch_size} x {t.seq_len} tokens, {t.tokens:,} tokens per "
                                   "trained model" if trained else "")]
    for m in found:
        mem = f", peak {m.peak_bytes / 2**30:.2f} GiB" if m.peak_bytes is not None else ""
        what = (f"{m.step_s:8.3f} s/step ({tok_per_step / m.step_s:,.0f} tok/s){mem}  x {m.steps:,} steps = "
                f"{hms(m.train_s)}" if m.steps else f"loaded in {hms(m.load_s)}, not trained{mem}")
        lines.append(f"  {m.name:<14} {m.kind:<12} {m.params / 1e6:8.2f}M params  {what}")
    training = sum(m.train_s for m in trained)
    if trained:
        lines.append(f"training, all {len(trained)} trained models one after another: {hms(training)}")
    if hours is not None and not trained:
        lines.append("train.tokens: no model of this recipe is trained here")
    elif hours is not None:
        per_token = sum(m.step_s for m in trained) / tok_per_step
        fit = int(hours * 3600 / per_token) // tok_per_step * tok_per_step
        lines.append(f"train.tokens that fit {hours:g} h of training: {fit:,}")
    cells = expand_cells(recipe)
    per_cell = [0.0] * len(cells)
    for part in (ppl_lines, kld_part, _zero_shot_lines, _quant_lines):
        more, seconds = part(recipe, found)
        lines.extend(more)
        if seconds:  # a part with no work for this recipe has none
            per_cell = [a + b for a, b in zip(per_cell, seconds, strict=True)]
    total = training + sum(m.load_s for m in found) + sum(per_cell)  # each source model loaded once
    lines.extend(untimed_lines(recipe, found))
    if prep:
        lines.append(f"preparation (each text timed on its first {SHARE:.0%}, the perplexity sets whole; no tokenizing "
                     "where the cache holds it): "
                     + ", ".join(f"{what} {hms(s)}" for what, s in prep.items()))
    lines.append(f"total: {hms(total + sum((prep or {}).values()))} projected"
                 + (" (whole-set perplexity and KLD work not counted)" if windows_unknown(recipe, found) else ""))
    if recipe.executor.kind == "ray":
        lines.append(_ray_line(recipe, device, found, zip(cells, per_cell), sum((prep or {}).values())))
    lines.append("not projected: " + ("writing the KLD references, " if any(
        m.kld_bytes for m in found) else "") + "writing the report" + ("" if prep else " (the texts' tokenizing: no data folder)"))
    return lines


def _ray_line(recipe: Recipe, device: str, found: list[Measured], cell_s: Any, prep_s: float) -> str:
    """The Ray projection (`estimate_ray`): each model's training or loading, then its cells' seconds (`cell_s`:
    (cell, seconds) pairs in `expand_cells`' order)."""
    import torch

    pairs, threads = list(cell_s), torch.get_num_threads()
    prepare = {m.name: m.train_s + m.load_s for m in found}
    order = cells_by_model([c for c, _ in pairs])  # the order the pool prepares the models in
    hint = thread_hint(threads, recipe.executor.cpus_per_cell) if device == "cpu" else ""
    return ray_line({name: prepare[name] for name in order}, [(c.model, s) for c, s in pairs], prep_s, threads, hint)


def _quant_lines(recipe: Recipe, found: list[Measured]) -> tuple[list[str], list[float]]:
    """The quantization projection: the total, then per model and setting its seconds per cell; the seconds of
    each cell (`expand_cells`' order; 0 where not projected)."""
    rows = [(m.name, label, s, n) for m in found for label, (s, n) in m.quant_s.items()]
    if not rows:
        return [], []
    c = recipe.calibration
    timed = [(s, n) for _, _, s, n in rows if not math.isnan(s)]
    total, cells, left = sum(s * n for s, n in timed), sum(n for _, n in timed), sum(n for *_, n in rows)
    lines = [f"quantization (each setting timed on 2 and 4 blocks, fewer in shallower models, projected to all; "
             f"{c.n_samples} x {c.seq_len} calibration tokens): {hms(total)} for {cells} PTQ cells"
             + (f" ({left - cells} not projected)" if left > cells else "")]
    lines.extend(f"  {name:<14} {label:<36} " + (UNREACHED if math.isnan(s) else f"{hms(s):>12} per cell")
                 + (f" x {n} cells" if n > 1 else "") for name, label, s, n in rows)
    seconds = {}  # cell -> its setting's seconds (a setting's calibration seeds are cells of it; NaN: 0)
    for m in found:
        for label, group in _quant_settings(recipe, m.name).items():
            s = m.quant_s[label][0]
            seconds.update(dict.fromkeys(group, 0.0 if math.isnan(s) else s))
    return lines, [seconds.get(c, 0.0) for c in expand_cells(recipe)]


def _zero_shot_lines(recipe: Recipe, found: list[Measured]) -> tuple[list[str], list[float]]:
    """Per model (and activation setting), one pass over every task; the sum over cells (each running its own
    tasks at its rates, `estimate_act.cell_rates`); the seconds of each cell (`expand_cells`' order)."""
    e = recipe.eval
    if not e.tasks or not any(m.zero_shot_s for m in found):
        return [], []
    by_model = {m.name: m for m in found}
    cells = expand_cells(recipe)
    per_cell = []
    for c in cells:
        r, tasks = cell_rates(by_model[c.model], c, 1), e.tasks if c.tasks is None else c.tasks
        per_cell.append((r.zero_shot_call_s + sum(r.zero_shot_s[t] for t in tasks)) if tasks else 0.0)
    total = sum(per_cell)
    limit = "all" if e.limit is None else e.limit
    from ptq_bench.report.run import shot_name

    timed = " and ".join(str(d) for d in sample_docs(e.limit))
    lines = [f"{shot_name(e.num_fewshot)} ({e.backend}, {len(e.tasks)} tasks, {limit} documents each; timed on {timed} "
             f"per task, best of {SAMPLE_REPEATS}): {hms(total)} for {len(cells)} cells"]
    for m in found:
        rates = {"": base_rates(m, 1)} | {f" {act_name(k)}": r for k, r in m.act.items()}
        lines.append(f"  {m.name:<14} every task once: " + ", ".join(
            f"{hms(r.zero_shot_call_s + sum(r.zero_shot_s.values()))}{k}" for k, r in rates.items()))
    return lines, per_cell


def estimate(recipe: Recipe, device: str, steps: int = 10, warmup: int = 3, hours: float | None = None,
             progress: Any = print, data_dir: Any = None) -> list[str]:
    """Measure every model of the recipe (training steps only for those trained here; zero-shot when the
    recipe has tasks and `data_dir` is given); the report's lines."""
    quiet_lm_eval()  # as `run` does
    prep = Prep(recipe, data_dir)
    zero_shot = ZeroShot(recipe, data_dir, prep) if recipe.eval.tasks and data_dir is not None else None
    found = []
    for name, spec in recipe.models.items():
        what = f"{warmup} + {steps} training steps" if spec.source is None else "perplexity forwards (loaded model)"
        quant = ", a few blocks per PTQ setting" if _quant_settings(recipe, name) else ""
        progress(f"timing '{name}': {what}" + (", zero-shot sample" if zero_shot else "") + quant + " ...")
        found.append(measure(recipe, name, device, steps, warmup, zero_shot, prep))
    return report(recipe, found, device, hours, prep.seconds)
