"""The recipe: a typed, frozen description of one sweep, loaded from YAML with a safe loader.

Every section is a dataclass; an unknown key, a wrong type or a bad value raises a RecipeError whose
one-line message names the key (`eval.limit: expected int, got 'ten'`). `expand_cells` turns a
recipe into the cells of the sweep: one baseline cell per model plus one per quantization setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ptq_bench.errors import RecipeError
from ptq_bench.models.build import ArchConfig


@dataclass(frozen=True)
class TokenizerSpec:
    vocab_size: int = 16000  # BPE vocabulary (the BitNet paper used 16K)
    train_chars: int = 0  # characters of the training corpus used to fit the BPE (0 = all)

    def __post_init__(self) -> None:
        if not 256 < self.vocab_size <= 262144:
            raise ValueError(f"vocab_size must be in (256, 262144], got {self.vocab_size}")


@dataclass(frozen=True)
class TrainSpec:
    """The token budget and batching shared by every trained model of the recipe."""

    tokens: int = 1_000_000  # training tokens per model (same stream and order for every model)
    seq_len: int = 256  # training window
    batch_size: int = 16  # windows per step
    warmup_steps: int = 50  # linear warm-up steps
    grad_clip: float = 1.0  # max grad norm (0 = off)
    log_every: int = 10  # steps between loss-curve points

    def __post_init__(self) -> None:
        if self.tokens < self.seq_len * self.batch_size:
            raise ValueError(f"tokens must be at least seq_len*batch_size = {self.seq_len * self.batch_size}")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the recipe: trained here (kind + schedule) or loaded from `source`."""

    kind: str = "fp16"  # fp16 | bitnet_b158 | bitnet_b1
    source: str | None = None  # an HF checkpoint dir or hub id to load instead of training
    lr: float | None = None  # peak LR (None = the kind's default, see models/train.py)
    lr_stage2: float | None = None  # b1.58 second-stage peak LR (None = default)
    weight_decay: float | None = None  # None = the kind's default
    arch: dict[str, Any] = field(default_factory=dict)  # overrides of the recipe's arch for this model

    def __post_init__(self) -> None:
        kinds = ("fp16", "bitnet_b158", "bitnet_b1")
        if self.source is None and self.kind not in kinds:
            raise ValueError(f"kind must be one of {', '.join(kinds)}, got '{self.kind}'")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass(frozen=True)
class CalibrationSpec:
    n_samples: int = 128  # random windows of C4 training text (reference: 128)
    seq_len: int = 2048  # tokens per window (reference: 2048)


@dataclass(frozen=True)
class PerplexitySpec:
    sets: list[str] = field(default_factory=lambda: ["wikitext2", "c4"])  # GPTQ-protocol sets
    seq_len: int = 2048  # window length of the GPTQ protocol
    max_windows: int | None = None  # keep only the first k windows (None = the whole set)

    def __post_init__(self) -> None:
        for name in self.sets:
            if name not in ("wikitext2", "c4"):
                raise ValueError(f"unknown perplexity set '{name}' (known: wikitext2, c4)")


@dataclass(frozen=True)
class EvalSpec:
    perplexity: PerplexitySpec = field(default_factory=PerplexitySpec)
    tasks: list[str] = field(default_factory=list)  # lm-eval task names (see `ptq-bench ls`)
    limit: int | None = None  # documents per task (None = all)
    num_fewshot: int = 0  # zero-shot by default, as in the papers
    batch_size: int = 16  # requests per forward batch
    backend: str = "fast"  # fast | hflm (stock lm-eval HFLM)

    def __post_init__(self) -> None:
        if self.backend not in ("fast", "hflm"):
            raise ValueError(f"backend must be 'fast' or 'hflm', got '{self.backend}'")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class QuantSpec:
    """One quantize entry. `params` holds the method's own config keys (w_bits, a_bits, ...).

    List values of w_bits / a_bits sweep: a list of w_bits with a scalar a_bits gives one cell per
    w_bits; two lists of equal length are zipped (w_bits: [8, 4, 1], a_bits: [8, 4, 8] = W8A8, W4A4, W1A8).
    """

    method: str
    models: list[str] | None = None  # models it applies to (None = every fp16 model)
    params: dict[str, Any] = field(default_factory=dict)


# Recipe fields that change no result (names, where files go, free text, report layout, device choice):
# left out of Recipe.digest, so editing them keeps a run folder valid.
NOT_IN_DIGEST = ("name", "output_dir", "cache_dir", "description", "device", "layout")


@dataclass(frozen=True)
class Recipe:
    name: str
    models: dict[str, ModelSpec]
    seed: int = 0  # one seed for init, data order and calibration sampling
    data_dir: str | None = None  # local data folder (else $PTQ_BENCH_DATA)
    output_dir: str | None = None  # results folder (default runs/<name>)
    cache_dir: str = ".ptq_cache"  # trained models, tokenizers, token streams, calibration windows
    device: str = "auto"  # auto | cpu | cuda
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    arch: ArchConfig = field(default_factory=ArchConfig)
    train: TrainSpec = field(default_factory=TrainSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    quantize: list[QuantSpec] = field(default_factory=list)
    eval: EvalSpec = field(default_factory=EvalSpec)
    description: str = ""  # free text shown in reports
    layout: str | None = None  # paper layout of the report: bitnet_table3 | bitnet_b158 (None = generic only)

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    def digest(self) -> str:
        """A hash of what changes results (key order, formatting and NOT_IN_DIGEST fields do not matter)."""
        blob = json.dumps({k: v for k, v in to_dict(self).items() if k not in NOT_IN_DIGEST}, sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One (model, method + settings) point of the sweep."""

    model: str
    method: str  # "none" for the unquantized model
    config: Any = None  # the method's frozen config (None for "none")

    @property
    def w_bits(self) -> float:
        return getattr(self.config, "w_bits", 16) if self.config is not None else 16

    @property
    def a_bits(self) -> float:
        return getattr(self.config, "a_bits", 16) if self.config is not None else 16

    @property
    def label(self) -> str:
        if self.config is None:
            return "none"
        return f"{self.method} W{_fmt_bits(self.w_bits)}A{_fmt_bits(self.a_bits)}"

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config) if self.config is not None else {}


def _fmt_bits(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else str(b)


# ----------------------------------------------------------------------------------------------
# typed loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (dataclasses built)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return value
    raise RecipeError(f"{where}: unsupported type {tp}")  # pragma: no cover - schema bug


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types name the key path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in names:
            raise RecipeError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f)]
        raise RecipeError(f"{prefix}{missing[0] if missing else ''}: {exc}") from None
    except ValueError as exc:
        raise RecipeError(f"{where or 'recipe'}: {exc}") from None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj


def _parse_quant(raw: Any, i: int) -> QuantSpec:
    where = f"quantize[{i}]"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping with a 'method' key, got {raw!r}")
    raw = dict(raw)
    method = raw.pop("method", None)
    if not isinstance(method, str):
        raise RecipeError(f"{where}.method: required, a method name (see `ptq-bench ls`)")
    models = raw.pop("models", None)
    if models is not None:
        models = _coerce(models, list[str], f"{where}.models")
    return QuantSpec(method=method, models=models, params=raw)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (structure and values; see `check_recipe` for the rest)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise RecipeError(f"{path}: not valid YAML{line}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping")
    raw = dict(raw)
    quant_raw = raw.pop("quantize", []) or []
    if not isinstance(quant_raw, list):
        raise RecipeError("quantize: expected a list of entries")
    if "models" not in raw or not raw["models"]:
        raise RecipeError("models: required, a mapping of model name -> spec")
    recipe = from_dict(Recipe, raw)
    quant = [_parse_quant(q, i) for i, q in enumerate(quant_raw)]
    recipe = dataclasses.replace(recipe, quantize=quant)
    check_recipe(recipe)
    return recipe


def _sweep_params(params: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Expand list-valued w_bits / a_bits into one params dict per cell (see QuantSpec)."""
    w, a = params.get("w_bits"), params.get("a_bits")
    wl, al = isinstance(w, list), isinstance(a, list)
    if wl and al and len(w) != len(a):
        raise RecipeError(f"{where}: w_bits and a_bits lists must have the same length to be zipped")
    n = len(w) if wl else len(a) if al else 1
    if n == 0:
        raise RecipeError(f"{where}: empty bits list")
    out = []
    for i in range(n):
        p = dict(params)
        if wl:
            p["w_bits"] = w[i]
        if al:
            p["a_bits"] = a[i]
        out.append(p)
    return out


def expand_cells(recipe: Recipe) -> list[Cell]:
    """Baseline cells (one per model) then every quantize entry x model x bits setting."""
    from ptq_bench.quant import get_method

    cells = [Cell(name, "none") for name in recipe.models]
    for i, q in enumerate(recipe.quantize):
        where = f"quantize[{i}]"
        method = get_method(q.method) if q.method in _method_names() else None
        if method is None:
            raise RecipeError(f"{where}.method: unknown method '{q.method}' (known: {', '.join(_method_names())})")
        targets = q.models if q.models is not None else [n for n, m in recipe.models.items() if m.kind == "fp16"]
        for name in targets:
            if name not in recipe.models:
                raise RecipeError(f"{where}.models: unknown model '{name}' (known: {', '.join(recipe.models)})")
        for params in _sweep_params(q.params, where):
            cfg = method.make_config(params, where)
            cells.extend(Cell(name, q.method, cfg) for name in targets)
    seen: set[tuple] = set()
    unique = []
    for c in cells:  # the same setting listed twice runs once
        key = (c.model, c.method, json.dumps(c.config_dict(), sort_keys=True))
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _method_names() -> list[str]:
    from ptq_bench.quant import METHODS, load_all

    load_all()
    return sorted(METHODS)


def check_recipe(recipe: Recipe) -> None:
    """Cross-field checks: arch overrides, task names, methods and their configs, seq lengths."""
    from ptq_bench.eval.harness import TASKS

    for name, spec in recipe.models.items():
        _ = model_arch(recipe, name)
        if spec.source is None and max(recipe.train.seq_len, recipe.eval.perplexity.seq_len) > model_arch(
            recipe, name
        ).max_seq_len:
            raise RecipeError(f"models.{name}.arch.max_seq_len: shorter than train/eval seq_len")
    for i, task in enumerate(recipe.eval.tasks):
        if task not in TASKS:
            raise RecipeError(f"eval.tasks[{i}]: unknown task '{task}' (known: {', '.join(sorted(TASKS))})")
    from ptq_bench.report.paper import LAYOUTS

    if recipe.layout is not None and recipe.layout not in LAYOUTS:
        raise RecipeError(f"layout: unknown layout '{recipe.layout}' (known: {', '.join(LAYOUTS)})")
    if recipe.device not in ("auto", "cpu", "cuda"):
        raise RecipeError(f"device: expected auto, cpu or cuda, got '{recipe.device}'")
    expand_cells(recipe)


def model_arch(recipe: Recipe, name: str) -> ArchConfig:
    spec = recipe.models[name]
    base = to_dict(recipe.arch)
    for key in spec.arch:
        if key not in base:
            raise RecipeError(f"models.{name}.arch.{key}: unknown key (known: {', '.join(sorted(base))})")
    return from_dict(ArchConfig, {**base, **spec.arch}, f"models.{name}.arch")
