"""GPTQ-protocol perplexity: window count, dropped tail, and a hand-computed value."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ptq_bench.eval.perplexity import gptq_perplexity, protocol_name, windows


class Bigram(nn.Module):
    """logits[t] = table[token t]: a model whose NLL is easy to compute by hand."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)))
        self.calls = []

    def forward(self, ids):
        self.calls.append(tuple(ids.shape))
        return SimpleNamespace(logits=self.table[ids])


def hand_nll(table: torch.Tensor, ids: list[int], seqlen: int) -> tuple[float, int]:
    total, n = 0.0, 0
    for w in range(len(ids) // seqlen):
        win = ids[w * seqlen:(w + 1) * seqlen]
        for a, b in zip(win[:-1], win[1:]):
            row = [float(x) for x in table[a]]
            log_z = math.log(sum(math.exp(x) for x in row))
            total += log_z - row[b]
            n += 1
    return total / n, n


def test_protocol_names():
    assert protocol_name("wikitext2", 2048, None) == "ppl_gptq/wikitext2/seq2048"
    assert protocol_name("c4", 256, 40) == "ppl_gptq/c4/seq256/first40win"


def test_windows_drop_the_tail_and_keep_the_first_k():
    ids = torch.arange(10)
    w = windows(ids, 4)
    assert w.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # tokens 8, 9 dropped
    assert windows(ids, 4, max_windows=1).tolist() == [[0, 1, 2, 3]]
    assert windows(ids, 4, max_windows=99).shape == (2, 4)
    with pytest.raises(ValueError):
        windows(ids, 11)
    with pytest.raises(ValueError):
        windows(ids.view(2, 5), 4)


def test_a_stream_of_whole_windows_keeps_its_last_window_and_one_token_windows_are_refused():
    """floor(N / seqlen) windows: a stream that is a multiple of seqlen loses no window (its last one was
    the tail of an off-by-one count, and every ppl / KLD number would be over one window fewer); a window of one
    token predicts nothing (the mean NLL would be 0 / 0)."""
    assert windows(torch.arange(8), 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows(torch.arange(4), 4).tolist() == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="seqlen must be >= 2"):
        windows(torch.arange(8), 1)


def test_matches_hand_computed_value_and_the_reference_formula():
    vocab, seqlen = 7, 5
    ids = torch.randint(0, vocab, (23,), generator=torch.Generator().manual_seed(1))
    model = Bigram(vocab)
    out = gptq_perplexity(model, ids, seqlen, batch_size=3, progress=False)
    nll, n = hand_nll(model.table.detach(), ids.tolist(), seqlen)
    assert out["n_windows"] == 4 and out["n_tokens"] == 4 * (seqlen - 1) == n
    assert out["nll"] == pytest.approx(nll, rel=1e-6)
    assert out["ppl"] == pytest.approx(math.exp(nll), rel=1e-6)
    assert model.calls == [(3, seqlen), (1, seqlen)]  # windows batched, never padded
    # IST-DASLab/gptq llama_eval: CrossEntropyLoss mean over seqlen - 1 shifted tokens, * seqlen,
    # summed over windows, / (n_windows * seqlen)
    nlls = []
    for i in range(4):
        batch = ids[i * seqlen:(i + 1) * seqlen][None]
        logits = model(batch).logits
        loss = nn.CrossEntropyLoss()(logits[:, :-1].reshape(-1, vocab), batch[:, 1:].reshape(-1))
        nlls.append(loss.float() * seqlen)
    reference = torch.exp(torch.stack(nlls).sum() / (4 * seqlen)).item()
    assert out["ppl"] == pytest.approx(reference, rel=1e-5)


def test_subset_and_batch_size():
    vocab, seqlen = 5, 4
    ids = torch.randint(0, vocab, (40,), generator=torch.Generator().manual_seed(2))
    model = Bigram(vocab, seed=3)
    full = gptq_perplexity(model, ids, seqlen, progress=False)
    assert full == pytest.approx(gptq_perplexity(model, ids, seqlen, batch_size=1, progress=False))
    sub = gptq_perplexity(model, ids, seqlen, max_windows=2, progress=False)
    assert sub["n_windows"] == 2 and sub["n_tokens"] == 6
    assert sub["nll"] == pytest.approx(hand_nll(model.table.detach(), ids[:8].tolist(), seqlen)[0], rel=1e-6)


class _BosTokenizer:
    """Characters as ids, with a BOS (id 1) in front when special tokens are added, as Llama's tokenizer does."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [1] * add_special_tokens + [2 + ord(c) % 200 for c in text]}


def test_the_stream_is_tokenized_with_the_tokenizers_special_tokens(tmp_path, data_dir):
    """GPTQ's datautils calls tokenizer(text): a BOS-adding tokenizer starts the stream with BOS, and every
    window moves by one token. The stream was tokenized without special tokens before (EVAL_VERSION 4)."""
    from ptq_bench.data import perplexity_text
    from ptq_bench.eval.evaluator import Evaluator

    perplexity = SimpleNamespace(sets=["wikitext2"], seq_len=64, max_windows=None)
    ev = Evaluator(SimpleNamespace(perplexity=perplexity, tasks=[]), data_dir, tmp_path, _BosTokenizer(), "bos")
    ids = ev.ppl_ids["wikitext2"]
    assert ids[0] == 1 and list(ids) == _BosTokenizer()(perplexity_text("wikitext2", data_dir))["input_ids"]


def test_per_tensor_activation_rows_score_each_window_on_its_own():
    """A per-tensor activation scale spans the whole forward: windows batched together would share one scale,
    and the row's perplexity (and KLD) would depend on eval.batch_size. The GPTQ protocol scores each window
    alone, so a model that mixes batch mates (`model_traits.mixes_tokens`) is run one window per forward."""
    from quant_fixtures import tiny_llama

    from ptq_bench.eval.kld import build_reference, compare
    from ptq_bench.quant.registry import get_method

    model = tiny_llama()
    base = tiny_llama()
    method = get_method("absmax")
    method.apply(model, method.make_config({"w_bits": 8, "a_bits": 4, "a_granularity": "tensor"}))
    ids = torch.randint(0, 256, (6 * 32,), generator=torch.Generator().manual_seed(0))
    one = gptq_perplexity(model, ids, 32, batch_size=1, progress=False)["ppl"]
    assert gptq_perplexity(model, ids, 32, batch_size=4, progress=False)["ppl"] == one
    ref = build_reference(base, ids, "wikitext2", 32, batch_size=4)
    assert compare(ref, model, batch_size=4) == compare(ref, model, batch_size=1)


def test_no_progress_bar_in_a_log(capfd):
    """stderr not a terminal: the cell's log line says it all (as the sweep's own `cells` bar)."""
    gptq_perplexity(Bigram(11), torch.arange(200) % 11, seqlen=8, batch_size=1, progress=True)
    assert "batch/s" not in capfd.readouterr().err


def test_a_perplexity_beyond_float64_is_inf_not_a_traceback():
    """A mean NLL above log(float64 max) ~ 709.8 (logits that overflowed, a model scaled up, a diverged one):
    the perplexity is +inf (what the reference's torch.exp returns), and the base reference and a compared
    model say so too, where math.exp raised OverflowError and stopped the run with a traceback."""
    from ptq_bench.eval.kld import build_reference, compare

    vocab, seqlen = 7, 5
    ids = torch.randint(0, vocab, (23,), generator=torch.Generator().manual_seed(1))
    model = Bigram(vocab)
    with torch.no_grad():
        model.table.mul_(1e4)
    out = gptq_perplexity(model, ids, seqlen, progress=False)
    assert out["nll"] > 710 and out["ppl"] == math.inf
    ref = build_reference(model, ids, "wikitext2", seqlen, batch_size=2)
    assert ref.ppl == math.inf
    assert compare(ref, model, batch_size=2)["ppl_gptq/wikitext2/seq5"] == math.inf


@pytest.mark.parametrize("tokens, refused", [(3 * 64, False), (3 * 64 + 63, False), (2 * 64 + 63, True)])
def test_max_windows_may_name_every_window_of_the_set(tmp_path, tokens, refused):
    """`max_windows` equal to the set's window count scores the whole set (named first<n>win): it is allowed;
    one more than the windows there are is refused before anything is scored."""
    from ptq_bench.errors import DataError
    from ptq_bench.eval.evaluator import _check_windows

    p = SimpleNamespace(seq_len=64, max_windows=3)
    if not refused:
        _check_windows(p, "wikitext2", tokens, tmp_path / "test.jsonl")
        assert len(windows(torch.arange(tokens), 64, p.max_windows)) == 3
        return
    with pytest.raises(DataError, match="max_windows: 3 is more than the 2 windows of 64 tokens in wikitext2"):
        _check_windows(p, "wikitext2", tokens, tmp_path / "test.jsonl")
