"""Token ids from the data: joined document streams, calibration windows, and their cache files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def encode_stream(tokenizer: Any, docs: list[str]) -> np.ndarray:
    """Documents joined with EOS into one id stream (int32)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        from ptq_bench.errors import DataError

        raise DataError(f"the tokenizer ({type(tokenizer).__name__}) has no EOS token, which separates the documents "
                        "of the training and calibration streams; give the checkpoint's tokenizer an eos_token")
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    out = []
    for d in ids:
        out.extend(d)
        out.append(eos)
    return np.asarray(out, dtype=np.int32)


def cached_array(path: Path, build: Callable[[], np.ndarray], data: Sequence[Path]) -> np.ndarray:
    """The array cached at `path` (a checksummed .npy), built by `build()` when missing or damaged.

    `data`: the data files `build` reads. Their digest is part of the file name, so an edited data file
    is tokenized again instead of a stale array being read under the new file's name in the manifest."""
    import hashlib

    from ptq_bench.cache import ensure
    from ptq_bench.data import file_digest

    tag = hashlib.sha256("".join(file_digest(f) for f in data).encode()).hexdigest()[:16]
    path = path.with_name(f"{path.stem}-{tag}{path.suffix}")
    ensure(path, lambda tmp: np.save(tmp, build()), "token array")
    return np.load(path, allow_pickle=False)


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
