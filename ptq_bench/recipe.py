"""The recipe: a typed, frozen description of one sweep, loaded from YAML with a strict safe loader.

Every section is a dataclass read by the one typed loader (`ptq_bench.config`): an unknown key, a wrong
type or an out-of-bounds value raises a one-line RecipeError that names the key
(`train.seq_len: must be >= 1, got 0`). Cross-field checks (context lengths, names used as paths,
`source:` folders, which models a method may quantize) follow in `check_recipe`. `expand_cells` turns
a recipe into the cells of the sweep: one baseline cell per model plus one per quantization setting.

Light by design: no torch, pandas or method code is imported here (name lists come from light
modules), so `ptq-bench validate` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from ptq_bench.cells import MAX_SETTINGS, Cell, calib_seed, expand_cells
from ptq_bench.config import ConfigError, bound, fields_hash, from_dict, load_yaml, short, to_dict
from ptq_bench.data import PPL_FILES, TRAIN_FILES
from ptq_bench.errors import RecipeError
from ptq_bench.eval.harness import BACKENDS, TASKS
from ptq_bench.kinds import TRAINED_KINDS, schedule_keys, train_steps
from ptq_bench.models.arch import ArchConfig
from ptq_bench.paths import check_component, folder_path
from ptq_bench.quant.configs import CATALOG, SEED_MAX
from ptq_bench.report.layouts import LAYOUT_NAMES
from ptq_bench.sources import SAFETENSORS_FILE, SAFETENSORS_INDEX, SourceInfo, inspect_source, refuse_offline

__all__ = ["Cell", "Recipe", "calib_seed", "expand_cells", "load_recipe", "model_arch", "to_dict"]

MAX_FILE_BYTES = 1 << 18  # a recipe is a small text file (pure-Python YAML parses ~1 MB/s)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: each model's own (see Recipe.dtype)
MAX_RATE = 1e9  # largest lr / weight_decay: a divergence is a result, a float32 overflow inside torch a traceback
EXECUTORS = ("local", "ray")  # where cells run: this process, or Ray actors (ptq_bench/executors.py)


@dataclass(frozen=True)
class TokenizerSpec:
    vocab_size: int = bound(16000, gt=256, max=262144)  # BPE vocabulary (the BitNet paper used 16K)
    train_chars: int = bound(0, min=0)  # characters of the training corpus used to fit the BPE (0 = all)


@dataclass(frozen=True)
class TrainSpec:
    """The token budget and batching shared by every trained model of the recipe."""

    tokens: int = bound(1_000_000, min=1)  # training tokens per model (same stream and order for every model)
    seq_len: int = bound(256, min=1, max=1 << 22)  # training window
    batch_size: int = bound(16, min=1, max=1 << 20)  # windows per step
    warmup_steps: int = bound(50, min=0)  # linear warm-up steps
    grad_clip: float = bound(1.0, min=0.0)  # max grad norm (0 = off)
    log_every: int = bound(10, min=1)  # steps between loss-curve points

    def __post_init__(self) -> None:
        if self.tokens < self.seq_len * self.batch_size:
            raise ValueError(f"tokens must be at least seq_len*batch_size = {self.seq_len * self.batch_size}")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the recipe: trained here (kind + schedule) or loaded from `source`."""

    kind: str = bound("fp16", choices=TRAINED_KINDS)  # ptq_bench/kinds.py; a `source:` model's comes from its files
    source: str | None = None  # an HF checkpoint dir or hub id to load instead of training
    # rates <= MAX_RATE: torch's Adam step (10 x lr at step 1) and AdamW's decay (1 - lr * wd) stay finite float32
    lr: float | None = bound(None, gt=0.0, max=MAX_RATE)  # peak LR (None = the kind's default, see models/train.py)
    lr_stage2: float | None = bound(None, gt=0.0, max=MAX_RATE)  # b1.58 second-stage peak LR (None = default)
    weight_decay: float | None = bound(None, min=0.0, max=MAX_RATE)  # None = the kind's default
    arch: dict[str, Any] = field(default_factory=dict)  # overrides of the recipe's arch for this model

    def __post_init__(self) -> None:
        if self.source is not None:  # a key that only training reads would be silently ignored
            training = [k for k in ("lr", "lr_stage2", "weight_decay") if getattr(self, k) is not None]
            training += ["arch"] * bool(self.arch) + ["kind"] * (self.kind != "fp16")
            if training:
                raise ValueError(f"{training[0]}: a `source:` model is loaded, not trained here "
                                 "(its kind and architecture come from its files); remove the key")
        elif self.lr_stage2 is not None and "lr_stage2" not in schedule_keys(self.kind):
            raise ValueError(f"lr_stage2: kind {self.kind} trains with a one-stage schedule; use lr")


@dataclass(frozen=True)
class CalibrationSpec:
    n_samples: int = bound(128, min=1, max=1 << 20)  # random windows of C4 training text (reference: 128)
    seq_len: int = bound(2048, min=1, max=1 << 22)  # tokens per window (reference: 2048)
    # seeds of the calibration windows; every calibrated cell runs once per seed (None = [recipe.seed])
    seeds: list[int] | None = bound(None, min=0, max=SEED_MAX, unique=True)

    def __post_init__(self) -> None:
        if self.seeds is not None and not 1 <= len(self.seeds) <= MAX_SETTINGS:
            raise ValueError(f"seeds must list 1 to {MAX_SETTINGS} seeds")


@dataclass(frozen=True)
class PerplexitySpec:
    sets: list[str] = bound(factory=lambda: ["wikitext2", "c4"], choices=tuple(PPL_FILES), unique=True)
    seq_len: int = bound(2048, min=2, max=1 << 22)  # window length of the GPTQ protocol
    max_windows: int | None = bound(None, min=1)  # keep only the first k windows (None = the whole set)


@dataclass(frozen=True)
class EvalSpec:
    perplexity: PerplexitySpec = field(default_factory=PerplexitySpec)
    tasks: list[str] = bound(factory=list, choices=tuple(TASKS), unique=True)  # lm-eval tasks (`ptq-bench ls`)
    limit: int | None = bound(None, min=1)  # documents per task (None = all)
    num_fewshot: int = bound(0, min=0, max=1000)  # zero-shot by default, as in the papers
    batch_size: int = bound(16, min=1, max=1 << 16)  # requests per forward batch
    backend: str = bound("fast", choices=BACKENDS)  # fast | hflm (stock lm-eval HFLM)
    kld: bool = True  # KL divergence / top-1 agreement of every quantized cell to its base (eval/kld.py)


@dataclass(frozen=True)
class QuantSpec:
    """One quantize entry. `params` holds the method's own config keys (w_bits, a_bits, ...).

    List values of w_bits / a_bits sweep: a list of w_bits with a scalar a_bits gives one cell per
    w_bits; two lists of equal length are zipped (w_bits: [8, 4, 1], a_bits: [8, 4, 8] = W8A8, W4A4, W1A8)."""

    method: str
    models: list[str] | None = None  # models it applies to (None = every default PTQ target, kinds.py)
    params: dict[str, Any] = field(default_factory=dict)
    # calibration seeds of this entry's cells (None = calibration.seeds); only for calibrated methods
    seeds: list[int] | None = bound(None, min=0, max=SEED_MAX, unique=True)
    # lm-eval tasks of this entry's cells, a subset of eval.tasks (None = all of them; [] = perplexity/KLD only)
    tasks: list[str] | None = bound(None, choices=tuple(TASKS), unique=True)

    def __post_init__(self) -> None:
        if self.seeds is not None and not 1 <= len(self.seeds) <= MAX_SETTINGS:
            raise ValueError(f"seeds must list 1 to {MAX_SETTINGS} seeds")


@dataclass(frozen=True)
class ExecutorSpec:
    """Where cells run; changes no result. `ptq-bench run --executor/--address` override kind/address."""

    kind: str = bound("local", choices=EXECUTORS)  # local: one process; ray: Ray actors (docs/cluster.md)
    address: str | None = bound(None, max_len=500, nonblank=True)  # Ray cluster (None: $RAY_ADDRESS, one `ray start`ed here, or new)
    cpus_per_cell: float = bound(1.0, gt=0.0, max=1024)  # CPUs of each Ray actor (model preparation and cells)
    gpus_per_cell: float = bound(0.0, min=0.0, max=64)  # GPUs of each Ray actor (a fraction shares a GPU)
    max_retries: int = bound(2, min=0, max=100)  # re-runs of a call lost with its worker (a raised error is final)


# Recipe fields that change no result (names, where files go, free text, report layout, device choice,
# executor): left out of Recipe.digest, so editing them keeps a run folder valid.
NOT_IN_DIGEST = ("name", "output_dir", "cache_dir", "data_dir", "description", "device", "layout", "executor",
                 "in_place", "offload")
# Fields added after run folders existed: in Recipe.digest only when set away from their default, so a folder
# written before the field was added keeps its hash (and its rows).
DIGEST_UNLESS_DEFAULT = {"dtype": "auto"}


@dataclass(frozen=True)
class Recipe:
    name: str = bound(max_len=100)  # a plain name: the default results folder is runs/<name>
    models: dict[str, ModelSpec]  # model name -> spec (at least one)
    seed: int = bound(0, min=0, max=SEED_MAX)  # one seed for init, data order and calibration sampling
    data_dir: str | None = bound(None, nonblank=True)  # local data folder (else $PTQ_BENCH_DATA)
    output_dir: str | None = bound(None, nonblank=True)  # results folder (default runs/<name>)
    cache_dir: str = bound(".ptq_cache", nonblank=True)  # trained models, tokenizers, token streams, calibration windows
    device: str = bound("auto", choices=DEVICES)  # auto: cuda when torch sees a GPU, else cpu
    # the dtype models are quantized and evaluated in: auto keeps each model's own (trained here: float32, bf16
    # autocast on CUDA; checkpoint: its stored dtype; GGUF: float32); others cast after loading (RoPE stays float32)
    dtype: str = bound("auto", choices=DTYPES)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    arch: ArchConfig = field(default_factory=ArchConfig)
    train: TrainSpec = field(default_factory=TrainSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    quantize: list[QuantSpec] = field(default_factory=list)
    eval: EvalSpec = field(default_factory=EvalSpec)
    description: str = bound("", max_len=10_000)  # free text shown in reports
    layout: str | None = bound(None, choices=LAYOUT_NAMES)  # paper layout of the report (None = generic only)
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    # quantize the base model itself, its float blocks saved under the cache and restored after each cell,
    # instead of a copy: about 1x the model's memory instead of 2x, the same numbers (for a checkpoint that
    # from_pretrained maps, 1x in anonymous memory; the mapping's clean pages still count in RSS)
    in_place: bool = False
    # keep `source:` models' decoder blocks on disk (models larger than host memory): opened from their
    # safetensors checkpoint without reading the blocks, quantized one block at a time in place (each cell's
    # blocks written under the cache) and evaluated streaming one block at a time; the same numbers, slower.
    # Models trained here stay in memory.
    offload: bool = False

    @property
    def out_dir(self) -> Path:
        """The results folder (`~` expanded, as the checks before writing expand it)."""
        return folder_path(self.output_dir or f"runs/{self.name}")

    @property
    def cache_path(self) -> Path:
        return folder_path(self.cache_dir)

    @property
    def trains_tokenizer(self) -> bool:
        """Whether a run trains the recipe's BPE: not when every model is a `source:` with its own."""
        return any(spec.source is None for spec in self.models.values())

    def digest(self) -> str:
        """A hash of the recipe as written, but for key order, formatting and NOT_IN_DIGEST fields (a run folder's
        identity: its rows carry it; `meaning.folder_recipe` lets another wording of the same cells resume it)."""
        return fields_hash(digest_fields(self))


def digest_fields(recipe: Recipe) -> dict[str, Any]:
    """The recipe's fields that `Recipe.digest` hashes, as plain data."""
    return {k: v for k, v in to_dict(recipe).items()
            if k not in NOT_IN_DIGEST and DIGEST_UNLESS_DEFAULT.get(k, MISSING) != v}


# ----------------------------------------------------------------------------------------------
# loading


def _read_yaml(path: Path) -> Any:
    """The parsed recipe file; unreadable, oversized, non-UTF-8 or malformed YAML is a RecipeError."""
    where = short(str(path), 120)[1:-1]
    try:
        if path.is_dir():  # `run runs/x`: a results folder (or `recipes/`) given where a recipe file goes
            hint = f": `ptq-bench report {where}` re-renders that results folder" if (path / "results.jsonl").is_file() else ""
            raise RecipeError(f"{where} is a folder, not a recipe file{hint}")
        if not path.is_file():
            raise RecipeError(f"not a regular file: {where}" if path.exists() else f"recipe file not found: {where}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise RecipeError(f"{where}: larger than {MAX_FILE_BYTES} bytes; a recipe is a small text file")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RecipeError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        return load_yaml(text)
    except ConfigError as exc:
        raise RecipeError(f"{where}: {exc}") from None


_ENTRY_KEYS = ("models", "seeds", "tasks")  # QuantSpec keys of a quantize entry beside `method`


def _parse_quant(raw: Any, i: int) -> QuantSpec:
    where = f"quantize[{i}]"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping with a 'method' key, got {short(raw)}")
    raw = dict(raw)
    method = raw.pop("method", None)
    if not isinstance(method, str):
        raise RecipeError(f"{where}.method: required, a method name (see `ptq-bench ls`)")
    if method not in CATALOG:
        raise RecipeError(f"{where}.method: unknown method {short(method)} (known: {', '.join(sorted(CATALOG))})")
    entry = {key: raw.pop(key) for key in _ENTRY_KEYS if key in raw}  # the rest are the method's own keys
    return dataclasses.replace(from_dict(QuantSpec, {"method": method, **entry}, where), params=raw)


def load_recipe(path: str | Path, executor: dict[str, str] | None = None) -> Recipe:
    """Read and check a recipe file (no writes); `executor`: `run`'s --executor / --address over its section."""
    path, raw = Path(path), _read_yaml(Path(path))
    if not isinstance(raw, dict):
        raise RecipeError(f"{short(str(path), 120)[1:-1]}: a recipe is a YAML mapping")
    raw = dict(raw)
    if executor and isinstance(raw.get("executor") or {}, dict):  # a section of another type is refused below
        raw["executor"] = {**(raw.get("executor") or {}), **executor}
        if "address" in executor and raw["executor"].get("kind", "local") != "ray":
            raise RecipeError("--address: a Ray cluster address needs --executor ray (or executor.kind: ray)")
    quant_raw = raw.pop("quantize", None)
    quant_raw = [] if quant_raw is None else quant_raw  # `quantize:` left empty; {} or false is not a list
    if not isinstance(quant_raw, list):
        raise RecipeError("quantize: expected a list of entries")
    if not raw.get("models"):
        raise RecipeError("models: required, a mapping of model name -> spec")
    recipe = from_dict(Recipe, raw)
    recipe = dataclasses.replace(recipe, quantize=[_parse_quant(q, i) for i, q in enumerate(quant_raw)])
    check_recipe(recipe)
    _refuse_paths_read_as_hub_ids(recipe, path.resolve().parent)
    return recipe


def _refuse_paths_read_as_hub_ids(recipe: Recipe, recipe_dir: Path) -> None:
    """A relative `source:` path is read from the current folder (elsewhere `ckpt/model` beside the recipe would be
    taken for a hub id); a hub id nothing can download (not cached, HF_HUB_OFFLINE set) is refused too."""
    for name, spec in recipe.models.items():
        info = None if spec.source is None else source_info(recipe, name)
        if info is None or info.form != "hub":
            continue
        if not Path(spec.source).expanduser().exists() and (recipe_dir / spec.source).exists():
            raise RecipeError(f"models.{name}.source: {short(spec.source)} is not in the current folder ({Path.cwd()}) "
                              f"but is beside the recipe; relative paths are read from the current folder: run from "
                              "there or give an absolute path")
        refuse_offline(info, f"models.{name}.source")


# ----------------------------------------------------------------------------------------------
# cross-field checks


def source_info(recipe: Recipe, name: str) -> SourceInfo:
    """What model `name`'s `source:` is (ptq_bench/sources.py reads it without loading; re-read on every
    call, its file digests once per process: `data.file_digest`)."""
    return inspect_source(recipe.models[name].source, f"models.{name}.source")


def model_kind(recipe: Recipe, name: str) -> str:
    """The kind of model `name`: its `kind` when trained here; for a `source:` what its files say
    (a hub id that is not available offline counts as fp16 here; loading it checks again)."""
    spec = recipe.models[name]
    if spec.source is None:
        return spec.kind
    return source_info(recipe, name).kind or "fp16"


def check_recipe(recipe: Recipe) -> None:
    """Cross-field checks: names used as paths, sources, arch overrides, lengths, quantize entries."""
    from ptq_bench.lengths import check_lengths

    check_component(recipe.name, "name")
    for name, spec in recipe.models.items():
        check_component(name, "models: a model name")
        if spec.source is not None and not source_info(recipe, name).has_tokenizer:  # its requests cannot be encoded
            raise RecipeError(f"models.{name}.source: {short(spec.source)} holds no tokenizer (tokenizer.json or GGUF vocab)")
        model_arch(recipe, name)
    expand_cells(recipe)
    check_lengths(recipe)
    check_executor(recipe)
    check_offload(recipe)
    check_dtype(recipe)
    check_warmup(recipe)


def check_warmup(recipe: Recipe) -> None:
    """The warm-up ends before training does, and before a two-stage schedule's second stage (models/train.py
    `lr_at`): past either, the LR never reaches the peak the rows name or stage two runs on stage one's warm-up."""
    trained = [(n, s.kind) for n, s in recipe.models.items() if s.source is None]
    t = recipe.train
    steps, warmup = train_steps(t.tokens, t.seq_len, t.batch_size), t.warmup_steps
    if trained and warmup >= steps:
        raise RecipeError(f"train.warmup_steps: {warmup} is not fewer than the {steps} training steps "
                          "(tokens // (seq_len * batch_size)): the LR would never leave its warm-up")
    for name, kind in trained:
        if "lr_stage2" in schedule_keys(kind) and warmup > steps // 2:
            raise RecipeError(f"train.warmup_steps: {warmup} runs past step {steps // 2} of {steps}, where model "
                              f"'{name}' ({kind}) starts its second stage; use at most {steps // 2}")


def check_dtype(recipe: Recipe) -> None:
    """A cast needs the whole model in memory: `offload` streams blocks in the checkpoint's own dtype."""
    if recipe.dtype != "auto" and recipe.offload:
        raise RecipeError(f"dtype: {recipe.dtype} casts models in memory, but offload: true streams each block "
                          "in its checkpoint's dtype; use dtype: auto (or save the checkpoint in that dtype)")


OFFLOADABLE = ("hf_dir", "hub", "gguf", "packaged")  # source forms with (or converted to) a safetensors folder


def check_offload(recipe: Recipe) -> None:
    """`offload: true` needs at least one `source:` model, each a checkpoint folder on this machine."""
    if not recipe.offload:
        return
    sources = [n for n, spec in recipe.models.items() if spec.source is not None]
    if not sources:
        raise RecipeError("offload: true keeps source checkpoints on disk, but no model has a `source:`")
    for name in sources:
        info = source_info(recipe, name)
        if info.form not in OFFLOADABLE:
            raise RecipeError(f"models.{name}.source: offload needs a transformers checkpoint folder, "
                              f"{info.source} is a {info.form}")
        if info.form == "hub" and info.path is None:
            raise RecipeError(f"models.{name}.source: offload reads the checkpoint from disk; "
                              f"{info.source} is not in the local hub cache (download it first)")
        if info.kind != "fp16":
            raise RecipeError(f"models.{name}.source: offload loads full-precision checkpoints only, "
                              f"{info.source} is {info.kind}")
        if info.form in ("hf_dir", "hub") and not any((Path(info.path) / f).is_file() for f in (SAFETENSORS_FILE, SAFETENSORS_INDEX)):
            raise RecipeError(f"models.{name}.source: offload reads safetensors checkpoints only; {info.path} has no "
                              f"{SAFETENSORS_FILE} or {SAFETENSORS_INDEX} (load it in memory, or save it with safetensors)")


def check_executor(recipe: Recipe) -> None:
    """On Ray a task may use only the GPU share reserved for it: `device: cuda` needs executor.gpus_per_cell > 0."""
    ex = recipe.executor
    if ex.kind == "local" and ex.address is not None:  # as `--address` without `--executor ray` is refused
        raise RecipeError(f"executor.address: {short(ex.address)} is for kind ray (or --executor ray); local ignores it")
    if ex.kind == "ray" and recipe.device == "cuda" and ex.gpus_per_cell == 0:
        raise RecipeError("executor.gpus_per_cell: device cuda on Ray needs a GPU share per task (> 0), got 0")


def model_arch(recipe: Recipe, name: str) -> ArchConfig:
    """The recipe's arch with model `name`'s overrides applied (through the typed loader)."""
    return from_dict(ArchConfig, {**to_dict(recipe.arch), **recipe.models[name].arch}, f"models.{name}.arch")


def required_data_files(recipe: Recipe) -> list[str]:
    """Data files (relative to the data folder) the recipe reads: training text, perplexity sets, tasks."""
    files = list(TRAIN_FILES) + [PPL_FILES[s] for s in recipe.eval.perplexity.sets]
    for task in recipe.eval.tasks:
        files.extend(TASKS[task].data_files.values())
    return list(dict.fromkeys(files))
