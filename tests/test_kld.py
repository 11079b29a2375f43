"""KL divergence, top-1 agreement and ΔPPL against the base model (ptq_bench/eval/kld.py)."""

from __future__ import annotations

import copy
import json
import math
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_families import tiny_model

from ptq_bench.eval.kld import build_reference, compare, metric_names, token_kl
from ptq_bench.eval.perplexity import gptq_perplexity, windows

SEQ, BATCH = 64, 2


class Counting(torch.nn.Module):
    """A model that counts its forwards."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, ids):
        self.calls += 1
        return self.inner(ids)


@pytest.fixture(scope="module")
def base():
    return tiny_model("llama", vocab_size=512)


@pytest.fixture(scope="module")
def token_ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 512, (5 * SEQ + 17,), generator=g)  # 5 windows, a tail, an uneven last batch


@pytest.fixture(scope="module")
def perturbed(base):
    q = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return q


def test_names_follow_the_perplexity_protocol():
    assert metric_names("wikitext2", 512, 4) == {
        "mean": "kld/wikitext2/seq512/first4win/mean", "p99": "kld/wikitext2/seq512/first4win/p99",
        "top1_agree": "top1_agree/wikitext2/seq512/first4win", "dppl": "dppl/wikitext2/seq512/first4win",
        "ppl": "ppl_gptq/wikitext2/seq512/first4win"}
    assert metric_names("c4", 2048, None)["mean"] == "kld/c4/seq2048/mean"


def test_a_model_against_itself(base, token_ids):
    ref = build_reference(base, token_ids, "wikitext2", SEQ, batch_size=BATCH)
    m = compare(ref, base, batch_size=BATCH)
    n = ref.names
    assert m[n["mean"]] == 0 and m[n["p99"]] == 0 and m[n["dppl"]] == 0
    assert m[n["top1_agree"]] == 100
    assert m[n["ppl"]] == gptq_perplexity(base, token_ids, SEQ, batch_size=BATCH, progress=False)["ppl"]
    assert ref.ppl == m[n["ppl"]]


@torch.inference_mode()
def test_perturbed_copy_matches_a_direct_kl_div(base, perturbed, token_ids):
    ref = build_reference(base, token_ids, "c4", SEQ, max_windows=4, batch_size=BATCH)
    m = compare(ref, perturbed, batch_size=BATCH)
    n = ref.names
    wins = windows(token_ids, SEQ, 4)
    lp = torch.log_softmax(base(wins).logits[:, :-1].double(), -1)  # (4, SEQ - 1, V)
    lq = torch.log_softmax(perturbed(wins).logits[:, :-1].double(), -1)
    direct = F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)  # (4, SEQ - 1): KL(base || quantized)
    assert m[n["mean"]] > 1e-3
    assert m[n["mean"]] == pytest.approx(direct.mean().item(), abs=1e-6)
    assert m[n["p99"]] == pytest.approx(np.percentile(direct.flatten().numpy(), 99), abs=1e-6)
    assert m[n["p99"]] >= m[n["mean"]]
    agree = 100 * (lp.argmax(-1) == lq.argmax(-1)).double().mean().item()
    assert m[n["top1_agree"]] == pytest.approx(agree) and m[n["top1_agree"]] < 100
    ppl = {k: gptq_perplexity(x, token_ids, SEQ, max_windows=4, batch_size=BATCH, progress=False)["ppl"]
           for k, x in (("base", base), ("q", perturbed))}
    assert m[n["ppl"]] == ppl["q"]
    assert m[n["dppl"]] == pytest.approx(ppl["q"] - ppl["base"], rel=1e-12) and not math.isclose(ppl["q"], ppl["base"])


def test_base_reference_is_computed_once(base, perturbed, token_ids, tmp_path):
    counted = Counting(base)
    path = tmp_path / "ref" / "wikitext2-seq64.npy"
    ref = build_reference(counted, token_ids, "wikitext2", SEQ, path=path, key="base-abc", batch_size=BATCH)
    assert counted.calls == 3  # ceil(5 windows / 2): one forward per batch
    results = [compare(ref, cell, batch_size=BATCH) for cell in (perturbed, base, perturbed)]
    assert counted.calls == 3 and results[0] == results[2]  # cells never run the base model
    again = build_reference(counted, token_ids, "wikitext2", SEQ, path=path, key="base-abc", batch_size=BATCH)
    assert counted.calls == 3  # reopened from disk, checked
    assert np.array_equal(again.logprobs, ref.logprobs) and again.nll == ref.nll
    assert compare(again, perturbed, batch_size=BATCH) == results[0]
    build_reference(counted, token_ids, "wikitext2", SEQ, path=path, key="other-base", batch_size=BATCH)
    assert counted.calls == 6  # another base model: recomputed


def test_a_reference_larger_than_the_free_disk_is_refused_before_it_is_written(base, token_ids, tmp_path, monkeypatch):
    """The log-probs are a sparse memory-mapped file: a disk that filled up while they were written ended the
    process with SIGBUS, without a word. Refused in one line first, and nothing is left in the cache."""
    import shutil

    import ptq_bench.paths as paths
    from ptq_bench.errors import PtqBenchError

    real = shutil.disk_usage
    monkeypatch.setattr(paths.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    path = tmp_path / "ref" / "wikitext2-seq64.npy"
    with pytest.raises(PtqBenchError, match=r"KLD reference of wikitext2 needs .* GB is free: set eval.perplexity.max_windows"):
        build_reference(base, token_ids, "wikitext2", SEQ, path=path, key="base-abc", batch_size=BATCH)
    assert not [p for p in path.parent.iterdir() if p.suffix == ".npy"]


def test_a_reference_holds_only_its_windows_tokens(base, token_ids, tmp_path):
    """Its windows were a view of the whole token stream: a run kept each set's every token in int64 (4.7 MB
    for 4 windows of 128 tokens of WikiText-2), for as long as the reference lived."""
    path = tmp_path / "c4-seq64.npy"
    refs = [build_reference(base, token_ids, "c4", SEQ, max_windows=2, path=p, batch_size=BATCH)
            for p in (None, path, path)]  # in memory, built on disk, reopened
    for ref in refs:
        held = ref.windows.untyped_storage().nbytes()
        assert held == 2 * SEQ * 8, held  # 2,696 bytes: the 337 tokens of the stream
        assert torch.equal(ref.windows, windows(token_ids, SEQ, 2))


def test_a_damaged_reference_and_a_killed_builds_temp_file_leave_before_the_room_is_counted(
        base, token_ids, tmp_path, monkeypatch):
    """Rebuilding over a damaged reference counted its file (and its own killed build's temp file) as used
    disk, so a disk with room for one reference refused to replace it: both go before the room is counted."""
    import shutil

    import ptq_bench.paths as paths

    path = tmp_path / "c4.npy"
    build_reference(base, token_ids, "c4", SEQ, path=path, batch_size=BATCH)
    _shift_nll(path)  # damaged: its metadata's own checksum no longer holds
    path.with_suffix(".tmp.npy").write_bytes(b"half")  # this reference's own build, killed
    seen, real = [], shutil.disk_usage

    def usage(folder):
        seen.append(sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".npy", ".json")))
        return real(folder)

    monkeypatch.setattr(paths.shutil, "disk_usage", usage)
    build_reference(base, token_ids, "c4", SEQ, path=path, batch_size=BATCH)
    assert seen == [[]]


def test_a_damaged_reference_file_is_recomputed(base, token_ids, tmp_path, capsys):
    counted = Counting(base)
    path = tmp_path / "c4.npy"
    ref = build_reference(counted, token_ids, "c4", SEQ, path=path, batch_size=BATCH)
    expected = np.array(ref.logprobs)
    del ref
    with open(path, "r+b") as fh:  # flip one byte of the stored log-probs
        fh.seek(-5, 2)
        byte = fh.read(1)
        fh.seek(-5, 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    capsys.readouterr()
    again = build_reference(counted, token_ids, "c4", SEQ, path=path, batch_size=BATCH)
    assert counted.calls == 6 and np.array_equal(np.asarray(again.logprobs), expected)
    assert f"cache: KLD reference {path} does not match its metadata" in capsys.readouterr().out  # was silent


def test_a_killed_builds_temp_file_is_removed_unless_its_build_runs(base, token_ids, tmp_path):
    """A reference whose build was killed kept its log-prob temp file until that same reference was built
    again (never, once the recipe changed its windows): 48 MB here, gigabytes at a real vocabulary."""
    from filelock import FileLock

    stale, running = tmp_path / "c4-seq64-first50win.tmp.npy", tmp_path / "c4-seq64-first9win.tmp.npy"
    stale.write_bytes(b"half")
    running.write_bytes(b"half")
    with FileLock(str(tmp_path / "c4-seq64-first9win.npy") + ".lock"):  # another process building that one
        build_reference(base, token_ids, "c4", SEQ, path=tmp_path / "c4-seq64.npy", batch_size=BATCH)
    assert not stale.exists() and running.exists()


def _zero_top1(path):
    np.save(path.with_suffix(".top1.npy"), np.zeros_like(np.load(path.with_suffix(".top1.npy"))))


def _shift_nll(path):
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "nll": meta["nll"] + 0.5}))


DAMAGE = {
    "top1 zeroed": _zero_top1,  # same shape: every top-1 agreement read 0.0
    "nll edited": _shift_nll,  # the base row's perplexity is read from it
    "top1 truncated": lambda p: p.with_suffix(".top1.npy").write_bytes(p.with_suffix(".top1.npy").read_bytes()[:100]),
    "metadata not JSON": lambda p: p.with_suffix(".json").write_text("{not json"),
    "metadata not UTF-8": lambda p: p.with_suffix(".json").write_bytes(b"\xff\xfe"),
    "metadata a list": lambda p: p.with_suffix(".json").write_text("[]"),
    "top1 missing": lambda p: p.with_suffix(".top1.npy").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_every_file_of_a_reference_is_checked(base, token_ids, tmp_path, damage):
    """Not only the log-probs: the top-1 file and the metadata (the base NLL) too; damage of any kind is
    a rebuild, with the same values, never a traceback or a silently wrong number."""
    counted = Counting(base)
    path = tmp_path / "c4.npy"
    ref = build_reference(counted, token_ids, "c4", SEQ, path=path, batch_size=BATCH)
    top1, nll = ref.top1.copy(), ref.nll
    del ref
    DAMAGE[damage](path)
    again = build_reference(counted, token_ids, "c4", SEQ, path=path, batch_size=BATCH)
    assert counted.calls == 6 and np.array_equal(again.top1, top1) and again.nll == nll
    build_reference(counted, token_ids, "c4", SEQ, path=path, batch_size=BATCH)
    assert counted.calls == 6  # the rebuilt one is intact


class Slow(Counting):
    def forward(self, ids):
        time.sleep(0.2)
        return super().forward(ids)


def test_concurrent_builders_of_one_reference_build_it_once(base, token_ids, tmp_path):
    """Runs sharing a cache: two writers of one memory-mapped temp file had crashed a run with SIGBUS."""
    counted = Slow(base)
    path, out = tmp_path / "kld" / "c4.npy", []

    def build():
        out.append(build_reference(counted, token_ids, "c4", SEQ, path=path, batch_size=BATCH))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counted.calls == 3 and len(out) == 2 and out[0].nll == out[1].nll
    assert np.array_equal(np.asarray(out[0].logprobs), np.asarray(out[1].logprobs))


def test_non_finite_logits_have_no_top1_agreement(base, token_ids):
    """A diverged (NaN-weight) model against itself, or after Absmax W4: torch's argmax of a NaN row is its first
    NaN, so both sides "agreed" and the row said top1_agree 100 beside kld NaN (found on an fp16 model at lr 1e9)."""
    broken = copy.deepcopy(base)
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = math.nan
    ref = build_reference(broken, token_ids, "wikitext2", SEQ, batch_size=BATCH)
    for model in (broken, base):
        m = compare(ref, model, batch_size=BATCH)
        assert math.isnan(m[ref.names["top1_agree"]]) and math.isnan(m[ref.names["mean"]])
    m = compare(build_reference(base, token_ids, "wikitext2", SEQ, batch_size=BATCH), broken, batch_size=BATCH)
    assert math.isnan(m[ref.names["top1_agree"]])



class NanWindow(torch.nn.Module):
    """`inner` whose logits are NaN on the windows that equal `window` (an overflow in one window only)."""

    def __init__(self, inner, window):
        super().__init__()
        self.inner, self.window = inner, window

    def forward(self, ids):
        out = self.inner(ids)
        out.logits[(ids == self.window.to(ids.device)).all(-1)] = math.nan
        return out


def test_non_finite_logits_in_any_window_leave_no_top1_agreement(base, perturbed, token_ids):
    """NaN logits in the first window only, of the model or of the base: the row has no top-1 agreement, whichever
    window (and batch) comes last; a flag kept from the last window alone would print a number beside kld NaN."""
    first = windows(token_ids, SEQ)[0]
    ref = build_reference(base, token_ids, "wikitext2", SEQ, batch_size=BATCH)
    m = compare(ref, NanWindow(perturbed, first), batch_size=BATCH)
    assert math.isnan(m[ref.names["top1_agree"]]) and math.isnan(m[ref.names["mean"]])
    broken_ref = build_reference(NanWindow(base, first), token_ids, "wikitext2", SEQ, batch_size=BATCH)
    assert math.isnan(compare(broken_ref, perturbed, batch_size=BATCH)[ref.names["top1_agree"]])

def test_kl_of_equal_distributions_is_zero_not_negative():
    """Logits shifted by a constant are one distribution: float32 log-probs that sum to 1 only within rounding
    gave -4.7e-7 nats on 107 of 256 tokens (a Cohere 2 Absmax W8A8 row's mean KLD was -1.3e-9)."""
    logits = torch.randn(256, 384, generator=torch.Generator().manual_seed(0)) * 0.1
    kl = token_kl(torch.log_softmax(logits, -1), logits + 0.5)
    assert (kl >= 0).all() and kl.max() < 1e-12


def test_base_log_probs_are_checked_for_finiteness_once_per_reference(base, perturbed, token_ids, monkeypatch):
    """Every cell read each window's base log-probs only to find them finite again: one check per window of a
    reference, whatever the number of cells compared with it (the same numbers)."""
    ref = build_reference(base, token_ids, "wikitext2", SEQ, batch_size=BATCH)
    first = compare(ref, perturbed, batch_size=BATCH)
    checked, isfinite = [], torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda x: checked.append(x.shape) or isfinite(x))
    assert compare(ref, perturbed, batch_size=BATCH) == first
    assert len(checked) == len(ref.windows)  # the cell's logits, one window at a time; not the base again
