"""Tokenizer and models of a run: train each once into the cache (checksummed) or load a `source:`.

`Context` is what every step shares; `model_key` names a model by what it is (config, schedule,
tokenizer and seed when trained here; its checkpoint's content when loaded), so a cache entry is reused
exactly when the same model would be built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptq_bench.cache import ensure
from ptq_bench.console import log
from ptq_bench.data import TRAIN_FILES, train_documents
from ptq_bench.errors import PtqBenchError, first_line
from ptq_bench.recipe import Recipe, model_arch, source_info, to_dict


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise PtqBenchError("device: cuda requested but no CUDA device is available")
    return name


@dataclass
class Context:
    """What a run shares across cells."""

    recipe: Recipe
    data_dir: Path
    cache: Path
    device: str
    data_hashes: dict[str, str]


# ----------------------------------------------------------------------------------------------
# tokenizer and models


def tokenizer_key(ctx: Context) -> str:
    return _hash({"spec": to_dict(ctx.recipe.tokenizer), "data": [ctx.data_hashes[f] for f in TRAIN_FILES]})


def train_recipe_tokenizer(recipe: Recipe, data_dir: Path) -> Any:
    """The recipe's BPE tokenizer fitted on the training corpus (in memory)."""
    from ptq_bench.tokenizer import train_tokenizer

    return train_tokenizer(train_documents(data_dir), recipe.tokenizer.vocab_size, recipe.tokenizer.train_chars)


def get_tokenizer(ctx: Context) -> tuple[Any, str]:
    """The recipe's BPE tokenizer, trained once and cached (rebuilt when its checksum fails)."""
    from ptq_bench.tokenizer import load_tokenizer, save_tokenizer

    def build(tmp: Path) -> None:
        log(f"training a {ctx.recipe.tokenizer.vocab_size}-token BPE tokenizer on the training corpus")
        save_tokenizer(train_recipe_tokenizer(ctx.recipe, ctx.data_dir), tmp)

    key = tokenizer_key(ctx)
    path = ensure(ctx.cache / "tokenizers" / key, build, "tokenizer")
    return load_tokenizer(path), key


def model_schedule(recipe: Recipe, name: str) -> Any:
    """The resolved LR schedule of trained model `name` (`models.train.Schedule`; the kind's defaults filled in)."""
    from ptq_bench.models.train import make_schedule

    spec = recipe.models[name]
    return make_schedule(spec.kind, spec.lr, spec.lr_stage2, spec.weight_decay)


def model_key(ctx: Context, name: str, tok_key: str) -> str:
    spec = ctx.recipe.models[name]
    if spec.source is not None:  # the checkpoint's content, not only its path
        return _hash(source_info(ctx.recipe, name).cache_key())
    from ptq_bench.models.train import TRAIN_VERSION

    r = ctx.recipe
    schedule = model_schedule(r, name)  # resolved: defaults count
    version = {} if TRAIN_VERSION == 1 else {"train_version": TRAIN_VERSION}  # 1: the keys models always had
    return _hash({"kind": spec.kind, "arch": to_dict(model_arch(r, name)), "train": to_dict(r.train),
                  "schedule": to_dict(schedule), "tok": tok_key, "seed": r.seed, **version})


def from_source(name: str, source: str, load: Any) -> Any:
    """load(); a failure (truncated or damaged file) is one line naming the source."""
    try:
        return load()
    except Exception as exc:  # a user's checkpoint cannot be rebuilt: say which one failed and how
        # the loader's own refusals (PtqBenchError: a missing package, an incomplete checkpoint) are one line already
        msg = first_line(exc) if isinstance(exc, PtqBenchError) else first_line(exc)[:200]
        raise PtqBenchError(f"models.{name}.source: cannot load {source} ({type(exc).__name__}: {msg})") from None


def get_source_model(ctx: Context, name: str) -> tuple[Any, Any, str, dict, Any]:
    """(model, its tokenizer, kind, info, blocks) of a `source:` model; kind and native bits come from what
    the checkpoint is (sources.py), a GGUF is converted once into the cache. With the recipe's `offload`
    the model's decoder blocks stay on disk (`blocks`: their `CheckpointBlocks` reader, else None) and
    the rest is on the CPU; otherwise the whole model is on the device."""
    spec, info = ctx.recipe.models[name], source_info(ctx.recipe, name)
    how = "opening (blocks stay on disk)" if ctx.recipe.offload else "loading"
    log(f"{how} model '{name}' from {spec.source}" + (f" ({info.note})" if info.note else ""))
    model, tok, kind, blocks = open_checkpoint(ctx.recipe, name, info, ctx.device, ctx.cache / "sources")
    about = {"source": spec.source, "content_hash": info.content_hash, "note": info.note}
    return model, tok, kind, about, blocks  # recipe.check_recipe refused a source without a tokenizer


def open_checkpoint(recipe: Recipe, name: str, info: Any, device: str, cache: Path | None) -> tuple[Any, Any, str, Any]:
    """(model, tokenizer, kind, blocks) of source model `name` as the recipe holds it: with `offload` its blocks
    on disk (`blocks`: their reader) and the rest on the CPU, else all on `device` (blocks None); a GGUF read
    from (or converted into) `cache` where given. A checkpoint that cannot be loaded is one line (`from_source`)."""
    from ptq_bench.source_load import load_source, open_source

    source = recipe.models[name].source
    if recipe.offload:
        model, blocks, tok, kind = from_source(name, source, lambda: open_source(info, cache_dir=cache))
        return model, tok, kind, blocks
    model, tok, kind = from_source(name, source, lambda: load_source(info, device, cache_dir=cache))
    return model, tok, kind, None


def model_folder(cache: Path, kind: str, key: str) -> Path:
    """A trained model's cache folder: model/ (toolkit form), hf/, train_info.json."""
    return cache / "models" / f"{kind}-{key}"


def get_model(
    ctx: Context, name: str, tok_key: str, tokenizer: Any, stream: Any, untrained_ppl: Any = None
) -> tuple[Any, str, dict]:
    """(model on the device, kind, training info): load it from the cache or train it once.

    `untrained_ppl(model)`, when given, scores the freshly initialized model (the reference point
    that shows training worked); its result is kept in the training info.
    """
    from ptq_bench.models.build import load_model

    spec = ctx.recipe.models[name]
    path = model_folder(ctx.cache, spec.kind, model_key(ctx, name, tok_key))
    ensure(path, lambda tmp: _train_into(tmp, ctx, name, tokenizer, stream, untrained_ppl), f"model '{name}'")
    model, kind = load_model(path / "model", device=ctx.device)
    return model, kind, json.loads((path / "train_info.json").read_text(encoding="utf-8"))


def _train_into(tmp: Path, ctx: Context, name: str, tokenizer: Any, stream: Any, untrained_ppl: Any) -> None:
    """Train model `name` and write its cache folder at `tmp`: model/ (toolkit form), hf/, train_info.json."""
    from ptq_bench.kinds import train_steps, trained_tokens
    from ptq_bench.models.build import build_model, save_model
    from ptq_bench.models.train import train, trained_on

    r, spec = ctx.recipe, ctx.recipe.models[name]
    model = build_model(spec.kind, model_arch(r, name), len(tokenizer), seed=r.seed).to(ctx.device)
    untrained = untrained_ppl(model) if untrained_ppl is not None else None
    schedule = model_schedule(r, name)
    t, tokens = r.train, stream()  # the corpus is tokenized (once, cached) before the training line
    log(f"training '{name}' ({spec.kind}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"{trained_tokens(t.tokens, t.seq_len, t.batch_size):,} tokens in "
        f"{train_steps(t.tokens, t.seq_len, t.batch_size):,} steps, peak LR {schedule.lr:g})")
    res = train(model, tokens, schedule, total_tokens=r.train.tokens, seq_len=r.train.seq_len,
                batch_size=r.train.batch_size, warmup_steps=r.train.warmup_steps, seed=r.seed,
                grad_clip=r.train.grad_clip, log_every=r.train.log_every, desc=f"train {name}")
    if res.diverged:
        log(f"'{name}' DIVERGED at step {res.diverged_at} (non-finite loss or weights); recorded as a result")
    else:
        log(f"'{name}' trained in {res.seconds:.0f}s, final loss {res.curve[-1]['loss']:.3f}")
    save_model(model, spec.kind, tmp / "model")
    tokenizer.save_pretrained(str(tmp / "model"))
    if export_checkpoint(model, spec.kind, tmp / "hf"):
        tokenizer.save_pretrained(str(tmp / "hf"))
    else:
        log(f"'{name}': no hf/ export (its BitNet weights are not finite: nothing to pack as ternary)")
    info = {"untrained_metrics": untrained, "schedule": to_dict(schedule), "steps": res.steps, "tokens": res.tokens,
            "seconds": res.seconds, "diverged": res.diverged, "diverged_at": res.diverged_at, "curve": res.curve,
            "trained_on": trained_on(next(model.parameters()).device.type)}
    (tmp / "train_info.json").write_text(json.dumps(info, default=str), encoding="utf-8")


def export_checkpoint(model: Any, kind: str, out_dir: Path) -> bool:
    """The transformers-format copy of a trained model (`export_hf`); False, nothing written, for a BitNet
    model whose weights training left non-finite (a divergence): no ternary weights exist to pack."""
    from ptq_bench.kinds import BITNET_MODES
    from ptq_bench.models.build import export_hf
    from ptq_bench.models.train import weights_finite

    if kind in BITNET_MODES and not weights_finite(model):
        return False
    export_hf(model, kind, out_dir)
    return True


def model_record(device: str, model: Any, info: dict) -> dict[str, str]:
    """The manifest's record of a model in an invocation: the device and dtype it ran in (`dtype: auto`: its
    own), and what its source is (sources.py's note), when it has one."""
    from ptq_bench.models.build import dtype_name

    return {"device": device, "dtype": dtype_name(model), **({"note": info["note"]} if info.get("note") else {})}
