"""The append-only result store of a run folder, its manifest and its lock.

<run>/results.jsonl   one `Row` per finished cell (JSON object, one line), appended and fsync'd as soon
                      as the cell ends, so a killed run loses at most the cell in flight;
<run>/manifest.json   provenance: recipe (text and hash), seeds, package versions, git hash, data file
                      hashes, task versions, hardware, and one entry per invocation (start, end, wall time);
<run>/.lock           held (flock) by the one `run` writing the folder (`ptq_bench.lock`).
Tables and plots are derived from these files only.

Every row carries the hash of the recipe that wrote it, so a folder never mixes two recipes, even
without its manifest. `run` reads strictly (a damaged line is a one-line error naming file and line);
`report` reads leniently (damaged lines are skipped with a warning, every intact row is rendered).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptq_bench.cache import naming, write_atomic
from ptq_bench.console import log
from ptq_bench.errors import PtqBenchError
from ptq_bench.json_text import loads
from ptq_bench.provenance import git_hash, hardware, package_versions

RESULTS = "results.jsonl"
MANIFEST = "manifest.json"
CURVES = "curves"  # one training-curve JSON per trained model
SCHEMA_VERSION = 3  # of Row; bump when a field changes meaning, and teach Row.from_dict the old form
# 2: calib_seed and threads added (schema 1 rows read with both None; a schema-1 reader refuses schema 2 rows
#    with "newer than this ptq-bench reads" instead of "unknown key")
# 3: sha256 of the row's other fields, written with it (`append_row`): a stored row whose content no longer
#    matches it (edited or damaged after it was written) is a damaged row (`scan_rows`); schema < 3: None
SEALED_SINCE = 3  # the first schema whose rows carry their sha256
_type_hints = functools.cache(typing.get_type_hints)  # Row's field types, resolved once (not per row read)


@dataclass(frozen=True)
class Row:
    """One finished cell, as stored. Schema 0 = rows written before schema versions (no hashes/versions)."""

    cell_id: str  # hash of (model, model_key, method, config, method_version, eval_version[, calib_seed])
    recipe: str  # recipe name
    recipe_hash: str | None  # Recipe.digest() of the run that wrote it (None only in schema 0)
    model: str
    model_kind: str
    model_key: str  # cache key of the base model
    method: str  # "none" for the unquantized model
    method_version: int | None  # registry version of the method (None: "none", or schema 0)
    eval_version: int | None  # eval.evaluator.EVAL_VERSION (None only in schema 0)
    label: str
    w_bits: float
    a_bits: float
    config: dict  # the method's config, every field
    metrics: dict  # protocol-named metric -> value (NaN and inf are values, stored as JSON NaN/Infinity)
    quant: dict  # what the quantization step reported ({} for "none")
    eval_seconds: float  # this run's wall time evaluating the cell (a KLD reference read from the cache costs ~0)
    protocol: dict
    diverged: bool
    untrained_metrics: dict | None
    finished: str
    n_params: int | None = None  # of the base model
    weight_bytes: int | None = None  # of the base model (16-bit tensors, BitNet weights packed)
    calib_seed: int | None = None  # seed of the calibration windows (None: uncalibrated method, or schema < 2)
    threads: int | None = None  # torch.get_num_threads() while the cell ran (None only in schema < 2)
    sha256: str | None = None  # of every other field (`digest`), set when stored; None in schema < 3
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=True)

    def digest(self) -> str:
        """sha256 of the row's JSON without its own `sha256` field, every number written as a float (a tool
        that rewrites 8.0 as 8, as jq does, changes no value and no digest)."""
        data = as_floats({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sha256"})
        return hashlib.sha256(json.dumps(data, sort_keys=True, allow_nan=True).encode()).hexdigest()

    def sealed(self) -> Row:
        """The row as it is stored: with its `sha256`."""
        return dataclasses.replace(self, sha256=self.digest())

    def problem(self) -> str | None:
        """What is wrong with a stored row that parsed: a schema-3 row whose sha256 is not its content's, an
        older row that carries one (its schema was lowered: older versions wrote none)."""
        if self.schema < SEALED_SINCE:
            return None if self.sha256 is None else \
                f"a sha256 in a schema-{self.schema} row (only schema {SEALED_SINCE} has one)"
        if self.sha256 != self.digest():
            return ("its sha256 does not match its content (edited or damaged after it was written)" if self.sha256
                    else f"no sha256 (a schema-{SEALED_SINCE} row is stored with one)")
        return None

    @property
    def slot(self) -> tuple:
        """The cell without its versions: rows of one slot are the same cell computed by different versions."""
        return self.model, self.model_key, self.method, json.dumps(self.config, sort_keys=True), self.calib_seed

    @classmethod
    def from_json(cls, text: str) -> Row:
        return cls.from_dict(loads(text, object_pairs_hook=_unique_keys))

    @classmethod
    def from_dict(cls, data: Any) -> Row:
        """A Row from a parsed line; ValueError says what is wrong with it."""
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object (a {type(data).__name__})")
        schema = data.get("schema", 0)
        if not _is(schema, int) or schema < 0:
            raise ValueError("'schema' is not a non-negative integer")
        if schema > SCHEMA_VERSION:
            raise ValueError(f"row schema {schema} is newer than this ptq-bench reads ({SCHEMA_VERSION}); upgrade")
        if schema == 0:
            data = {"recipe_hash": None, "method_version": None, "eval_version": None, **data, "schema": 0}
        hints = _type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown key '{unknown[0][:40]}'")
        for name, f in fields.items():
            if name not in data and f.default is dataclasses.MISSING:
                raise ValueError(f"missing key '{name}'")
            if name in data and not _is(data[name], hints[name]):
                raise ValueError(f"'{name}' is not {hints[name]}")
        for name, keys in NUMBERS_IN.items():  # what tables turn into numbers
            values = data.get(name) or {}
            for key in (values if keys is None else [k for k in keys if k in values]):
                if not _is(values[key], float):
                    raise ValueError(f"'{name}' value {key[:60]!r} is not a number")
        return cls(**data)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique (json keeps the last of two, so an edit could hide behind one)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"duplicate key '{key[:40]}'")
        seen.add(key)
    return dict(pairs)


def as_floats(value: Any) -> Any:
    """`value` with every int (not bool) as a float, inside mappings and lists: the digest's number form."""
    if isinstance(value, dict):
        return {k: as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_floats(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


# numbers inside a row's mappings (None: every value), checked when the row is read
NUMBERS_IN: dict[str, tuple[str, ...] | None] = {
    "metrics": None, "untrained_metrics": None, "quant": ("effective_bits", "seconds", "n_linears")}


def _is(value: Any, tp: Any) -> bool:
    """isinstance for the simple annotations of Row (X | None, int, float, str, bool, dict)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp in (int, float) and isinstance(value, bool):
        return False
    if tp is float:
        return isinstance(value, (int, float))
    return isinstance(value, typing.get_origin(tp) or tp)


# ----------------------------------------------------------------------------------------------
# rows


def append_row(run_dir: Path, row: Row) -> None:
    """Append one finished cell; the line is on disk when this returns."""
    with naming(Path(run_dir) / RESULTS), open(Path(run_dir) / RESULTS, "a", encoding="utf-8") as fh:
        fh.write(row.sealed().to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def scan_rows(run_dir: Path) -> Iterator[tuple[int, Row | None, str | None]]:
    """(line number, row, None) for each intact line, (line number, None, problem) for each damaged one."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return
    lines = path.read_bytes().split(b"\n")
    sealed = False  # a schema-3 row seen: older versions refuse such a folder, so no older row follows one
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        if i == len(lines):  # text after the last newline: a write cut short
            yield i, None, "torn last line (no newline: a write cut short)"
            continue
        try:
            row = Row.from_json(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            yield i, None, str(exc)[:200]
            continue
        problem = row.problem() or (f"a schema-{row.schema} row after schema-{SEALED_SINCE} rows (older versions do not "
                                    "append to such a folder)" if sealed and row.schema < SEALED_SINCE else None)
        sealed = sealed or row.schema >= SEALED_SINCE
        yield (i, None, problem) if problem else (i, row, None)


def load_rows(run_dir: Path, strict: bool = False, damaged: list | None = None) -> list[Row]:
    """Every intact row in file order. strict: a damaged line is a PtqBenchError naming file and line;
    lenient: it is skipped with a warning on stderr (and its (line, problem) added to `damaged`)."""
    rows, damaged = [], [] if damaged is None else damaged
    for i, row, problem in scan_rows(run_dir):
        if row is not None:
            rows.append(row)
            continue
        damaged.append((i, problem))
        msg = f"{Path(run_dir) / RESULTS}:{i}: damaged row ({problem})"
        if strict:
            raise PtqBenchError(msg + "; repair or remove that line")
        warn(msg + "; skipped")
    return rows


def current(rows: list[Row]) -> list[Row]:
    """Rows not superseded: of several rows of one cell (other method/eval versions) the last one stays."""
    last = {row.slot: i for i, row in enumerate(rows)}
    return [row for i, row in enumerate(rows) if last[row.slot] == i]


def read_rows(run_dir: Path, strict: bool = False, damaged: list | None = None) -> list[dict[str, Any]]:
    """The current rows as dicts (the form report/ reads); damaged lines as in `load_rows`."""
    return [row.to_dict() for row in current(load_rows(run_dir, strict, damaged))]


def repair_tail(run_dir: Path) -> Path | None:
    """Cut a torn last line off results.jsonl, keeping it in results.jsonl.torn-<time>; return that file."""
    path = Path(run_dir) / RESULTS
    data = path.read_bytes() if path.is_file() else b""
    if not data or data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n") + 1
    aside = path.with_name(f"{RESULTS}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    with open(aside, "wb") as fh:  # kept first: a kill between the two steps loses nothing
        fh.write(data[cut:])
        os.fsync(fh.fileno())
    with open(path, "r+b") as fh:
        fh.truncate(cut)
        os.fsync(fh.fileno())
    return aside


_warned: set[str] = set()


def warn(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(f"ptq-bench: warning: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# manifest


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


# fields a run reads back from its manifest, when present: (what they must be, the test)
MANIFEST_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "data_sha256": ("an object of sha256 strings", _str_map),
    "sources": ("an object of file-digest objects", lambda v: isinstance(v, dict) and all(map(_str_map, v.values()))),
    "eval": ("an object whose 'by_tokenizer' is an object of objects", lambda v: isinstance(v, dict) and isinstance(
        v.get("by_tokenizer", {}), dict) and all(isinstance(p, dict) for p in v.get("by_tokenizer", {}).values())),
    "recipe": ("an object", lambda v: isinstance(v, dict)),
    "source_snapshots": ("an object of commit strings", _str_map),
}


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict):
        return f"not a JSON object (a {type(manifest).__name__})"
    if not isinstance(manifest.get("recipe_hash"), str):
        return "no 'recipe_hash' string"
    inv = manifest.get("invocations")
    if not isinstance(inv, list) or not all(isinstance(i, dict) and isinstance(i.get("hardware", {}), dict)
                                            and _is(i.get("wall_s", 0.0), float) for i in inv):  # what tables read
        return "'invocations' is not a list of objects (with an object 'hardware', a number 'wall_s')"
    for key, (what, ok) in MANIFEST_FIELDS.items():
        if key in manifest and not ok(manifest[key]):
            return f"'{key}' is not {what}"
    return None


def load_manifest(run_dir: Path, strict: bool = False) -> dict[str, Any] | None:
    """The manifest, or None when there is none. A damaged one: strict, a PtqBenchError naming the
    file (and line); lenient, a warning and None."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = loads(path.read_text(encoding="utf-8"))
        problem = _manifest_problem(manifest)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError says "line L column C"
        problem = f"not valid JSON: {str(exc)[:120]}"
    if problem is None:
        return manifest
    if strict:
        raise PtqBenchError(f"{path}: damaged manifest ({problem}); repair it or move it aside "
                            "(the rows carry their recipe hash, so a new manifest is safe)")
    warn(f"{path}: damaged manifest ({problem}); ignored")
    return None


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    write_atomic(Path(run_dir) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))


def _refuse_foreign(run_dir: Path, recipe_hash: str, manifest: dict[str, Any] | None) -> list[Row]:
    """The stored rows; a PtqBenchError when the manifest or any row is another recipe's (or a line is damaged)."""
    scanned = list(scan_rows(run_dir))  # each row parsed and checked once per resume
    advice = "set a different output_dir or remove the folder"
    if manifest is not None and manifest["recipe_hash"] != recipe_hash:
        raise PtqBenchError(f"{run_dir} holds results of another recipe (hash {manifest['recipe_hash']}, "
                            f"this recipe {recipe_hash}); {advice}")
    for i, row, problem in scanned:
        where = f"{Path(run_dir) / RESULTS}:{i}"
        if problem is not None and not problem.startswith("torn last line"):
            raise PtqBenchError(f"{where}: damaged row ({problem}); repair or remove that line")
        if row is not None and row.recipe_hash is None:
            raise PtqBenchError(f"{where}: a row of an older ptq-bench (schema 0, no recipe hash); {advice}")
        if row is not None and row.recipe_hash != recipe_hash:
            raise PtqBenchError(f"{where}: a row of another recipe (hash {row.recipe_hash}, this recipe "
                                f"{recipe_hash}); {advice}")
    return [row for _, row, _ in scanned if row is not None]


def _refuse_changed_data(run_dir: Path, manifest: dict[str, Any], base: dict[str, Any]) -> None:
    """Data files are not in the recipe hash: one that changed since the folder's first run is an error."""
    old, new = manifest.get("data_sha256") or {}, base.get("data_sha256") or {}
    for rel in sorted(set(old) & set(new)):
        if old[rel] != new[rel]:
            raise PtqBenchError(f"data file {rel} changed since {run_dir} was first run (sha256 {old[rel][:12]}... "
                                f"now {new[rel][:12]}...); set a different output_dir")


def open_run(run_dir: Path, recipe_hash: str, base: dict[str, Any], check: Callable[..., None] | None = None,
             note: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Row]]:
    """Reopen (or create) a run folder for `recipe_hash`, under `run_lock`: (manifest, stored rows).

    Refused, with the folder untouched, when it holds another recipe's rows (or its manifest beside rows)
    or a damaged line, or when `check(manifest, rows)` raises (it may add to the manifest); a torn tail is then cut
    (and kept aside) before anything is appended, and the manifest written with this invocation (`note` added)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, kind in ((MANIFEST, "file"), (RESULTS, "file"), (CURVES, "folder")):
        entry = run_dir / name
        if entry.exists() and entry.is_dir() != (kind == "folder"):
            raise PtqBenchError(f"{entry}: not a {kind}; move it aside")
    manifest = load_manifest(run_dir, strict=True)
    if manifest is not None and manifest["recipe_hash"] != recipe_hash and not any(True for _ in scan_rows(run_dir)):
        manifest = None  # another recipe's run that was refused or stopped before its first row: nothing to keep
    rows = _refuse_foreign(run_dir, recipe_hash, manifest)
    if manifest is not None:
        _refuse_changed_data(run_dir, manifest, base)
    aside = repair_tail(run_dir)
    if aside is not None:
        log(f"{run_dir / RESULTS}: cut a torn last line (a killed write), kept in {aside.name}; "
            "that cell is recomputed")
    if manifest is None:
        manifest = {**base, "recipe_hash": recipe_hash, "invocations": []}
    if check is not None:
        check(manifest, rows)
    manifest.update({k: base[k] for k in ("recipe_name", "recipe", "recipe_text") if k in base})  # the latest
    manifest["invocations"].append(
        {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_hash(), "versions": package_versions(),
         "hardware": hardware(), "pid": os.getpid(), **(note or {})}
    )
    write_manifest(run_dir, manifest)
    return manifest, rows


def close_run(run_dir: Path, manifest: dict[str, Any], wall_s: float, cells_run: int, interrupted: bool = False,
              error: str | None = None) -> None:
    """The invocation's end: when, its wall time, the cells it stored, and whether a signal stopped it or an
    error ended it (`error`: its one-line message; an invocation killed outright has none of these)."""
    manifest["invocations"][-1].update(
        {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(wall_s, 1), "cells_run": cells_run,
         **({"interrupted": True} if interrupted else {}), **({"error": error} if error is not None else {})})
    write_manifest(run_dir, manifest)
