"""Checks of a checkpoint folder's files that `validate` can make without torch: config.json sizes that
transformers needs as positive integers, and safetensors headers that fit their file (a file cut short, or
a tensor whose offsets disagree with its shape and dtype, was an error of the safetensors loader after the
run folder was written)."""

from __future__ import annotations

import importlib.util
import math
import struct
from pathlib import Path

from ptq_bench.errors import RecipeError
from ptq_bench.json_text import loads

SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size", "n_layer")
# sub-config model_type -> the package transformers builds that tower with (Gemma 3n's vision tower is timm's
# TimmWrapperModel): without it loading fails, so validate names it
TOWER_PACKAGES = {"gemma3n_vision": "timm"}
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def check_checkpoint(config: dict, folder: Path, key: str) -> None:
    """RecipeError (one line naming the file) for a config.json size or a safetensors file that is damaged."""
    check_sizes(config, key, folder / "config.json")
    check_packages(config, key, folder / "config.json")
    index = folder / "model.safetensors.index.json"
    if index.is_file() and not (folder / "model.safetensors").is_file():
        try:
            shards = index_shards(index)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RecipeError(f"{key}: {index}: not JSON with a weight_map") from None
        if missing := [s for s in shards if not (folder / s).is_file()]:
            raise RecipeError(f"{key}: {index} names {len(missing)} shard(s) not in the folder ({missing[0]})")
    for file in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            raise RecipeError(f"{key}: {file}: {problem}")


def check_packages(config: dict, key: str, where: Path) -> None:
    """RecipeError naming a package a tower of the checkpoint needs to be built (TOWER_PACKAGES) and that is
    not installed (found without importing it)."""
    for name, sub in config.items():
        package = TOWER_PACKAGES.get(sub.get("model_type")) if isinstance(sub, dict) else None
        if package and importlib.util.find_spec(package) is None:
            raise RecipeError(f"{key}: {where}: its {name} ({sub['model_type']}) is built with the {package} library, "
                              f"which is not installed (pip install {package})")


def index_shards(index: Path) -> list[str]:
    """The shard file names a `*.index.json` names, sorted, once each (its JSON's errors raised as they are)."""
    return sorted(set(loads(index.read_text(encoding="utf-8"))["weight_map"].values()))


def check_sizes(config: dict, key: str, where: Path) -> None:
    """Sizes transformers needs as positive ints ("64" was a traceback after the manifest, 0 layers a row)."""
    for k in SIZE_KEYS:
        v = config.get(k)  # Gemma 3n: a list, per layer
        if v is not None and not all(type(x) is int and x > 0 for x in (v if isinstance(v, list) else [v])):
            raise RecipeError(f"{key}: {where}: {k} is {config[k]!r}, not a positive integer")


def safetensors_problem(file: Path) -> str:
    """What is wrong with a safetensors file's header against its size ("" when nothing)."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            return f"cut short inside its header ({size} bytes)"
        try:
            header = loads(fh.read(n))
        except ValueError:  # json_text.loads: arrays nested thousands deep too
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if not _well_formed(t):  # a header of other types was a TypeError traceback at validate
            return f"tensor {name[:80]}'s header entry is not a dtype, a shape and two offsets"
        start, end = t["data_offsets"]
        count = math.prod(t["shape"])
        if t.get("dtype") in DTYPE_BYTES and end - start != count * DTYPE_BYTES[t["dtype"]]:
            return f"tensor {name}'s header says {t['dtype']} {t.get('shape')} in {end - start} bytes"
        if 8 + n + end > size:
            return f"cut short: tensor {name} ends at byte {8 + n + end}, the file has {size}"
    return ""


def _well_formed(entry: object) -> bool:
    """A safetensors header entry: {"dtype": str, "shape": [int >= 0, ...], "data_offsets": [start, end]}."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    return (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape) and isinstance(offsets, list)
            and len(offsets) == 2 and all(type(n) is int for n in offsets) and 0 <= offsets[0] <= offsets[1])


def custom_code_note(config: dict, model_type: str) -> str:
    """What a config.json naming its own modeling code (`auto_map`) under a model_type transformers knows gets:
    that code is never run (no trust_remote_code), transformers' own class is loaded, and this note says so
    beside the model at validate, in the run's log and in the manifest's invocation (a repository's code may differ)."""
    auto = config.get("auto_map")
    if not isinstance(auto, dict) or not auto:
        return ""
    named = auto.get("AutoModelForCausalLM") or next(iter(auto.values()))
    return (f"config.json's auto_map names the repository's own code ({named}), which is never run: "
            f"its rows measure transformers' '{model_type}' class")
