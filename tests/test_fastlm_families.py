"""FastLM against stock HFLM on a tiny random checkpoint of every model family, request by request.

Families from tests/tiny_families.py (Mistral, Gemma 2/3 and Phi-3 have a 16-token sliding window,
shorter than the prompts, so the window truly shapes the scores; `_wide` variants have a window longer
than every prompt). Three lm-eval tasks, 4 documents each: HellaSwag (4 long endings after a shared
context), Winogrande (partial scoring: shared prefix, differing contexts), ARC-Easy. Every request's
log-likelihood within 1e-4 of HFLM's, the same is_greedy flags, identical accuracies, and the path the
row's protocol records (`TaskSuite.last_path`).
"""

import os

import pytest
import torch
from test_eval_harness import DATA, compare, make_tokenizer
from tiny_families import FAMILY_CONFIGS, tiny_config, tiny_model

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ptq_bench.eval.harness import TaskSuite  # noqa: E402
from ptq_bench.eval.model_traits import NOT_ALIGNED  # noqa: E402
from ptq_bench.families import family_of_config  # noqa: E402
from ptq_bench.models.experts import unfuse_experts  # noqa: E402

pytestmark = pytest.mark.skipif(not (DATA / "hellaswag").is_dir(), reason=f"no data folder at {DATA}")
TASKS = ["hellaswag", "winogrande", "arc_easy"]
LIMIT = 4
NO_CACHE = {"openai-gpt"}  # families whose forward takes no KV cache: the plain path
# families whose tiny model reads positions from its cache's length (Llama 4's attention temperature with a
# floor_scale of 8): the plain path; `_wide`, floor_scale past max_length (as Llama 4's 8192): the shared one
CACHE_LENGTH = {"llama4_text"}
# hybrids (a linear-attention or convolution mixer in some blocks): their caches hold recurrent / convolution
# states, which cannot be re-aligned behind padding (model_traits.shareable_cache): the aligned path (prefixes of
# one length per forward, caches forked), but the plain one where transformers' own continuation from a cache is
# not one forward's (model_traits.NOT_ALIGNED)
# Gemma 4's variants are attention kinds (q/k/v, q/k, q alone), not other mixers: not hybrids. With KV sharing (its
# last blocks reuse an earlier block's keys and values) the cache has layers FastLM's prefix caches do not know; so
# has Gemma 3n's (its variants: blocks with k/v or q alone)
KV_SHARED = {"gemma4_text", "gemma3n_text"}
# indexers' keys: MiniMax-M3's variant is its attention with a block-sparse indexer, A.X-K2 has a DSA indexer in every
# block, dots3.note's variants are attention with or without a DSA indexer, Qwen4-Exp has a QSA indexer; their cache
# layers also hold the indexer's keys (DynamicIndexedLayer for the token indexers), which FastLM's prefix caches do
# not know: the plain path
INDEXER_CACHE = {"minimax_m3_vl_text", "axk2", "dots3_note_text", "qwen4_exp_text"}
ATTENTION_VARIANTS = {t for t in FAMILY_CONFIGS if t.split(":")[0] in ("gemma4_text", "gemma3n_text", "minimax_m3_vl_text",
                                                                              "dots3_note_text")}
# pure recurrent decoders: one layout (a Mamba or mLSTM mixer in every block, no variants), recurrent caches all the
# same (xLSTM's of its own class)
STATE_SPACE = {"mamba", "falcon_mamba", "mamba2", "xlstm"}
HYBRID = {t for t in FAMILY_CONFIGS if family_of_config(tiny_config(t)).variants} - ATTENTION_VARIANTS | \
    {"falcon_h1", "falcon_h1:no_norm"} | STATE_SPACE
# (Falcon-H1: Mamba-2 beside attention in every block, so one layout, and a Mamba cache)
PLAIN_HYBRID = {t for t in HYBRID if t.split(":")[0] in NOT_ALIGNED}
WIDE = 1024  # a sliding window longer than every prompt (max_length is 256)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(add_bos=False)


@pytest.fixture(scope="module")
def suites(tok):
    torch.set_num_threads(1)
    return {b: TaskSuite(TASKS, DATA, tok, limit=LIMIT, backend=b, batch_size=8) for b in ("hflm", "fast")}


def build(name: str, vocab: int) -> torch.nn.Module:
    """A family's tiny model, as the pipeline loads it (experts unfused); `<family>_wide`: the same with a
    sliding window longer than every prompt."""
    if not name.endswith("_wide"):
        model = tiny_model(name, vocab_size=vocab)
        unfuse_experts(model)
        return model
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(name.removesuffix("_wide"), vocab)
    cfg.sliding_window, cfg.floor_scale = WIDE, WIDE
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).float().eval()


def both(suites: dict, model: torch.nn.Module) -> tuple[dict, dict, float, int]:
    ref, new = suites["hflm"], suites["fast"]
    a, b = ref.evaluate(model, progress=False), new.evaluate(model, progress=False)
    worst, flips = compare(ref.last_responses, new.last_responses)
    return a, b, worst, flips


@pytest.mark.parametrize("name", [*FAMILY_CONFIGS, "mistral_wide", "gemma3_text_wide", "llama4_text_wide"])
def test_fastlm_matches_hflm(suites, tok, name):
    model = build(name, len(tok))
    a, b, worst, flips = both(suites, model)
    # a float model takes the prefix-cache path; GPT-1's forward takes no KV cache
    plain = NO_CACHE | CACHE_LENGTH | PLAIN_HYBRID | KV_SHARED | INDEXER_CACHE
    want = "fast:plain" if name in plain else "fast:aligned" if name in HYBRID else "fast:shared"
    assert suites["fast"].last_path == want
    assert worst <= 1e-4 and flips == 0, (worst, flips)
    assert a == b  # every accuracy identical
    # not a vacuous model: the scores differ between requests
    lls = [r[0] for rs in suites["hflm"].last_responses.values() for r in rs]
    assert max(lls) - min(lls) > 1.0


def test_the_sliding_window_shapes_the_scores(suites, tok):
    """The 16-token window matters on these prompts (else the test above would not test it)."""
    ref = suites["hflm"]
    ref.evaluate(build("mistral", len(tok)), progress=False)
    narrow = ref.last_responses
    ref.evaluate(build("mistral_wide", len(tok)), progress=False)
    assert compare(narrow, ref.last_responses)[0] > 1e-2


def test_transformers_bitnet_online_takes_hflm_batching(suites, tok):
    """transformers' BitNet layers (AutoBitLinear, online: ternary weights, 8-bit activations per call)
    round activations: FastLM must not split sequences at a cached prefix but run HFLM's own batching."""
    from transformers.integrations.bitnet import AutoBitLinear

    model = tiny_model("bitnet", vocab_size=len(tok))
    for block in model.model.layers:
        for name, lin in list(block.named_modules()):
            if isinstance(lin, torch.nn.Linear):
                new = AutoBitLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, online_quant=True)
                new.load_state_dict(lin.state_dict())
                block.set_submodule(name, new)
    a, b, worst, flips = both(suites, model)
    assert suites["fast"].last_path == "fast:hflm"
    assert (worst, flips) == (0.0, 0) and a == b


def test_models_whose_cache_fastlm_cannot_fill_take_the_plain_path(suites, tok, monkeypatch):
    """Every registered family's cache but a hybrid's (recurrent / convolution states), a KV-sharing one's
    (Gemma 4's last blocks read an earlier block's keys and values) and one holding an indexer's keys
    is one FastLM fills exactly; anything else (here: a hybrid, a model without a config, or a cache judged unknown) takes the
    exact plain path, and the row's protocol says so."""
    import ptq_bench.eval.fast_lm as fast_lm

    shareable = {name: fast_lm.shareable_cache(tiny_model(name, vocab_size=64)) for name in FAMILY_CONFIGS}
    assert {name for name, yes in shareable.items() if not yes} == HYBRID | KV_SHARED | INDEXER_CACHE
    assert not fast_lm.shareable_cache(torch.nn.Linear(2, 2))
    monkeypatch.setattr(fast_lm, "shareable_cache", lambda model: False)
    a, b, worst, flips = both(suites, build("gemma3_text", len(tok)))
    assert suites["fast"].last_path == "fast:plain" and "path" not in suites["fast"].provenance()
    assert worst <= 1e-4 and flips == 0 and a == b


@torch.no_grad()
def continuation_gap(name: str) -> float:
    """max |Δ logits| between one forward over 40 tokens and the same after a cached 17-token prefix."""
    from transformers import DynamicCache

    model, ids = tiny_model(name), torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(0))
    full, cache = model(ids).logits, DynamicCache(config=model.config)
    model(ids[:, :17], use_cache=True, cache=cache)
    rest = model(ids[:, 17:], use_cache=True, cache=cache, position_ids=torch.arange(17, 40)[None]).logits
    return float((rest - full[:, 17:]).abs().max())


def test_why_some_hybrids_take_the_plain_path():
    """NOT_ALIGNED's reasons, as transformers has them now (a fix there fails this test: drop the entry):
    Jamba's, Mamba's, Falcon-Mamba's and RecurrentGemma's continuations from a cache are not one forward's, MiniMax
    and xLSTM refuse a DynamicCache; a Gated DeltaNet's or Mamba-2's continuation (Qwen3-Next, Mamba-2) is one
    forward's, to float rounding."""
    assert set(NOT_ALIGNED) == {"jamba", "mamba", "falcon_mamba", "recurrent_gemma", "minimax", "xlstm"}
    assert all(continuation_gap(t) > 1e-4 for t in ("jamba", "mamba", "falcon_mamba", "recurrent_gemma"))
    assert continuation_gap("qwen3_next") < 1e-6 and continuation_gap("mamba2") < 1e-6
    with pytest.raises(ValueError, match="MiniMax uses cache of its own"):
        continuation_gap("minimax")
    with pytest.raises(AttributeError, match="rnn_state"):  # xLSTM reads its own cache's states
        continuation_gap("xlstm")


def test_the_aligned_path_batches_prefixes_of_different_lengths(suites, tok, monkeypatch):
    """A hybrid's documents share stage-1 forwards although their prefixes differ in length (each batch's
    prefixes cut to its shortest), and still give HFLM's scores; `mode="aligned"` on a plain Llama too."""
    from ptq_bench.eval.fast_lm import FastLM

    lengths, forks = [], []
    score, fork = FastLM._score_aligned, FastLM._fork_rows
    monkeypatch.setattr(FastLM, "_score_aligned", lambda self, groups, results: (
        lengths.extend(len(g.prefix) for g in groups), score(self, groups, results))[1])
    monkeypatch.setattr(FastLM, "_fork_rows", lambda self, chunk, n, results: (
        forks.append(n), fork(self, chunk, n, results))[1])
    a, b, worst, flips = both(suites, build("qwen3_next", len(tok)))
    assert suites["fast"].last_path == "fast:aligned" and worst <= 1e-4 and flips == 0 and a == b
    assert len(forks) < len(set(lengths))  # fewer stage-1 forwards than prefix lengths
    llama = build("llama", len(tok))
    fast = TaskSuite(TASKS, DATA, tok, limit=LIMIT, backend="fast", batch_size=8, fast_mode="aligned")
    assert fast.evaluate(llama, progress=False) == suites["hflm"].evaluate(llama, progress=False)
    assert fast.last_path == "fast:aligned" and compare(suites["hflm"].last_responses, fast.last_responses)[0] <= 1e-4


def test_a_model_that_takes_only_its_own_cache_takes_the_plain_path(suites, tok):
    """A MiniMax without lightning-attention layers (transformers' own 1-layer default is one) has a cache
    config of attention layers only, yet refuses a DynamicCache: the plain path, HFLM's scores (it crashed)."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("minimax", len(tok))
    cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
    torch.manual_seed(0)
    a, b, worst, flips = both(suites, AutoModelForCausalLM.from_config(cfg).float().eval())
    assert suites["fast"].last_path == "fast:plain" and worst <= 1e-4 and flips == 0 and a == b
