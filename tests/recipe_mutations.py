"""Recipe mutations for the property test and benchmarks/recipe_fuzz.py, and an independent oracle.

`mutations()` is a Hypothesis strategy of (label, recipe bytes): smoke.yaml or quickstart.yaml with one
or two edits — a key dropped, renamed or added, a value replaced by a wrong type, an out-of-range or
non-finite number, a huge int, a bad name or path — or a text-level edit: deep nesting, an alias
bomb, a duplicate key, non-UTF-8 bytes. `run_case` runs one through the CLI in-process and returns
what happened. `looks_invalid` is a second, deliberately separate statement of the rules (it shares
no code with ptq_bench.config / recipe.py) used to count recipes that validate accepted but should not.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
BASES = {name: yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text()) for name in ("smoke", "quickstart")}
for _base in BASES.values():  # spell out float and bool settings so that edits can reach them
    _base["models"]["fp16"].update(lr=2.5e-3, weight_decay=0.1)
    _base["models"]["bitnet_b158"].update(lr_stage2=2e-3)
    _base["train"].update(grad_clip=1.0)
    _base["arch"].update(rope_theta=10000.0)
    _base["quantize"].append({"method": "gptq", "w_bits": 4, "group_size": 32, "damp": 0.01, "sym": True,
                              "act_order": False})
# a refusal comes at once, before anything is built: under this many seconds (room for a first import of
# transformers on a loaded 2-core host; the smoke recipe's first cell alone takes longer)
REFUSED_WITHIN = 10
MARK = "__MUTATION__"  # a string value later replaced in the YAML text by a text-level edit

SPECIAL = [0, -1, 1, 2**31, 2**32, 2**63, 2**70, -(2**70), 10**30, 0.5, 1.5, -0.0, 1e308, math.nan, math.inf,
           -math.inf, True, False, None, "", ".", "..", "../../x", "/", "/proc", "/nonexistent", "~/nope/x",
           "a\x00b", "yes", "false", "1.5", "fp8", "gptq", "x" * 5000, [], {}, [8, 4, 1], {"a": 1}]
VALUES = st.one_of(st.sampled_from(SPECIAL), st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=12), st.lists(st.integers(-2, 20), max_size=4))


def node_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (dict keys, list indices) below `obj`, the root excluded."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(node_paths(v, (*prefix, k)))
    return out


def _parent(doc: Any, path: tuple) -> Any:
    for k in path[:-1]:
        doc = doc[k]
    return doc


BOUNDARY = {  # type of the current value -> values just outside (or at the edge of) what is allowed
    "int": [0, -1, 1, 2**32, 2**70, -(2**70), 0.5, 1.5, math.nan, True, "8", None, "9" * 5000],
    "float": [math.nan, math.inf, -math.inf, -1.0, -1e-9, 0.0, 1e308, True, "0.1", None, "x" * 5000],
    "bool": ["false", "yes", 0, 1, None, "true", "y" * 5000],
    "str": ["", ".", "..", "../../x", "/abs", "a/b", "a\x00b", "x" * 200, 1, True, None, ["x"]],
}


def _type_class(value: Any) -> str:
    return "bool" if isinstance(value, bool) else type(value).__name__ if isinstance(value, (int, float, str)) else "str"

PARAMS = ["w_bits", "a_bits", "sym", "act_order", "static_groups", "true_sequential", "group_size", "alpha",
          "damp", "block_size", "seed", "transform", "rescale", "w_granularity", "a_granularity", "models"]
SOURCES = ["/nonexistent", "./nope", "~/nope/x", "a/b/c", "org/name", "", "/", "/proc", "."]


def leaf_paths(doc: Any) -> list[tuple]:
    return [p for p in node_paths(doc) if not isinstance(_parent(doc, p)[p[-1]], (dict, list))]


def _edit(doc: Any, op: str, path: tuple, value: Any) -> None:
    parent, key = _parent(doc, path), path[-1]
    if op == "set":
        parent[key] = value
    elif op == "drop":
        del parent[key]
    elif op == "rename" and isinstance(parent, dict):
        parent[f"{key}_x"] = parent.pop(key)
    elif op == "add" and isinstance(parent[key], dict):
        parent[key][str(value)[:20] or "k"] = value


TEXT_EDITS = {
    "deep": lambda n: "[" * n + "]" * n,
    "bomb": lambda n: "*a8",
    "alias_small": lambda n: "*a0",
}


def _bomb_anchors() -> str:
    lines = ["description: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"_a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


@st.composite
def mutations(draw: Any) -> tuple[str, bytes]:
    base = draw(st.sampled_from(sorted(BASES)))
    doc = yaml.safe_load(yaml.safe_dump(BASES[base]))
    labels = [base]
    text_edit = None
    for _ in range(draw(st.sampled_from([1, 1, 1, 2]))):
        op = draw(st.sampled_from(["nudge"] * 6 + ["param", "param", "source", "set", "set", "drop", "rename",
                                                    "add", "text"]))
        if op in ("nudge", "param", "source"):
            labels.append(_targeted(draw, doc, op))
            continue
        paths = node_paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        if op == "text":
            text_edit = draw(st.sampled_from(sorted(TEXT_EDITS)))
            _edit(doc, "set", path, MARK)
            labels.append(f"{text_edit}@{'.'.join(map(str, path))}")
            break
        value = draw(VALUES)
        _edit(doc, op, path, value)
        labels.append(f"{op}@{'.'.join(map(str, path))}")
    text = yaml.safe_dump(doc, allow_unicode=True)
    if text_edit is not None:
        text = text.replace(MARK, TEXT_EDITS[text_edit](draw(st.sampled_from([70, 5000, 50000]))), 1)
        text = (_bomb_anchors() if text_edit != "deep" else "") + text
    data = text.encode()
    tail = draw(st.sampled_from(["", "", "", "", "dup", "bytes"]))
    if tail == "dup":
        key = draw(st.sampled_from(["seed", "name", "train", "models"]))
        data += f"\n{key}: 1\n".encode()
        labels.append(f"dup:{key}")
    elif tail == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + data[at:]
        labels.append("bytes")
    return " ".join(labels), data


def _targeted(draw: Any, doc: dict, op: str) -> str:
    """A typed-but-wrong edit: a leaf set to a boundary value, a method setting, or a model source."""
    if op == "nudge":  # pick the type first, so that the few float and bool settings are edited often
        by_type: dict[str, list[tuple]] = {}
        for p in leaf_paths(doc):
            by_type.setdefault(_type_class(_parent(doc, p)[p[-1]]), []).append(p)
        if not by_type:
            return "nudge@nothing"
        kind = draw(st.sampled_from(sorted(by_type)))
        path = draw(st.sampled_from(by_type[kind]))
        value = draw(st.sampled_from(BOUNDARY[kind]))
    elif op == "param":
        if not isinstance(doc.get("quantize"), list) or not doc["quantize"]:
            doc["quantize"] = [{"method": draw(st.sampled_from(sorted(METHOD_BITS)))}]
        path = ("quantize", draw(st.integers(0, len(doc["quantize"]) - 1)), draw(st.sampled_from(PARAMS)))
        value = draw(st.one_of(st.sampled_from(SPECIAL + [["bitnet_b158"], ["fp16", "bitnet_b1"]]), VALUES))
    else:
        models = doc.get("models") if isinstance(doc.get("models"), dict) and doc["models"] else {"m": {}}
        path = ("models", draw(st.sampled_from(sorted(models, key=str))), "source")
        value = draw(st.sampled_from(SOURCES))
    with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier edit may have changed the shape
        _parent(doc, path)[path[-1]] = value
    return f"{op}@{'.'.join(map(str, path))}={value!r:.30}"


@dataclass
class Outcome:
    code: int | None  # exit code; None = an exception escaped main() (a traceback)
    err: str  # stderr (or the traceback)
    seconds: float


def run_case(data: bytes, folder: Path, command: str = "validate") -> Outcome:
    """Write the recipe into `folder` and run `ptq-bench <command>` on it in-process."""
    from ptq_bench.cli import main

    path = folder / "r.yaml"
    path.write_bytes(data)
    err = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code: int | None = main([command, str(path)])
    except BaseException:  # noqa: BLE001 - a traceback is what we count
        code, err = None, io.StringIO(traceback.format_exc())
    return Outcome(code, err.getvalue(), time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# the oracle: an independent, simpler statement of what a valid recipe is


NAME = re.compile(r"[A-Za-z0-9_.+-]{1,100}")
POSITIVE = [("train", "tokens"), ("train", "seq_len"), ("train", "batch_size"), ("train", "log_every"),
            ("calibration", "n_samples"), ("calibration", "seq_len"), ("eval", "perplexity", "seq_len"),
            ("eval", "perplexity", "max_windows"), ("eval", "batch_size"), ("eval", "limit"),
            ("arch", "hidden_size"), ("arch", "intermediate_size"), ("arch", "num_layers"), ("arch", "num_heads"),
            ("arch", "max_seq_len")]
NON_NEGATIVE = [("train", "warmup_steps"), ("eval", "num_fewshot"), ("tokenizer", "train_chars")]
METHOD_BITS = {"absmax": (1, 1.58, 2, 3, 4, 5, 6, 7, 8, 16), "smoothquant": (1, 1.58, 2, 3, 4, 5, 6, 7, 8, 16),
               "gptq": (1.58, 2, 3, 4, 8), "quip": (2, 3, 4)}
A_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
BOOLS = ("act_order", "sym", "static_groups", "true_sequential", "rescale")
CALIBRATED = ("smoothquant", "gptq", "quip")
MISSING = object()


def _get(d: Any, path: tuple) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return MISSING
        d = d[k]
    return d


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _walk(v: Any) -> list[Any]:
    if isinstance(v, dict):
        return [x for k, val in v.items() for x in (k, *_walk(val))]
    if isinstance(v, list):
        return [x for val in v for x in _walk(val)]
    return [v]


def _bad_source(s: Any) -> bool:
    """Not a checkpoint folder (config.json inside) and not a hub id `org/name`."""
    if not isinstance(s, str) or not s:
        return True
    folder = Path(s).expanduser()
    if s.startswith(("/", ".", "~")) or s.count("/") > 1 or folder.is_dir():
        return not ((folder / "config.json").is_file() or (folder / "ptq_bench.json").is_file())
    return not all(part and re.fullmatch(r"[\w.-]+", part, re.ASCII) for part in s.split("/"))


def looks_invalid(r: Any) -> list[str]:
    """Reasons why recipe dict `r` is invalid (empty: nothing found). Written apart from the loader."""
    if not isinstance(r, dict):
        return ["not a mapping"]
    bad = [f"non-finite {v}" for v in _walk(r) if isinstance(v, float) and not math.isfinite(v)]
    bad += ["NUL in a string" for v in _walk(r) if isinstance(v, str) and "\x00" in v]
    for p in POSITIVE + NON_NEGATIVE:
        v = _get(r, p)
        if v is not MISSING and v is not None and (not _is_int(v) or v < (1 if p in POSITIVE else 0)):
            bad.append(f"{'.'.join(p)} = {v!r:.40}")
    seed = r.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed < 2**32:
        bad.append("seed")
    name = r.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in (".", ".."):
        bad.append("name")
    bad += _model_problems(r) + _quant_problems(r)
    return bad


def _model_problems(r: dict) -> list[str]:
    models = r.get("models")
    if not isinstance(models, dict) or not models:
        return ["models"]
    bad = []
    for name, spec in models.items():
        if not isinstance(name, str) or not NAME.fullmatch(name) or name in (".", ".."):
            bad.append(f"model name {name!r:.40}")
        spec = spec if isinstance(spec, dict) else {}
        for key, low in (("lr", 0), ("lr_stage2", 0), ("weight_decay", -1e-300)):
            v = spec.get(key)
            if v is not None and (not _is_num(v) or v <= low or v > 1e9):  # > 1e9: float32 overflow in Adam
                bad.append(f"models.{name}.{key}")
        if spec.get("source") is not None and _bad_source(spec["source"]):
            bad.append(f"models.{name}.source")
        arch = {**(r.get("arch") or {}), **(spec.get("arch") or {})} if isinstance(r.get("arch", {}), dict) else {}
        theta = arch.get("rope_theta", 1.0)
        if not _is_num(theta) or theta < 1:  # below 1 RoPE's frequencies rise (1e-100: inf, a NaN forward)
            bad.append("rope_theta")
        ctx = arch.get("max_seq_len", 512)
        for p in (("train", "seq_len"), ("eval", "perplexity", "seq_len")):
            v = _get(r, p)
            if spec.get("source") is None and _is_int(v) and _is_int(ctx) and v > ctx:
                bad.append(f"{'.'.join(p)} > context of {name}")
    t = r.get("train") if isinstance(r.get("train"), dict) else {}
    sizes = [t.get(k, d) for k, d in (("tokens", 1_000_000), ("seq_len", 256), ("batch_size", 16), ("warmup_steps", 50))]
    if all(_is_int(v) and v > 0 for v in sizes[:3]) and _is_int(sizes[3]):
        steps = sizes[0] // (sizes[1] * sizes[2])  # the warm-up must end before training and before b1.58's stage two
        kinds = [s.get("kind", "fp16") for s in models.values() if isinstance(s, dict) and s.get("source") is None]
        if kinds and sizes[3] >= steps or "bitnet_b158" in kinds and sizes[3] > steps // 2:
            bad.append("train.warmup_steps")
    clip = _get(r, ("train", "grad_clip"))
    if clip is not MISSING and (not _is_num(clip) or clip < 0):
        bad.append("grad_clip")
    return bad


def _quant_problems(r: dict) -> list[str]:
    bad = []
    models = r.get("models") if isinstance(r.get("models"), dict) else {}
    for i, q in enumerate(r.get("quantize") or []):
        if not isinstance(q, dict) or q.get("method") not in METHOD_BITS:
            bad.append(f"quantize[{i}]")
            continue
        m = q["method"]
        for b in (q.get("w_bits") if isinstance(q.get("w_bits"), list) else [q.get("w_bits", 4 if m == "gptq" else 2)]):
            if isinstance(b, bool) or b not in METHOD_BITS[m]:
                bad.append(f"quantize[{i}].w_bits {b!r:.20}")
        for b in (q.get("a_bits") if isinstance(q.get("a_bits"), list) else [q.get("a_bits", 16)]):
            if not _is_int(b) or b not in A_BITS:
                bad.append(f"quantize[{i}].a_bits {b!r:.20}")
        bad += [f"quantize[{i}].{k}" for k in BOOLS if k in q and not isinstance(q[k], bool)]
        if "group_size" in q and (not _is_int(q["group_size"]) or q["group_size"] == 0 or q["group_size"] < -1):
            bad.append(f"quantize[{i}].group_size")
        elif m in ("absmax", "smoothquant") and q.get("w_granularity", "channel") != "group" and q.get("group_size", 128) != 128:
            bad.append(f"quantize[{i}].group_size without w_granularity group")
        elif m == "gptq" and q.get("static_groups") is True and q.get("group_size", 128) == -1:
            bad.append(f"quantize[{i}].static_groups without groups")
        if "alpha" in q and (not _is_num(q["alpha"]) or not 0 <= q["alpha"] <= 1):
            bad.append(f"quantize[{i}].alpha")
        targets = q.get("models") or [n for n, s in models.items() if (s or {}).get("kind", "fp16") == "fp16"]
        for t in targets if isinstance(targets, list) else []:
            spec = models.get(t) if isinstance(t, str) else None
            if not isinstance(spec, dict) or (spec.get("source") is None and spec.get("kind", "fp16") != "fp16"):
                bad.append(f"quantize[{i}] targets {t!r:.20}")
            elif m in CALIBRATED and _too_long_for(r, spec, ("calibration", "seq_len")):
                bad.append(f"calibration.seq_len > context of {t}")
    return bad


def _too_long_for(r: dict, spec: dict, path: tuple) -> bool:
    arch = {**(r.get("arch") or {}), **(spec.get("arch") or {})}
    v, ctx = _get(r, path), arch.get("max_seq_len", 512)
    v = 2048 if v is MISSING else v
    return spec.get("source") is None and _is_int(v) and _is_int(ctx) and v > ctx


def nothing_written(before: set[str], folder: Path) -> bool:
    return {str(p) for p in folder.rglob("*")} == before

