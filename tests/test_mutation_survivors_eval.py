"""Mutation-audit additions (eval, report, resume, SmoothQuant / QuIP): each test pins a behaviour that a
planted bug changed while the rest of the suite still passed. Named after what it guards; the mutant it
kills is in its docstring."""

from __future__ import annotations

import copy
import csv
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from quant_fixtures import add_outlier_channels, calib_tokens, quantized_copy, tiny_llama
from report_rows import md_cells, row, run_dir

from ptq_bench.errors import PtqBenchError
from ptq_bench.eval.encoder import check_fits
from ptq_bench.eval.harness import FILE_ANSWERS, TaskSuite, task_config
from ptq_bench.quant.apply import hessian_stat, quantize_model
from ptq_bench.quant.calibrate import decoder_layers
from ptq_bench.quant.gptq import GPTQConfig, gptq_solver
from ptq_bench.quant.smoothquant import smoothing_scales
from ptq_bench.report import render
from ptq_bench.report.tables import limit_suffix

DATA = Path(os.environ.get("PTQ_BENCH_DATA", Path(__file__).resolve().parents[1] / "../shared/data")).resolve()
needs_data = pytest.mark.skipif(not (DATA / "storycloze").is_dir(), reason=f"no data folder at {DATA}")


# ----------------------------------------------------------------------------- harness and encoder


@needs_data
def test_only_a_test_only_task_takes_its_few_shot_examples_from_the_test_split():
    """StoryCloze has a validation split: lm-eval draws its few-shot examples there, never from the test split it
    scores. Kills `if set(files) == {"test"}` as `if "test" in files` (StoryCloze's 2-shot examples drawn from
    the documents it evaluates)."""
    assert "fewshot_split" not in task_config("storycloze", DATA)
    assert "fewshot_split" not in task_config("hellaswag", DATA)
    assert task_config("arc_easy", DATA)["fewshot_split"] == "test"


def test_a_continuation_of_exactly_the_models_length_is_scored():
    """HFLM asserts len(continuation) <= max_length: a continuation of exactly max_length tokens is scored (by
    left truncation of its context), one token more is refused. Kills `len(cont) > max_length` as `>=`."""
    req = SimpleNamespace(task_name="t", doc_id=0)
    check_fits([req], [([1, 2, 3], [4] * 8)], max_length=8)
    with pytest.raises(PtqBenchError, match="continuation of 9 tokens exceeds the model's max length 8"):
        check_fits([req], [([1, 2, 3], [4] * 9)], max_length=8)


def test_an_openbookqa_key_with_a_leading_space_is_an_answer():
    """lm-eval's OpenBookQA target is `choices.label.index(answerKey.lstrip())`: " A" is choice A, so the data
    check must accept it. Kills the check without `.lstrip()` (a valid file refused)."""
    check = FILE_ANSWERS["openbookqa/test.jsonl"]
    doc = {"choices": {"label": ["A", "B"], "text": ["x", "y"]}}
    assert check({**doc, "answerKey": " A"}) and check({**doc, "answerKey": "B"})
    assert not check({**doc, "answerKey": "C"})


@needs_data
def test_evaluate_scores_only_the_tasks_it_is_given():
    """`evaluate(model, only=...)` (an entry's `tasks:`) scores those tasks and no other: the row names no
    metric of a task its entry left out. Kills `names = [n ... if only is None or n in only]` as every task."""
    from test_eval_harness import make_model, make_tokenizer

    tok = make_tokenizer(add_bos=False)
    suite = TaskSuite(["piqa", "boolq"], DATA, tok, limit=2, batch_size=4)
    got = suite.evaluate(make_model(len(tok)), progress=False, only=("piqa",))
    assert got and {k.split("/")[1] for k in got} == {"piqa"} and set(suite.last_responses) == {"piqa"}


# ----------------------------------------------------------------------------- report


def _shots(r: dict[str, Any], n: int) -> dict[str, Any]:
    """A report_rows row measured n-shot."""
    r["metrics"] = {k.replace("/0shot/", f"/{n}shot/"): v for k, v in r["metrics"].items()}
    r["protocol"] = {**r["protocol"], "num_fewshot": n}
    return r


def test_a_few_shot_runs_column_keys_name_its_shots(tmp_path):
    """A 2-shot run's `WG` column is `wsc273/2shot/acc`: its notes and csv headers said `0shot` (the papers'
    protocol) for numbers that are not. Kills `n = f"{shots.pop()}shot" if len(shots) == 1 ...` as `"0shot"`."""
    accs = [("wsc273", "acc", 0.6), ("winogrande", "acc", 0.5), ("hellaswag", "acc_norm", 0.3), ("storycloze", "acc", 0.6)]
    rows = [_shots(row("fp16", "fp16", "none", 16, 16, 20.0, accs), 2),
            _shots(row("fp16", "fp16", "absmax", 8, 8, 21.0, accs), 2)]
    d = run_dir(tmp_path, rows, layout="bitnet_table3")
    render(d)
    md = (d / "paper_table.md").read_text(encoding="utf-8")
    assert "`WG` = `wsc273/2shot/acc/limit10`" in md and "0shot" not in md
    head = next(csv.reader(open(d / "paper_table.csv", encoding="utf-8")))
    assert "WGe [winogrande/2shot/acc/limit10]" in head


def test_rows_that_ran_no_task_name_no_limit():
    """A run of perplexity only has no document limit to name (`""`), not `/limit<mixed>`. Kills
    `if limits <= {None}` as `if limits == {None}` (the empty set of limits read as a mix)."""
    assert limit_suffix([row("fp16", "fp16", "none", 16, 16, 20.0, [])]) == ""
    assert limit_suffix([row("fp16", "fp16", "none", 16, 16, 20.0, [("piqa", "acc", 0.5)])]) == "/limit10"


def _seed_line(md: str, method: str) -> dict[str, str]:
    lines = [md_cells(ln) for ln in md.splitlines() if ln.startswith("|")]
    head = lines[0]
    return dict(zip(head, next(cells for cells in lines if method in cells)))


def test_a_seed_that_measured_zero_is_pooled(tmp_path):
    """An accuracy of 0 on one calibration seed is a measurement: the spread over seeds 0.0, 50, 100 is
    50.00 ± 50.00 over 3 seeds, not 75.00 over the two others. Kills `pool_measured` keeping `if v` for
    `if v is not None`."""
    rows = [row("m", "fp16", "none", 16, 16, 20.0, [("piqa", "acc", 0.5)])]
    for seed, acc in ((0, 0.0), (1, 0.5), (2, 1.0)):
        rows.append({**row("m", "fp16", "gptq", 4, 16, 30.0 + seed, [("piqa", "acc", acc)]), "calib_seed": seed})
    d = run_dir(tmp_path, rows)
    render(d)
    cells = _seed_line((d / "table_seeds.md").read_text(encoding="utf-8"), "gptq")
    assert cells["piqa/0shot/acc"] == "50.00 ± 50.00" and cells["n"] == "3"


def test_the_stability_table_shows_trained_models_only(tmp_path):
    """A quantized row of a trained model is not a training run: the LR-stability table has one row per trained
    model (its own perplexity), not one more per PTQ cell claiming the model's peak LR and final loss beside a
    quantized perplexity. Kills the table's row filter without `r.get("method") == "none"`."""
    curve = {"model": "fp", "kind": "fp16", "diverged": False, "schedule": {"lr": 1e-3},
             "curve": [{"step": s, "tokens": 512 * s, "loss": 9.0 - s} for s in range(1, 5)]}
    rows = [row("fp", "fp16", "none", 16, 16, 20.0, []), row("fp", "fp16", "absmax", 4, 16, 99.0, [])]
    d = run_dir(tmp_path, rows, layout="lr_stability", curves=[curve])
    render(d)
    body = list(csv.reader(open(d / "paper_table.csv", encoding="utf-8")))[1:]
    assert len(body) == 1 and body[0][-1] == "20.0", body


# ----------------------------------------------------------------------------- SmoothQuant


def test_smoothquant_takes_every_blocks_activation_maxima_from_the_float_model():
    """As the reference (`calibration.get_act_scales` on the float model), the last block's smoothing scales
    come from the float model's activations, not from those its quantized earlier blocks (W4A4 here) produce:
    its norm is the float norm / s(float maxima). Kills `sequential=False` as `True` in `quantize_smoothquant`."""
    model, calib = tiny_llama(), calib_tokens(8, 32)
    add_outlier_channels(model)
    last = decoder_layers(model)[-1]
    seen: list[torch.Tensor] = []
    hook = last.input_layernorm.register_forward_hook(lambda _m, _i, out: seen.append(out.abs().amax(dim=(0, 1))))
    with torch.no_grad():
        model(calib)
    hook.remove()
    attn = last.self_attn
    s = smoothing_scales(seen[0], [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], 0.5)
    q, _ = quantized_copy(model, "smoothquant", calib, w_bits=4, a_bits=4)
    torch.testing.assert_close(decoder_layers(q)[-1].input_layernorm.weight, last.input_layernorm.weight / s,
                               rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the per-linear glue


def test_a_stacked_solves_loss_is_counted_once():
    """GPTQ solves q/k/v as one stacked matrix; its loss (the sum over its rows) goes into the row's
    `quant.details.loss_sum` once, so the sum equals the one-linear-at-a-time solves'. Kills `solve_stacked`
    handing the stacked loss to every linear of the stack (loss_sum counting q/k/v's loss three times)."""
    base, calib = tiny_llama(), calib_tokens(8, 32)
    cfg = GPTQConfig(w_bits=3, group_size=32)
    sums = {stack: quantize_model(copy.deepcopy(base), gptq_solver(cfg), cfg.a_bits, calib=calib,
                                  make_stat=hessian_stat, stack_shared=stack).details["loss_sum"]
            for stack in (True, False)}
    assert sums[True] == pytest.approx(sums[False], rel=1e-3) and sums[True] > 0
