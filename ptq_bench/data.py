"""Where the data comes from: a local folder laid out like ../shared/data (nothing is downloaded).

Everything the toolkit reads goes through `resolve_data_dir`: the recipe key `data_dir`, else the
environment variable PTQ_BENCH_DATA. A missing folder or file is a DataError naming the path.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import IO

from ptq_bench.errors import DataError
from ptq_bench.json_text import loads

ENV_VAR = "PTQ_BENCH_DATA"

# Files of the local layout (relative to the data folder), per logical source.
TRAIN_FILES = ("train_corpus/gutenberg_en.jsonl.gz", "train_corpus/c4_en_train_shard00000_head.jsonl.gz")
CALIBRATION_FILE = "train_corpus/c4_en_train_shard00000_head.jsonl.gz"  # C4 train text, as GPTQ calibrates
PPL_FILES = {
    "wikitext2": "wikitext2/test.jsonl",  # HF wikitext-2-raw-v1 test rows
    "c4": "c4/validation_shard00000_head.jsonl.gz",  # head of C4 en validation shard 0
}


def resolve_data_dir(recipe_value: str | os.PathLike | None = None) -> Path:
    """The data folder: the recipe's `data_dir`, else $PTQ_BENCH_DATA; it must exist."""
    raw = recipe_value if recipe_value not in (None, "") else os.environ.get(ENV_VAR)
    if not raw:
        raise DataError(f"no data folder: set the recipe key 'data_dir' or the environment variable {ENV_VAR}")
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():  # say where the path came from: a stale $PTQ_BENCH_DATA is not in the recipe
        origin = "the recipe's data_dir" if recipe_value not in (None, "") else f"${ENV_VAR}"
        what = "is a file, not a folder" if path.exists() else "not found"
        raise DataError(f"data folder {what}: {path} (from {origin})")
    return path


def data_file(data_dir: Path, rel: str) -> Path:
    path = data_dir / rel
    if not path.is_file():  # a FIFO, or a link to nothing (a loop), was "not found"
        what = "is not a regular file" if path.exists() else "is a link to nothing" if path.is_symlink() else "not found"
        raise DataError(f"data file {what}: {path}")
    return path


def _open_text(path: Path) -> IO[str]:
    return (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8")


def read_jsonl(path: Path) -> Iterator[dict]:
    with _open_text(path) as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


TEXT_FILES = frozenset((*TRAIN_FILES, CALIBRATION_FILE, *PPL_FILES.values()))  # rows read for their "text"


def check_jsonl(data_dir: Path, rel: str, fields: Mapping[str, type] = MappingProxyType({}),
                answer: Callable[[dict], bool] | None = None) -> None:
    """A data file is JSON lines, each an object (a `text` string in TEXT_FILES; holding every one of `fields`,
    those a task's lm-eval code reads, of the HF schema's type), and not empty: checked before a run writes
    anything, so a damaged file is one line naming it rather than a traceback or a wrong number later. A task
    file (one with `fields`) may not repeat a row: lm-eval would score that document twice; and `answer(row)`,
    when given, says that the row's gold answer is one of its choices (lm-eval scores any other one wrong)."""
    path, rows, lineno, seen, blank = data_file(data_dir, rel), 0, 0, {}, True
    keys = tuple(fields)
    want = ' with a "text" string' if rel in TEXT_FILES else (f" with keys {', '.join(keys)}" if keys else "")
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    row, rows = loads(line), rows + 1
                    _check_row(row, rel, fields, f"{path}:{lineno}: expected a JSON object{want}")
                    blank = blank and rel in TEXT_FILES and not row["text"].strip()
                    if answer is not None and not answer(row):
                        raise DataError(f"{path}:{lineno}: its answer is none of its choices")
                    if fields and seen.setdefault(line.strip(), lineno) != lineno:
                        raise DataError(f"{path}:{lineno}: repeats line {seen[line.strip()]} (a document counted twice)")
    except UnicodeDecodeError:  # raised on a read-ahead chunk: no reliable line number
        raise DataError(f"{path}: not UTF-8 text") from None
    except ValueError:
        raise DataError(f"{path}:{lineno}: not JSON lines") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if rows == 0:
        raise DataError(f"{path}: holds no rows")
    if blank:  # the tokenizer trains on nothing, and training found it out after the run's manifest was written
        raise DataError(f"{path}: holds no text (every row's text is blank)")


def _check_row(row: object, rel: str, fields: Mapping[str, type], message: str) -> None:
    if not isinstance(row, dict) or (rel in TEXT_FILES and not isinstance(row.get("text"), str)):
        raise DataError(message)
    missing = [k for k in fields if k not in row]
    if missing:
        raise DataError(f"{message} (no {', '.join(missing)})")
    # exact types: lm-eval scores a label "1" (str) against the choices' texts, so every document wrong
    wrong = [f"{k} is {type(row[k]).__name__}, not {t.__name__}" for k, t in fields.items() if type(row[k]) is not t]
    if wrong:
        raise DataError(f"{message} ({'; '.join(wrong)})")


def train_documents(data_dir: Path) -> list[str]:
    """The training corpus, in a fixed order: every model of a matched pair sees exactly this."""
    docs: list[str] = []
    for rel in TRAIN_FILES:
        docs.extend(row["text"] for row in read_jsonl(data_file(data_dir, rel)))
    return docs


def calibration_documents(data_dir: Path) -> list[str]:
    return [row["text"] for row in read_jsonl(data_file(data_dir, CALIBRATION_FILE))]


def perplexity_text(name: str, data_dir: Path) -> str:
    """The evaluation text of a perplexity set, joined as the GPTQ reference joins it.

    wikitext2: "\\n\\n".join(test rows) (GPTQ datautils.get_wikitext2);
    c4: " ".join(validation documents) (GPTQ datautils.get_c4, here on the 1025 local documents).
    """
    if name not in PPL_FILES:
        raise DataError(f"unknown perplexity set '{name}' (known: {', '.join(PPL_FILES)})")
    rows = [row["text"] for row in read_jsonl(data_file(data_dir, PPL_FILES[name]))]
    return "\n\n".join(rows) if name == "wikitext2" else " ".join(rows)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}  # file_state -> sha256 of the bytes


def file_state(path: Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime_ns): a file is taken as unchanged while these stay (the memos' key)."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def file_digest(path: Path) -> str:
    """`file_sha256`, read once per process while the file's size and mtime stay: a `source:` checkpoint
    is hashed for its model key (`sources.content_hash`) and again for the run folder's record of it
    (`source_record.check_sources`), and its weights may be gigabytes."""
    key = file_state(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]

