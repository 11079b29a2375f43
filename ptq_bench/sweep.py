"""Run a recipe: train or load each model once, quantize a fresh copy per cell, evaluate, append.

Hot paths are done once: the tokenizer and token streams per recipe, each model once (cached by its
config hash), evaluation requests once per tokenizer, calibration windows once per tokenizer.
Finished cells are skipped on a re-run; a killed run loses at most the cell in flight.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptq_bench.data import (
    PPL_FILES,
    TRAIN_FILES,
    calibration_documents,
    data_file,
    file_sha256,
    perplexity_text,
    resolve_data_dir,
    train_documents,
)
from ptq_bench.kinds import NATIVE_BITS  # nominal (weight, activation) bits of unquantized models
from ptq_bench.recipe import Cell, Recipe, expand_cells, model_arch, to_dict
from ptq_bench.results import append_row, close_run, done_cells, open_run


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from ptq_bench.errors import PtqBenchError

        raise PtqBenchError("device: cuda requested but no CUDA device is available")
    return name


def log(msg: str) -> None:
    print(f"[ptq-bench] {msg}", flush=True)


@dataclass
class Context:
    """What a run shares across cells."""

    recipe: Recipe
    data_dir: Path
    cache: Path
    device: str
    data_hashes: dict[str, str]


# ----------------------------------------------------------------------------------------------
# tokenizer and token streams


def tokenizer_key(ctx: Context) -> str:
    return _hash({"spec": to_dict(ctx.recipe.tokenizer), "data": [ctx.data_hashes[f] for f in TRAIN_FILES]})


def get_tokenizer(ctx: Context) -> tuple[Any, str]:
    """The recipe's BPE tokenizer, trained once and cached."""
    from ptq_bench.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    key = tokenizer_key(ctx)
    path = ctx.cache / "tokenizers" / key
    if not (path / "tokenizer.json").is_file():
        log(f"training a {ctx.recipe.tokenizer.vocab_size}-token BPE tokenizer on the training corpus")
        tok = train_tokenizer(train_documents(ctx.data_dir), ctx.recipe.tokenizer.vocab_size,
                              ctx.recipe.tokenizer.train_chars)
        tmp = path.with_suffix(".tmp")
        save_tokenizer(tok, tmp)
        tmp.replace(path) if not path.exists() else shutil.rmtree(tmp)
    return load_tokenizer(path), key


def encode_stream(tokenizer: Any, docs: list[str]) -> np.ndarray:
    """Documents joined with EOS into one id stream (int32)."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for d in ids:
        out.extend(d)
        out.append(eos)
    return np.asarray(out, dtype=np.int32)


def cached_array(path: Path, build: Any) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    arr = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


def calibration_windows(stream: np.ndarray, n: int, seqlen: int, seed: int) -> np.ndarray:
    """n random windows of seqlen tokens (GPTQ datautils.get_c4 samples random spans of C4 train).

    Here the C4 train documents are joined into one stream first, because few local documents are
    longer than a reference 2048-token window; a window may therefore cross a document boundary.
    """
    rng = np.random.default_rng(seed)
    if len(stream) <= seqlen:
        from ptq_bench.errors import DataError

        raise DataError(f"calibration text has {len(stream)} tokens, fewer than calibration.seq_len={seqlen}")
    starts = rng.integers(0, len(stream) - seqlen, size=n)
    return np.stack([stream[s : s + seqlen] for s in starts]).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# models


def model_key(ctx: Context, name: str, tok_key: str) -> str:
    spec = ctx.recipe.models[name]
    if spec.source is not None:
        return _hash({"source": spec.source})
    from ptq_bench.models.train import make_schedule

    r = ctx.recipe
    schedule = make_schedule(spec.kind, spec.lr, spec.lr_stage2, spec.weight_decay)  # resolved: defaults count
    return _hash({"kind": spec.kind, "arch": to_dict(model_arch(r, name)), "train": to_dict(r.train),
                  "schedule": to_dict(schedule), "tok": tok_key, "seed": r.seed})


def get_model(
    ctx: Context, name: str, tok_key: str, tokenizer: Any, stream: Any, untrained_ppl: Any = None
) -> tuple[Any, str, dict]:
    """(model on the device, kind, training info): load it from the cache or train it once.

    `untrained_ppl(model)`, when given, scores the freshly initialized model (the reference point
    that shows training worked); its result is kept in the training info.
    """
    from ptq_bench.models.build import build_model, export_hf, load_model, save_model

    spec = ctx.recipe.models[name]
    if spec.source is not None:
        log(f"loading model '{name}' from {spec.source}")
        model, kind = load_model(spec.source, device=ctx.device)
        return model, kind, {"source": spec.source}
    key = model_key(ctx, name, tok_key)
    path = ctx.cache / "models" / f"{spec.kind}-{key}"
    info_file = path / "train_info.json"
    if not info_file.is_file():
        from ptq_bench.models.train import make_schedule, train

        r = ctx.recipe
        arch = model_arch(r, name)
        model = build_model(spec.kind, arch, len(tokenizer), seed=r.seed).to(ctx.device)
        untrained = untrained_ppl(model) if untrained_ppl is not None else None
        schedule = make_schedule(spec.kind, spec.lr, spec.lr_stage2, spec.weight_decay)
        log(f"training '{name}' ({spec.kind}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
            f"{r.train.tokens:,} tokens, peak LR {schedule.lr:g})")
        res = train(model, stream(), schedule, total_tokens=r.train.tokens, seq_len=r.train.seq_len,
                    batch_size=r.train.batch_size, warmup_steps=r.train.warmup_steps, seed=r.seed,
                    grad_clip=r.train.grad_clip, log_every=r.train.log_every, desc=f"train {name}")
        if res.diverged:
            log(f"'{name}' DIVERGED at step {res.diverged_at} (non-finite loss); recorded as a result")
        else:
            log(f"'{name}' trained in {res.seconds:.0f}s, final loss {res.curve[-1]['loss']:.3f}")
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, spec.kind, tmp / "model")
        tokenizer.save_pretrained(str(tmp / "model"))
        export_hf(model, spec.kind, tmp / "hf")
        tokenizer.save_pretrained(str(tmp / "hf"))
        info = {"untrained_metrics": untrained, "schedule": to_dict(schedule), "steps": res.steps, "tokens": res.tokens, "seconds": res.seconds,
                "diverged": res.diverged, "diverged_at": res.diverged_at, "curve": res.curve}
        (tmp / "train_info.json").write_text(json.dumps(info, default=str), encoding="utf-8")
        shutil.rmtree(path, ignore_errors=True)
        tmp.replace(path)
        del model
    model, kind = load_model(path / "model", device=ctx.device)
    info = json.loads(info_file.read_text(encoding="utf-8"))
    return model, kind, info


# ----------------------------------------------------------------------------------------------
# evaluation


class Evaluator:
    """Perplexity token ids and lm-eval requests, built once per tokenizer and reused by every cell."""

    def __init__(self, ctx: Context, tokenizer: Any, tok_key: str):
        from ptq_bench.eval.harness import TaskSuite

        spec = ctx.recipe.eval
        self.spec = spec
        self.ppl_ids = {}
        for name in spec.perplexity.sets:
            ids = cached_array(ctx.cache / "tokens" / tok_key / f"ppl_{name}.npy",
                               lambda n=name: np.asarray(tokenizer(perplexity_text(n, ctx.data_dir),
                                                                   add_special_tokens=False)["input_ids"], np.int32))
            self.ppl_ids[name] = ids
        self.suite = (TaskSuite(spec.tasks, ctx.data_dir, tokenizer, limit=spec.limit, num_fewshot=spec.num_fewshot,
                                backend=spec.backend, batch_size=spec.batch_size) if spec.tasks else None)

    def perplexity(self, model: Any) -> dict[str, float]:
        """GPTQ-protocol perplexity on every set of the recipe, keyed by protocol name."""
        import torch

        from ptq_bench.eval.perplexity import gptq_perplexity, protocol_name

        p = self.spec.perplexity
        metrics: dict[str, float] = {}
        with torch.no_grad():
            for name, ids in self.ppl_ids.items():
                out = gptq_perplexity(model, torch.from_numpy(ids.astype(np.int64)), p.seq_len, p.max_windows,
                                      batch_size=self.spec.batch_size)
                metrics[protocol_name(name, p.seq_len, p.max_windows)] = out["ppl"]
        return metrics

    def __call__(self, model: Any) -> dict[str, float]:
        import torch

        metrics = self.perplexity(model)
        if self.suite is not None:
            with torch.no_grad():
                metrics.update(self.suite.evaluate(model))
        return metrics


# ----------------------------------------------------------------------------------------------
# the sweep


def cell_id(cell: Cell, m_key: str) -> str:
    return _hash({"model": cell.model, "model_key": m_key, "method": cell.method, "config": cell.config_dict()})


def data_hashes(data_dir: Path, recipe: Recipe) -> dict[str, str]:
    files = list(TRAIN_FILES) + [PPL_FILES[s] for s in recipe.eval.perplexity.sets]
    from ptq_bench.eval.harness import TASKS

    for task in recipe.eval.tasks:
        files.extend(TASKS[task].data_files.values())
    return {f: file_sha256(data_file(data_dir, f)) for f in dict.fromkeys(files)}


def run(recipe: Recipe, recipe_text: str) -> Path:
    """Run every cell of `recipe` not already in its results folder; return the folder."""
    import torch
    from tqdm.auto import tqdm

    from ptq_bench.models.build import weight_bytes
    from ptq_bench.quant import get_method

    t0 = time.perf_counter()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its HFLM-with-a-model notices are expected here
    data_dir = resolve_data_dir(recipe.data_dir)
    cells = expand_cells(recipe)
    hashes = data_hashes(data_dir, recipe)
    ctx = Context(recipe, data_dir, Path(recipe.cache_dir), pick_device(recipe.device), hashes)
    out = recipe.out_dir
    base = {"recipe_name": recipe.name, "recipe": to_dict(recipe), "recipe_text": recipe_text, "seed": recipe.seed,
            "data_dir": str(data_dir), "data_sha256": hashes}
    manifest = open_run(out, recipe.digest(), base)
    torch.manual_seed(recipe.seed)

    tokenizer, tok_key = get_tokenizer(ctx)
    stream_path = ctx.cache / "tokens" / tok_key / "train.npy"

    def stream() -> np.ndarray:
        return cached_array(stream_path, lambda: encode_stream(tokenizer, train_documents(data_dir)))

    done = done_cells(out)
    keys = {name: model_key(ctx, name, tok_key) for name in recipe.models}
    todo = [c for c in cells if cell_id(c, keys[c.model]) not in done]
    log(f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run -> {out}")
    evaluators: dict[str, Evaluator] = {}
    calib_cache: dict[str, torch.Tensor] = {}
    ran = 0
    bar = tqdm(total=len(todo), desc="cells", unit="cell", dynamic_ncols=True)
    for name in recipe.models:
        mine = [c for c in todo if c.model == name]
        if not mine:
            continue
        m_tok, m_tok_key = (tokenizer, tok_key)
        if recipe.models[name].source is not None:
            from ptq_bench.tokenizer import load_tokenizer

            m_tok, m_tok_key = load_tokenizer(recipe.models[name].source), keys[name]
        if m_tok_key not in evaluators:
            evaluators[m_tok_key] = Evaluator(ctx, m_tok, m_tok_key)
        evaluate = evaluators[m_tok_key]
        model, kind, info = get_model(ctx, name, tok_key, tokenizer, stream, evaluate.perplexity)
        _save_curve(out, name, kind, info)
        size = {"n_params": sum(p.numel() for p in model.parameters()), "weight_bytes": weight_bytes(model)}
        for cell in mine:
            bar.set_description(f"{name} {cell.label}")
            quant: dict[str, Any] = {}
            if cell.method == "none":
                target = model
            else:
                method = get_method(cell.method)
                target = copy.deepcopy(model)
                calib = None
                if method.needs_calibration:
                    if m_tok_key not in calib_cache:
                        c = recipe.calibration
                        cstream = cached_array(ctx.cache / "tokens" / m_tok_key / "calib_c4.npy",
                                               lambda t=m_tok: encode_stream(t, calibration_documents(data_dir)))
                        calib_cache[m_tok_key] = torch.from_numpy(
                            calibration_windows(cstream, c.n_samples, c.seq_len, recipe.seed))
                    calib = calib_cache[m_tok_key].to(ctx.device)
                report = method.apply(target, cell.config, calib)
                quant = {"effective_bits": report.effective_bits, "seconds": round(report.seconds, 3),
                         "n_linears": report.n_linears, "details": report.details}
            t_eval = time.perf_counter()
            metrics = evaluate(target)
            w_bits, a_bits = (cell.w_bits, cell.a_bits) if cell.method != "none" else NATIVE_BITS.get(kind, (16, 16))
            row = {
                "cell_id": cell_id(cell, keys[name]), "recipe": recipe.name, "model": name, "model_kind": kind,
                "model_key": keys[name], "method": cell.method, "label": cell.label, "w_bits": w_bits,
                "a_bits": a_bits, "config": cell.config_dict(), "metrics": metrics, "quant": quant,
                "eval_seconds": round(time.perf_counter() - t_eval, 2),
                "protocol": {"ppl": to_dict(recipe.eval.perplexity), "limit": recipe.eval.limit,
                             "num_fewshot": recipe.eval.num_fewshot, "backend": recipe.eval.backend},
                "diverged": bool(info.get("diverged", False)),
                "untrained_metrics": info.get("untrained_metrics") if cell.method == "none" else None,
                **size,  # of the base model (weight_bytes: 16-bit tensors, BitNet weights packed)
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            append_row(out, row)
            ran += 1
            bar.update(1)
            _print_cell(row)
            del target
        del model
    bar.close()
    close_run(out, manifest, time.perf_counter() - t0, ran)
    log(f"done in {time.perf_counter() - t0:.0f}s")
    return out


def _save_curve(out: Path, name: str, kind: str, info: dict) -> None:
    if "curve" not in info:
        return
    (out / "curves").mkdir(exist_ok=True)
    payload = {"model": name, "kind": kind, "diverged": info.get("diverged", False),
               "schedule": info.get("schedule"), "curve": info["curve"]}
    (out / "curves" / f"{name}.json").write_text(json.dumps(payload), encoding="utf-8")


def _print_cell(row: dict) -> None:
    parts = []
    for k, v in row["metrics"].items():
        short = k.split("/")[1] + "/" + k.split("/")[-1] if k.startswith("lm_eval") else k.split("/")[1]
        parts.append(f"{short}={v:.4g}" if isinstance(v, float) and math.isfinite(v) else f"{short}={v}")
    log(f"{row['model']:<12} {row['label']:<20} " + " ".join(parts))
