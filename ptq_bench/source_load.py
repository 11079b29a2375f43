"""Loading a `source:` model that `sources.inspect_source` described (torch and transformers imported here
only): a checkpoint folder, a cached hub snapshot or a hub id downloaded now, a GGUF file (converted once
into the cache), or a toolkit folder. A checkpoint that transformers would complete with random tensors is
refused."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

from ptq_bench.errors import RecipeError, first_line
from ptq_bench.json_text import loads
from ptq_bench.models.experts import unfuse_experts
from ptq_bench.sources import SourceInfo, checked_family, kind_of


def load_source(info: SourceInfo, device: str = "cpu", *, tokenizer: bool = True,
                cache_dir: Path | None = None) -> tuple[Any, Any, str]:
    """(model in eval mode on `device`, its tokenizer or None, kind) for an inspected source.

    A GGUF model comes back as a plain transformers model rebuilt from the dequantized one (which
    transformers refuses to `save_pretrained`), with identical logits; its tokenizer is read from the
    GGUF. With `cache_dir`, that conversion is done once and kept as a plain checkpoint folder keyed by
    the GGUF's content hash (SmolLM2-135M here: ~40-90 s from the GGUF, ~1 s from the folder).
    The tokenizer is None when `tokenizer=False` or the source holds no tokenizer.
    """
    if info.form in ("gguf", "packaged") and cache_dir is not None:
        info = _converted(info, Path(cache_dir))
    if info.form == "ptq_bench_dir":
        from ptq_bench.models.build import load_toolkit

        model, kind = load_toolkit(Path(info.path), device), info.kind
    elif info.form in ("gguf", "packaged"):
        model, kind = _load_gguf(Path(info.path), info), info.kind
    else:
        model, kind = _load_pretrained(info)
    _refuse_non_finite(info, model)
    tok = _load_tokenizer(info) if tokenizer and info.has_tokenizer else None
    _refuse_tokenizer(info, model, tok)
    unfuse_experts(model)  # a mixture of experts: one linear pair per expert, for every cell alike
    return model.to(device).eval(), tok, kind


def open_source(info: SourceInfo, *, cache_dir: Path | None = None) -> tuple[Any, Any, Any, str]:
    """`load_source` for a model kept on disk (recipe `offload: true`): (model whose decoder blocks are
    `meta`, the `models.lazy.CheckpointBlocks` that reads them, tokenizer or None, kind). The model is on
    the CPU; a GGUF is converted into the cache first, as for `load_source`."""
    from ptq_bench.models.lazy import open_lazily

    if info.form in ("gguf", "packaged") and cache_dir is not None:
        info = _converted(info, Path(cache_dir))
    if info.form not in ("hf_dir", "hub") or info.path is None:
        raise RecipeError(f"source '{info.source}': offload needs a checkpoint folder on disk ({info.form})")
    try:
        model, blocks = open_lazily(info.path)
    except ImportError as e:  # a package transformers builds the model with (Gemma 3n's vision tower: timm)
        raise _load_error(info, e) from None
    return model, blocks, _load_tokenizer(info) if info.has_tokenizer else None, info.kind


def converted_folder(info: SourceInfo, cache_dir: Path) -> Path:
    """Where a GGUF source's plain checkpoint folder lives under cache_dir (`_converted` writes it)."""
    return cache_dir / f"gguf-{info.content_hash[:16]}"


def has_conversion(info: SourceInfo, cache_dir: Path) -> bool:
    """Whether `_converted` has written the GGUF source's folder under cache_dir, complete (its checksums agree)."""
    from ptq_bench.cache import problem

    return problem(converted_folder(info, cache_dir)) is None


def _converted(info: SourceInfo, cache_dir: Path) -> SourceInfo:
    """The GGUF source as a plain checkpoint folder under cache_dir (`cache.ensure`: built once with a checksum
    list written last; an altered or cut file is rebuilt from the GGUF, not loaded as the model)."""
    from ptq_bench.cache import ensure

    def build(tmp: Path) -> None:
        model, tok = _load_gguf(Path(info.path), info), _load_tokenizer(info)
        model.save_pretrained(tmp)
        tok.save_pretrained(str(tmp))
        (tmp / "source.json").write_text(json.dumps({"source": info.source, "gguf": info.path,
                                                     "content_hash": info.content_hash, "note": info.note}, indent=2))

    out = ensure(converted_folder(info, cache_dir), build, f"converted GGUF of '{info.source}'")
    return SourceInfo(info.source, "hf_dir", str(out), info.model_type, info.kind, info.native_bits,
                      info.context_length, info.content_hash, True, info.note)


def _load_pretrained(info: SourceInfo) -> tuple[Any, str]:
    """An HF folder, a cached hub snapshot, or a hub id downloaded now (family and kind checked first)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    name, kind = info.path or info.source, info.kind
    if info.path is None:  # uncached hub id: validate could not read it, check it now
        try:
            config = AutoConfig.from_pretrained(name).to_dict()
        except (OSError, ValueError, ImportError) as e:
            raise _load_error(info, e) from None
        checked_family(config.get("model_type"), "source", name)
        kind = kind_of(config, "source", name)
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(name, output_loading_info=True)
    except pickle.UnpicklingError:  # torch.load(weights_only=True); its message ends advising weights_only=False
        raise RecipeError(f"source '{info.source}': its .bin weights hold pickled objects other than tensors, which "
                          "are never unpickled (weights_only=True); use a safetensors checkpoint") from None
    except (OSError, RuntimeError, ImportError) as e:  # RuntimeError: transformers 5 on tensors of another shape than
        raise _load_error(info, e) from None  # config.json; ImportError: a package the model needs, not installed
    _refuse_incomplete(info, loading)
    _refuse_integer_stored(info, model)
    return model, kind


def _load_error(info: SourceInfo, e: Exception) -> RecipeError:
    """One line: a hub id that could not be fetched, a local checkpoint that could not be read, or a model that
    transformers builds with a package not installed (Gemma 3n's vision tower, timm's TimmWrapperModel: the first
    sentence of transformers' message names it)."""
    first = first_line(e, type(e).__name__)
    if "ignore_mismatched_sizes" in first:
        first = "tensors of another shape than its config.json says (transformers' load report above names them)"
    if isinstance(e, ImportError):  # "X requires the timm library but it was not found in your environment. ..."
        first = first.split(". ")[0].replace(" but it was not found in your environment", ", which is not installed")
    hub = info.form == "hub" and not isinstance(e, ImportError)
    what = "cannot load from the hub (offline or not cached?)" if hub else "cannot load the checkpoint"
    return RecipeError(f"source '{info.source}': {what}: {first}")


def _refuse_incomplete(info: SourceInfo, loading: dict[str, Any]) -> None:
    """transformers fills tensors a checkpoint lacks with random values and only logs it: rows of such a
    model would name a checkpoint they were not computed from. (A tensor of another shape it refuses
    itself, unless `ignore_mismatched_sizes`, which is never passed.)"""
    if missing := sorted(map(str, loading.get("missing_keys") or ())):
        raise RecipeError(f"source '{info.source}': the checkpoint lacks {len(missing)} of the model's tensors "
                          f"(first: {missing[0]}), which transformers would fill with random values")


def _refuse_non_finite(info: SourceInfo, model: Any) -> None:
    """A checkpoint holding NaN or inf weights (one that overflowed in fp16, or saved from a diverged run):
    its base row would be NaN under a model recorded as not diverged, and no quantization grid fits it."""
    import torch

    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            bad = int((~torch.isfinite(p)).sum())
            raise RecipeError(f"source '{info.source}': {name} holds {bad} NaN or inf values of {p.numel()} (a "
                              "checkpoint that overflowed or diverged?); only finite models are evaluated")


def _refuse_integer_stored(info: SourceInfo, model: Any) -> None:
    """A float parameter stored as integers (a safetensors header naming I32 for F32 bytes): from_pretrained casts the
    integers to float and the rows are computed from garbage (offload refuses it in `lazy._check_stored`). And a
    tensor in two shards: from_pretrained took the one its index does not name, offload the other."""
    from safetensors import safe_open

    params, seen = {n: p for n, p in model.state_dict().items() if p.is_floating_point()}, {}
    for file in _stored_files(Path(info.path)) if info.path else ():
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                stored = f.get_slice(key).get_dtype()
                if key in params and not stored.startswith(("F", "BF")):
                    raise RecipeError(f"source '{info.source}': {file.name}: tensor {key} is stored as {stored}, the "
                                      f"model's is {params[key].dtype}: a damaged header? re-save the checkpoint")
                if key in seen:
                    raise RecipeError(f"source '{info.source}': tensor {key} is stored in both {seen[key].name} and "
                                      f"{file.name}; which one is the model's is not clear: re-save the checkpoint")
                seen[key] = file


def _stored_files(folder: Path) -> list[Path]:
    """The safetensors files from_pretrained reads: model.safetensors where there is one, else the index's shards."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file() or not index.is_file():
        return [single] if single.is_file() else []
    from ptq_bench.source_checks import index_shards

    return [folder / f for f in index_shards(index)]


def _refuse_tokenizer(info: SourceInfo, model: Any, tok: Any) -> None:
    """A tokenizer the model cannot use: ids past its embedding (an IndexError mid-evaluation), or neither an eos
    nor a bos token (lm-eval's prefix token for loglikelihood requests; a TypeError mid-run)."""
    if tok is None:
        return
    rows = model.get_input_embeddings().num_embeddings  # added tokens past it (a GGUF's pad) are never fed
    used = max([tok.vocab_size] + [i + 1 for i in (tok.eos_token_id, tok.bos_token_id) if i is not None])
    if used > rows:
        raise RecipeError(f"source '{info.source}': its tokenizer has {used} tokens, the model's embedding "
                          f"{rows} rows (config.json vocab_size or tokenizer files from another model?)")
    if tok.eos_token_id is None and tok.bos_token_id is None:
        raise RecipeError(f"source '{info.source}': its tokenizer names neither an eos nor a bos token "
                          "(tokenizer_config.json), one of which lm-eval puts before every request")


def _load_gguf(file: Path, info: SourceInfo) -> Any:
    """Dequantized GGUF -> a plain model of the same class built from its config and state dict.

    transformers has two GGUF loaders: the legacy one dequantizes every tensor and marks the config with a
    `quantization_config`; the newer one (LFM2, Qwen3.5: `integrations/gguf`) sets none, and keeps quantized
    weights packed (uint8 blocks in GgufLinear) wherever it finds a GGUF kernel, unless asked to dequantize."""
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    gguf_model, loading = AutoModelForCausalLM.from_pretrained(
        str(file.parent), gguf_file=file.name, quantization_config=GgufConfig(dequantize=True), output_loading_info=True)
    _refuse_incomplete(info, loading)
    gguf_model.eval()
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):  # the legacy loader's marker; the rebuilt model is plain float
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):  # random init, overwritten below: leave the caller's RNG alone
        model = AutoModelForCausalLM.from_config(config, dtype=next(gguf_model.parameters()).dtype).eval()
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    probe = torch.arange(min(16, config.vocab_size)).unsqueeze(0)  # (1, 16)
    with torch.inference_mode():
        same = torch.equal(model(probe).logits, gguf_model(probe).logits)
    if not same:
        raise RuntimeError(f"{file}: the rebuilt plain model's logits differ from the GGUF-loaded model's")
    return model


def _load_tokenizer(info: SourceInfo) -> Any:
    from transformers import AutoTokenizer

    if info.form in ("gguf", "packaged"):
        file = Path(info.path)
        return AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    _refuse_unreadable_json(info)
    return AutoTokenizer.from_pretrained(info.path or info.source)


def _refuse_unreadable_json(info: SourceInfo) -> None:
    """A tokenizer file that is not JSON: transformers' JSONDecodeError named neither the file nor the tokenizer."""
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json")
    for file in (Path(info.path) / n for n in names if info.path and (Path(info.path) / n).is_file()):
        try:
            loads(file.read_bytes())
        except ValueError as e:
            raise RecipeError(f"source '{info.source}': its tokenizer file {file} is not JSON ({e})") from None
