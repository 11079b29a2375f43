"""Distance of a quantized model to its unquantized base, on the GPTQ-protocol perplexity windows.

Same windows and predicted tokens as `eval/perplexity.py` (a set's token stream cut into non-overlapping
`seqlen` windows, tail dropped, optionally the first K; in each window positions 0..seqlen-2 predict
1..seqlen-1). Over those n_windows * (seqlen - 1) tokens, with P the base model's next-token
distribution and Q the quantized model's:

    kld/<set>/seq<L>[/first<K>win]/mean   mean over tokens of KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)), nats
    kld/<set>/seq<L>[/first<K>win]/p99    its 99th percentile over tokens (numpy's linear interpolation)
    top1_agree/<set>/seq<L>[/first<K>win] % of tokens where argmax Q = argmax P (ties: lowest index); NaN
                                          where a logit of either is NaN or inf (no argmax: a diverged model)
    dppl/<set>/seq<L>[/first<K>win]       ppl_gptq(quantized) - ppl_gptq(base), same windows

The tail `<set>/seq<L>[/first<K>win]` is the perplexity protocol's (`ppl_gptq/<tail>`), so every
distance sits beside the perplexity it belongs to. `compare` also returns the quantized model's own
`ppl_gptq/<tail>` (identical to `gptq_perplexity` on the same windows and batch size), so a cell that
gets its distances needs no second perplexity pass on that set.

The base model's log-probabilities are computed once per recipe and set (`build_reference`), not once
per cell. Size: one window holds (seqlen - 1) x vocab log-probs; SmolLM2-135M at seq 512 is
511 x 49,152 x 4 B = 100 MB per window in float32, 6.4 GB for 2 sets x 32 windows: too much to keep in
RAM on a 24 GB machine shared with other work, so with `path` they go to a memory-mapped float32 .npy
on disk (sha256 checked when reopened; reading it back costs ~1 s/GB). float16 would halve the disk
(rounding: up to 2.4e-4 nats on log-probs in [-1, -0.5), 7.8e-3 below -16); measured on SmolLM2-135M,
4 windows, Absmax W8A16 per channel (benchmarks/smollm2_probe.py): mean KL 0.0033037 from float32,
+3.2e-6 nats (+0.1%) from float16. Small for the mean, but it would make a model's KL to itself
nonzero and blur the smallest distances, and disk is not what binds here, so the reference stays
float32. KL is accumulated in float64 from float32 log-softmaxes renormalized in float64, so a model compared
with itself gives exactly 0 and no token's KL is negative.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ptq_bench.config import short
from ptq_bench.console import bar_disable
from ptq_bench.data import file_sha256
from ptq_bench.errors import PtqBenchError
from ptq_bench.eval.perplexity import perplexity_of, protocol_name, window_batch, windows
from ptq_bench.json_text import loads
from ptq_bench.paths import free_bytes

FORMAT_VERSION = 2  # 2: the top-1 file's sha256 and the metadata's own are checked
KL_TOKENS = 256  # tokens per KL step: each token's KL is its own row, so any step gives the same values
ROOM_ADVICE = "set eval.perplexity.max_windows, eval.kld: false, or a cache_dir with room"  # a disk too small


def metric_names(set_name: str, seqlen: int, max_windows: int | None) -> dict[str, str]:
    """{"mean", "p99", "top1_agree", "dppl", "ppl"} -> the metric names of one set and protocol."""
    ppl = protocol_name(set_name, seqlen, max_windows)
    tail = ppl.removeprefix("ppl_gptq/")
    return {"mean": f"kld/{tail}/mean", "p99": f"kld/{tail}/p99", "top1_agree": f"top1_agree/{tail}",
            "dppl": f"dppl/{tail}", "ppl": ppl}


@dataclass
class BaseReference:
    """The base model's next-token log-probabilities on one set's windows, computed once."""

    set_name: str
    seqlen: int
    max_windows: int | None
    windows: torch.Tensor  # (n, seqlen) int64 token ids
    logprobs: np.ndarray  # (n, seqlen - 1, vocab) float32 log-softmax (memory-mapped when on disk)
    top1: np.ndarray  # (n, seqlen - 1) int64 argmax of the base logits
    nll: float  # base mean NLL per predicted token (ppl_gptq's)
    # window -> every base log-prob of it is finite: checked on the first compare, not again by each cell
    finite: dict[int, bool] = field(default_factory=dict, repr=False)

    def window_finite(self, i: int, lp: torch.Tensor) -> bool:
        """Whether window `i`'s base log-probs (`lp`, as `compare` read them) are all finite, checked once."""
        if i not in self.finite:
            self.finite[i] = bool(torch.isfinite(lp).all())
        return self.finite[i]

    @property
    def ppl(self) -> float:
        return perplexity_of(self.nll)

    @property
    def names(self) -> dict[str, str]:
        return metric_names(self.set_name, self.seqlen, self.max_windows)


def _batches(wins: torch.Tensor, batch_size: int, desc: str, progress: bool) -> range:
    return tqdm(range(0, len(wins), batch_size), desc=desc, unit="batch", disable=bar_disable(progress))


def _logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """(B, seqlen - 1, vocab) float32 on the model's device: position t predicts t + 1. The distances are
    computed there too, as `gptq_perplexity` computes its NLL; on a GPU this spares a CPU pass over
    B x T x vocab float64 values (not yet timed there)."""
    device = next(model.parameters()).device
    return model(batch.to(device)).logits[:, :-1, :].float()


def _nll_sum(logits: torch.Tensor, batch: torch.Tensor) -> tuple[float, int]:
    """Summed token NLL of a batch, computed exactly as `gptq_perplexity` does (on the logits' device)."""
    target = batch[:, 1:].reshape(-1).to(logits.device)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target, reduction="none")
    return nll.double().sum().item(), nll.numel()


def _windows_sha(wins: torch.Tensor) -> str:
    return hashlib.sha256(wins.numpy().astype("<i8").tobytes()).hexdigest()


@torch.inference_mode()
def build_reference(
    model: torch.nn.Module, token_ids: torch.Tensor, set_name: str, seqlen: int, max_windows: int | None = None,
    path: Path | None = None, key: str = "", batch_size: int = 4, progress: bool = False,
) -> BaseReference:
    """The base model's reference on a set: reopened from `path` when a checked one is there (same
    `key` — the base model's cache key — same windows, intact file), else one forward per batch.

    Without `path` the log-probs stay in memory (tests, small vocabularies).
    """
    wins = windows(token_ids, seqlen, max_windows).clone()  # its own storage: a view held the whole stream
    if path is None:
        return _compute(model, wins, set_name, seqlen, max_windows, None, key, batch_size, progress)
    from ptq_bench.cache import shared_lock
    from ptq_bench.console import log

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with shared_lock(path, "the KLD reference"):  # built once by runs sharing a cache (two writers of a memmap: SIGBUS)
        _remove_stale_temps(path)
        ref = open_reference(path, wins, set_name, seqlen, max_windows, key)
        if ref is None and path.with_suffix(".json").is_file():
            log(f"cache: KLD reference {path} does not match its metadata (damaged, or its windows changed); "
                "rebuilding it")
        if ref is None:  # a damaged one's gigabytes go before the disk's room is counted for the new one
            for stale in (path.with_suffix(".json"), path, path.with_suffix(".top1.npy"), path.with_suffix(".tmp.npy")):
                stale.unlink(missing_ok=True)
        return ref or _compute(model, wins, set_name, seqlen, max_windows, path, key, batch_size, progress)


def _remove_stale_temps(path: Path) -> None:
    """The log-prob temp files of references beside `path` whose build was killed (a reference the run
    never builds again kept one: gigabytes at a real model's vocabulary); a temp file whose reference's
    lock is held is being written, and stays."""
    from filelock import FileLock, Timeout

    for tmp in path.parent.glob("*.tmp.npy"):
        final = tmp.with_name(tmp.name[: -len(".tmp.npy")] + ".npy")
        if final == path:
            continue  # this build's own: `build_reference` removes it before rebuilding
        try:
            with FileLock(str(final) + ".lock", timeout=0):
                tmp.unlink(missing_ok=True)
        except Timeout:
            pass


def _compute(model: torch.nn.Module, wins: torch.Tensor, set_name: str, seqlen: int, max_windows: int | None,
             path: Path | None, key: str, batch_size: int, progress: bool) -> BaseReference:
    """One forward per batch of windows: log-probs (memory-mapped at `path`'s temp file), top-1 and NLL."""
    n, vocab = len(wins), None
    logprobs, top1 = None, np.empty((n, seqlen - 1), dtype=np.int64)
    tmp = None if path is None else Path(path).with_suffix(".tmp.npy")
    total, count = 0.0, 0
    batch_size = window_batch(model, batch_size)
    for start in _batches(wins, batch_size, f"base log-probs {set_name}", progress):
        batch = wins[start:start + batch_size]
        logits = _logits(model, batch)
        if logprobs is None:
            vocab = logits.shape[-1]
            shape = (n, seqlen - 1, vocab)
            if tmp is None:
                logprobs = np.empty(shape, dtype=np.float32)
            else:
                _check_room(tmp, reference_bytes(n, seqlen, vocab), set_name)
                logprobs = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        logprobs[start:start + len(batch)] = torch.log_softmax(logits, dim=-1).cpu().numpy()
        top1[start:start + len(batch)] = logits.argmax(-1).cpu().numpy()
        s, c = _nll_sum(logits, batch)
        total, count = total + s, count + c
    ref = BaseReference(set_name, seqlen, max_windows, wins, logprobs, top1, total / count)
    if tmp is not None:
        _write(ref, Path(path), tmp, key)
    return ref


def reference_bytes(n_windows: float, seqlen: int, vocab: int) -> float:
    """Bytes of a reference on disk: its float32 log-probs and int64 top-1 ids, n_windows x (seqlen - 1) x
    (vocab x 4 + 8) (the .npy headers and the metadata aside)."""
    return n_windows * (seqlen - 1) * (vocab * 4 + 8)


def _check_room(tmp: Path, need: float, set_name: str) -> None:
    """The memory-mapped log-probs are a sparse file filled as the forwards go: a disk that fills up
    half-way kills the process with SIGBUS (no message, the invocation left open). Refused first."""
    free = free_bytes(tmp.parent)
    if need > free:
        raise PtqBenchError(f"the KLD reference of {set_name} needs {need / 1e9:.3g} GB in {short(str(tmp.parent))} "
                            f"and {free / 1e9:.3g} GB is free: {ROOM_ADVICE}")


def _write(ref: BaseReference, path: Path, tmp: Path, key: str) -> None:
    """Flush the log-probs, then name them and write the metadata last (its presence = complete)."""
    ref.logprobs.flush()
    tmp.replace(path)  # a stale reference's files went before the build (`build_reference`)
    np.save(path.with_suffix(".top1.npy"), ref.top1)
    meta = {"format_version": FORMAT_VERSION, "key": key, "set": ref.set_name, "seqlen": ref.seqlen,
            "max_windows": ref.max_windows, "windows_sha256": _windows_sha(ref.windows), "nll": ref.nll,
            "shape": list(ref.logprobs.shape), "sha256": file_sha256(path),
            "top1_sha256": file_sha256(path.with_suffix(".top1.npy"))}
    path.with_suffix(".json").write_text(json.dumps({**meta, "meta_sha256": _meta_sha(meta)}, indent=2) + "\n")
    ref.logprobs = np.load(path, mmap_mode="r")


def open_reference(path: Path, wins: torch.Tensor, set_name: str, seqlen: int, max_windows: int | None,
                   key: str = "") -> BaseReference | None:
    """A stored reference when it matches (key, set, windows) and its files and metadata are intact (their
    sha256s, and the metadata's own); else None, and the caller rebuilds it."""
    meta_file, top1_file = path.with_suffix(".json"), path.with_suffix(".top1.npy")
    if not (meta_file.is_file() and path.is_file() and top1_file.is_file()):
        return None
    try:
        meta = loads(meta_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    want = {"format_version": FORMAT_VERSION, "key": key, "set": set_name, "seqlen": seqlen,
            "max_windows": max_windows, "windows_sha256": _windows_sha(wins)}
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in want.items()):
        return None
    fields = {k: v for k, v in meta.items() if k != "meta_sha256"}
    if meta.get("meta_sha256") != _meta_sha(fields) or file_sha256(path) != meta.get("sha256") \
            or file_sha256(top1_file) != meta.get("top1_sha256"):
        return None
    return BaseReference(set_name, seqlen, max_windows, wins, np.load(path, mmap_mode="r"),
                         np.load(top1_file), float(meta["nll"]))


def _meta_sha(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def token_kl(base_logprobs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(T,) float64 KL(P || Q) per token from base log-probs (T, V) and quantized logits (T, V)."""
    lq = torch.log_softmax(logits.float(), dim=-1).double()  # float32 softmax, as the base's
    # renormalized in float64: float32 log-probs sum to 1 only within ~1e-7, which made the KL of two equal
    # distributions up to -5e-7 per token (a negative mean for a near-lossless cell); rounding left below 0 is 0
    lp, lq = (x - torch.logsumexp(x, dim=-1, keepdim=True) for x in (base_logprobs.double(), lq))
    return (lp.exp() * (lp - lq)).sum(-1).clamp(min=0.0)


def window_kl(base_logprobs: np.ndarray, logits: torch.Tensor, top1: np.ndarray) -> tuple[np.ndarray, int, torch.Tensor]:
    """One window's per-token KL (float64; KL_TOKENS tokens at a time: bounded float64 temporaries, KL_TOKENS x V),
    its tokens whose argmax matches the base's `top1`, and its base log-probs as read (a copy: the reference
    is a read-only memmap). `logits`: (seqlen - 1, V) of the quantized model."""
    lp = torch.from_numpy(np.array(base_logprobs)).to(logits.device)
    kl = [token_kl(lp[t:t + KL_TOKENS], logits[t:t + KL_TOKENS]).cpu().numpy() for t in range(0, len(lp), KL_TOKENS)]
    return np.concatenate(kl), int((logits.argmax(-1).cpu().numpy() == top1).sum()), lp


@torch.inference_mode()
def compare(ref: BaseReference, model: torch.nn.Module, batch_size: int = 4, progress: bool = False) -> dict[str, float]:
    """The distance metrics of `model` against the base reference (names: `metric_names`), plus the
    model's own GPTQ-protocol perplexity on the same windows."""
    kls, agree, total, count, undefined = [], 0, 0.0, 0, False
    batch_size = window_batch(model, batch_size)  # one window per forward for per-tensor activation scales
    for start in _batches(ref.windows, batch_size, f"kld {ref.set_name}", progress):
        batch = ref.windows[start:start + batch_size]
        logits = _logits(model, batch)  # (B, seqlen - 1, vocab)
        s, c = _nll_sum(logits, batch)
        total, count = total + s, count + c
        for b in range(len(batch)):
            kl, matches, lp = window_kl(ref.logprobs[start + b], logits[b], ref.top1[start + b])
            kls.append(kl)
            agree += matches
            # NaN logits have no argmax (torch names the first NaN): two diverged models would "agree" 100%
            undefined = undefined or not (bool(torch.isfinite(logits[b]).all()) and ref.window_finite(start + b, lp))
    kl = np.concatenate(kls)
    ppl = perplexity_of(total / count)
    names = ref.names
    return {names["mean"]: float(kl.mean()), names["p99"]: float(np.percentile(kl, 99)),
            names["top1_agree"]: math.nan if undefined else 100.0 * agree / kl.size, names["dppl"]: ppl - ref.ppl,
            names["ppl"]: ppl}
