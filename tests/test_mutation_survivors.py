"""Mutation-audit additions (primitives, GPTQ, KLD, sweep settings, `estimate`): each test pins a behaviour that a
planted bug changed while the rest of the suite still passed. Named after what it guards; the mutant it
kills is in its docstring."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_estimate import _recipe
from tiny_families import tiny_model

from ptq_bench.cells import _sweep_params
from ptq_bench.errors import PtqBenchError, RecipeError
from ptq_bench.estimate import Measured
from ptq_bench.estimate_act import Rates, act_key, untimed_lines
from ptq_bench.estimate_sets import ppl_lines, set_windows
from ptq_bench.eval import kld
from ptq_bench.quant.configs import AbsmaxConfig, SmoothQuantConfig
from ptq_bench.quant.gptq import gptq_solve
from ptq_bench.quant.primitives import Grid, minmax_params, quantize, quantize_scalar
from ptq_bench.recipe import Recipe, load_recipe

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"
SEQ, BATCH, VOCAB = 64, 2, 512


# ----------------------------------------------------------------------------- KLD: the disk-room check


def test_the_room_check_asks_for_exactly_the_references_bytes(tmp_path, monkeypatch):
    """5 windows of 64 tokens at vocabulary 512: 5 x 63 x (512 x 4 + 8) = 647,640 bytes (float32 log-probs and
    int64 top-1 ids). A disk with exactly that free builds it; one byte less is refused. Kills: `need > free`
    as `>=` or `> 2 * free`, a 2-byte unit in `reference_bytes`, leaving the top-1 file out of the count, and
    `_compute` asking for one predicted token fewer per window."""
    need = 5 * (SEQ - 1) * (VOCAB * 4 + 8)
    assert kld.reference_bytes(5, SEQ, VOCAB) == need
    base = tiny_model("llama", vocab_size=VOCAB)
    ids = torch.randint(0, VOCAB, (5 * SEQ + 17,), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(kld, "free_bytes", lambda folder: float(need))
    ref = kld.build_reference(base, ids, "wikitext2", SEQ, path=tmp_path / "fits" / "r.npy", batch_size=BATCH)
    assert ref.logprobs.shape == (5, SEQ - 1, VOCAB)
    monkeypatch.setattr(kld, "free_bytes", lambda folder: float(need - 1))
    with pytest.raises(PtqBenchError, match=r"KLD reference of wikitext2 needs 0\.000648 GB .* 0\.000648 GB is free"):
        kld.build_reference(base, ids, "wikitext2", SEQ, path=tmp_path / "short" / "r.npy", batch_size=BATCH)


def test_no_tokens_kl_is_negative_where_rounding_leaves_it_below_zero():
    """Wide logits (scale 10) shifted by a constant are one distribution, yet float64 rounding left 96 of these
    256 tokens at about -3e-16 nats before the clamp. Kills: `token_kl` without `.clamp(min=0.0)`."""
    logits = torch.randn(256, 384, generator=torch.Generator().manual_seed(0)) * 10
    kl = kld.token_kl(torch.log_softmax(logits, -1), logits + 0.5)
    assert (kl >= 0).all() and kl.max() < 1e-12


# ----------------------------------------------------------------------------- GPTQ: dead input columns


def _dead_column_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 4 x 16 weight whose column 3 holds every row's largest |w| and is dead (H_33 = 0)."""
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    w[:, 3] = 50.0
    h = torch.eye(16)
    h[3, 3] = 0
    zeroed = w.clone()
    zeroed[:, 3] = 0
    return w, h, zeroed


def test_a_per_row_fit_sees_the_dead_columns_as_quant_py_does():
    """The reference fits the per-row quantizer (group_size -1) before it zeroes the dead columns, so their
    weights set the range. Kills: the fit moved after `W[:, dead] = 0`."""
    w, h, _ = _dead_column_problem()
    q, grid, _ = gptq_solve(w, h, 4, group_size=-1)
    assert torch.equal(grid.scale[:, 0], minmax_params(w, 4)[0])
    assert torch.all(q[:, 3] == 0)


def test_static_groups_are_fitted_after_the_dead_columns_are_zeroed():
    """Static groups (as GPTQModel's) are fitted on the weights with the dead columns zeroed, as the groups
    fitted in the loop are. Kills: static groups fitted on the original weight."""
    w, h, zeroed = _dead_column_problem()
    _, static, _ = gptq_solve(w, h, 4, group_size=8, static_groups=True)
    _, looped, _ = gptq_solve(w, h, 4, group_size=8)
    want = minmax_params(zeroed[:, :8], 4)[0]
    assert torch.equal(static.scale[:, 0], want) and torch.equal(looped.scale[:, 0], want)


# ----------------------------------------------------------------------------- primitives


def test_quantize_keeps_a_fractional_zero_point_in_the_rounding():
    """`quantize` of a grid with a fractional zero (QuIP's 2^b levels on [-s, s], zero 1.5 at 2 bits) rounds
    w / scale + zero, not round(w / scale) + zero (off the grid). Kills: `integer = True`."""
    w = torch.tensor([[-1.0, -0.4, 0.1, 0.4, 1.0]])
    grid = Grid(torch.full((1, 1), 2 / 3), torch.full((1, 1), 1.5), 3, 5, 2.0)
    assert torch.equal(quantize(w, grid), quantize_scalar(w, grid.scale, grid.zero, 3))
    assert quantize(w, grid).mul(1.5).tolist() == [[-1.5, -0.5, 0.5, 0.5, 1.5]]


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("config, kw", [
    (AbsmaxConfig, {"group_size": 256}), (AbsmaxConfig, {"w_granularity": "tensor", "group_size": 512}),
    (SmoothQuantConfig, {"w_granularity": "channel", "group_size": 256}),
])
def test_a_group_size_above_the_default_is_refused_without_groups(config, kw):
    """A group_size larger than the default is as unused as a smaller one. Kills: `!=` as `<` in
    `refuse_unused_group_size`."""
    with pytest.raises(ValueError, match=f"group_size {kw['group_size']} needs w_granularity: group"):
        config(**kw)


@pytest.mark.parametrize("params, needle", [
    ({"w_bits": [8], "a_bits": [8, 4]}, "w_bits and a_bits lists must have the same length"),
    ({"w_bits": [8, 4], "a_bits": [8]}, "w_bits and a_bits lists must have the same length"),
    ({"w_bits": []}, "a bits list must have 1 to 64 items, got 0"),
    ({"w_bits": 8, "a_bits": []}, "a bits list must have 1 to 64 items, got 0"),
])
def test_bits_lists_that_cannot_be_zipped_or_are_empty_are_refused(params, needle):
    """A shorter w_bits list silently dropped a_bits settings (or crashed on the longer one) without the length
    check; an empty list gave an entry no cells at all. Kills: the zip check removed, `1 <= n` as `0 <= n`."""
    with pytest.raises(RecipeError, match=needle):
        _sweep_params(params, "quantize[0]")


def test_damp_one_is_refused_by_both_hessian_methods():
    """damp is bounded below 1.0 (`lt`), not at it. Kills: `lt=1.0` as `max=1.0` in GPTQConfig."""
    from ptq_bench.quant.configs import GPTQConfig, QuIPConfig

    for config in (GPTQConfig, QuIPConfig):
        with pytest.raises(ValueError, match=r"damp: must be < 1\.0, got 1\.0"):
            config(damp=1.0)


# ----------------------------------------------------------------------------- `ptq-bench estimate`


def _smoke(tmp_path: Path, **changes: Any) -> Recipe:
    return load_recipe(_recipe(tmp_path, **changes))


def _eval(**perplexity: Any) -> dict:
    raw = yaml.safe_load(SMOKE.read_text())["eval"]
    return {**raw, "perplexity": {**raw["perplexity"], **perplexity}}


def test_set_windows_are_whole_windows_capped_at_max_windows(tmp_path):
    """floor(ids / seq_len) (the evaluator drops the tail), at most max_windows; a set not counted is NaN
    without max_windows. Kills: a ceiling division, the max_windows cap dropped."""
    ids = {"wikitext2": 64 * 10 + 63, "c4": 64 * 3}
    whole = _smoke(tmp_path, eval=_eval(max_windows=None))
    assert set_windows(whole, ids) == {"wikitext2": 10, "c4": 3}
    assert math.isnan(set_windows(whole, {"c4": 64})["wikitext2"])
    assert set_windows(_smoke(tmp_path), ids) == {"wikitext2": 8, "c4": 3}  # smoke: max_windows 8


def test_a_partial_batch_of_windows_costs_a_whole_forward(tmp_path):
    """9 + 8 windows in batches of 8 are 3 forwards (0.5 s each) per cell, not 2. Kills: floor for ceiling in
    `ppl_lines`' batch count."""
    recipe = _smoke(tmp_path)  # 7 cells: 3 base + 4 Absmax, eval.batch_size 16 capped at max_windows 8
    found = [Measured(n, "fp16", 1, 0.0, 0, 0.5, None, windows={"wikitext2": 9, "c4": 8})
             for n in ("fp16", "bitnet_b158", "bitnet_b1")]
    lines, seconds = ppl_lines(recipe, found)
    assert seconds == [1.5] * 7 and "1.5 s per cell (slowest)" in lines[0]


def test_a_cell_without_an_a_granularity_field_quantizes_activations_per_token():
    """GPTQ's and QuIP's activation quantizers are per token (their configs have no a_granularity). Kills: the
    default of `act_key` as "tensor"."""
    from ptq_bench.cells import Cell
    from ptq_bench.quant.configs import GPTQConfig, QuIPConfig

    assert act_key(Cell("m", "gptq", GPTQConfig(a_bits=8))) == (8, "token")
    assert act_key(Cell("m", "quip", QuIPConfig(a_bits=4))) == (4, "token")
    assert act_key(Cell("m", "gptq", GPTQConfig())) is None


@pytest.mark.parametrize("limit, built", [(6, [6, 4, 6]), (3, [3, 3])])
def test_zero_shot_samples_are_capped_at_the_recipes_limit(monkeypatch, limit, built):
    """The timing samples are SAMPLE_DOCS and 3 x SAMPLE_DOCS documents, never more than the run evaluates;
    at a limit <= SAMPLE_DOCS the two would be the same documents, built (and timed) once. Kills: `min(docs,
    limit)` dropped, and the equal second sample kept."""
    from types import SimpleNamespace

    from ptq_bench import estimate_zero_shot

    asked: list[int | None] = []
    zs = estimate_zero_shot.ZeroShot(SimpleNamespace(eval=SimpleNamespace(limit=limit, backend="fast")), None,
                                     prep=SimpleNamespace(add=lambda *a: None))
    monkeypatch.setattr(zs, "_suite", lambda _tok, limit: asked.append(limit) or limit)
    monkeypatch.setattr(zs, "_positions", lambda suite: {"piqa": (suite, 0)})
    zs._tasks(object())
    assert asked == built


def test_a_timed_models_activation_cells_are_not_said_to_be_projected_at_its_base_rate(tmp_path):
    """Only an offloaded model (its `act` empty: not timed) gets the base-rate note. Kills: the `not m.act`
    condition of `untimed_lines` dropped."""
    recipe = _smoke(tmp_path, quantize=[{"method": "absmax", "w_bits": 8, "a_bits": 8}])
    found = [Measured(n, "fp16", 1, 0.0, 0, 0.5, None, windows={"wikitext2": 8, "c4": 8})
             for n in ("fp16", "bitnet_b158", "bitnet_b1")]
    assert [x.split(":")[0] for x in untimed_lines(recipe, found)] == ["fp16"]
    found[0].act = {(8, "token"): Rates(0.5, 8)}
    assert untimed_lines(recipe, found) == []


@pytest.mark.parametrize("limit, docs, said", [(None, (4, 12), "timed on 4 and 12 per task"),
                                               (8, (4, 8), "timed on 4 and 8 per task"),
                                               (3, (3,), "timed on 3 per task")])
def test_the_zero_shot_line_names_the_documents_it_timed(tmp_path, limit, docs, said):
    """The line said "timed on 4 and 12" whatever the limit, where the samples are capped at it (4 and 8 at
    smoke's limit 8; one size at a limit <= 4)."""
    from ptq_bench.estimate import _zero_shot_lines
    from ptq_bench.estimate_zero_shot import sample_docs

    assert sample_docs(limit) == docs
    recipe = _smoke(tmp_path, eval={**_eval(), "limit": limit})
    found = [Measured(n, "fp16", 1, 0.0, 0, 0.5, None, zero_shot_s={t: 1.0 for t in recipe.eval.tasks})
             for n in ("fp16", "bitnet_b158", "bitnet_b1")]
    assert said in _zero_shot_lines(recipe, found)[0][0]
