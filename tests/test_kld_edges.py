"""KLD edges the main tests do not reach (ptq_bench/eval/kld.py): a stored reference built on other windows
under the same key, and a window whose predicted tokens end one past a whole KL step. Each was found by
planting a bug the rest of the suite let through."""

from __future__ import annotations

import pytest
import torch
from tiny_families import tiny_model

import ptq_bench.eval.kld as kld
from ptq_bench.eval.kld import build_reference, compare


@pytest.fixture(scope="module")
def base():
    return tiny_model("llama", vocab_size=128)


def test_a_stored_reference_of_other_windows_is_rebuilt(base, tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, 128, (3 * 16,), generator=g) for _ in range(2))
    path = tmp_path / "ref.npy"
    build_reference(base, a, "wikitext2", 16, path=path, key="k")
    ref = build_reference(base, b, "wikitext2", 16, path=path, key="k")  # same key, set, seqlen: other tokens
    fresh = build_reference(base, b, "wikitext2", 16)
    assert torch.equal(ref.windows, b.view(3, 16)) and ref.nll == pytest.approx(fresh.nll, rel=1e-9)
    assert (ref.logprobs == fresh.logprobs).all()


def test_every_predicted_token_is_scored_when_a_window_ends_past_a_kl_step(base, monkeypatch):
    monkeypatch.setattr(kld, "KL_TOKENS", 4)  # seqlen 6: 5 predicted tokens = one step of 4, then 1
    ids = torch.randint(0, 128, (2 * 6,), generator=torch.Generator().manual_seed(1))
    ref = build_reference(base, ids, "wikitext2", 6)
    out = compare(ref, base)
    assert out["top1_agree/wikitext2/seq6"] == 100.0 and out["kld/wikitext2/seq6/mean"] == 0.0
