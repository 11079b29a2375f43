"""The benchmark scripts measure both sides alike and report agreement over all the work (eval_speed.py's
timed rounds and what its FastLM does inside them: fakes stand in for TaskSuite, no task is run), and their exit
statuses mean what benchmarks/README.md says."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from bench_module import bench_module


class FakeSuite:
    """TaskSuite's surface that eval_speed.bench uses: per backend a scripted list of evaluate() seconds; FastLM's
    suite holds a pre-filled encoder as TaskSuite's does, and each call records whether its LM's encoder was empty."""

    seconds = {"hflm": [1.0, 5.0, 6.0], "fast": [0.5, 3.0, 2.0]}

    def __init__(self, tasks, data, tok, limit=None, backend="hflm", batch_size=32, fast_mode="auto") -> None:
        from ptq_bench.eval.encoder import RequestEncoder

        self.backend, self.tokenizer, self.calls, self.fresh = backend, tok, 0, []
        self.encoder = None
        if backend == "fast":
            self.encoder = RequestEncoder(tok)
            self.encoder._pairs[("ctx", " cont")] = ([1], [2])  # as TaskSuite's encode_instances leaves it
        self.n_requests, self.last_path = 1, backend

    def make_lm(self, model, progress: bool = True):
        return SimpleNamespace(encoder=self.encoder)

    def evaluate(self, model, progress: bool = True) -> dict:
        import torch

        lm = self.make_lm(model, progress)
        with torch.no_grad():
            model(torch.tensor([[1, 2]]))  # for eval_speed's work counter
        self.fresh.append(lm.encoder is None or not lm.encoder._pairs)
        self.last_seconds = self.seconds[self.backend][self.calls]
        self.calls += 1
        self.last_responses = {"piqa": [(-1.0, True)]}
        return {"lm_eval/piqa/0shot/acc": 1.0}


def _bench(monkeypatch, repeats: int = 2) -> tuple[dict, dict]:
    import ptq_bench.eval.harness as harness

    mod = bench_module("eval_speed", monkeypatch)
    suites: dict = {}

    def make(*a, **k):
        suites[k.get("backend", "hflm")] = FakeSuite(*a, **k)
        return suites[k.get("backend", "hflm")]

    monkeypatch.setattr(harness, "TaskSuite", make)
    args = SimpleNamespace(data=Path("."), batch_size=32, fast_mode="auto", overhead=None, rows=None,
                           repeats=repeats, envelope=False)
    model = mod.tiny_model(64, hidden=16, layers=1, heads=2)
    return mod.bench(["piqa"], 1, model, None, args, pairs=False), suites


def test_eval_speed_best_of_leaves_the_warm_up_out(monkeypatch):
    """'the first call warms up, then the best of --repeats' (benchmarks/README.md): the warm-up round's time
    is not a candidate for the best (it was, so --repeats 1 was a best of two)."""
    res, _ = _bench(monkeypatch)
    assert (res["hflm_s"], res["fast_s"]) == (5.0, 2.0)


def test_eval_speed_repeats_zero_times_the_one_call(monkeypatch):
    res, _ = _bench(monkeypatch, repeats=0)
    assert (res["hflm_s"], res["fast_s"]) == (1.0, 0.5)


def test_eval_speed_fastlm_tokenizes_inside_the_timed_call(monkeypatch):
    """HFLM tokenizes its requests inside evaluate(); FastLM must too, not read them from the encoder that
    TaskSuite filled when it was built (outside the timing)."""
    _, suites = _bench(monkeypatch)
    assert suites["fast"].fresh == [True] * 3 and suites["hflm"].fresh == [True] * 3


def test_max_delta_refuses_unequal_response_lists(monkeypatch):
    """An agreement figure over a truncated list (zip stops at the shorter) would cover a subset of the work."""
    mod = bench_module("eval_speed_report", monkeypatch)
    assert mod.max_delta({"t": [(-1.0, True), (-2.0, False)]}, {"t": [(-1.5, True), (-2.0, True)]}) == (0.5, 1)
    with pytest.raises(ValueError):
        mod.max_delta({"t": [(-1.0, True), (-9.0, False)]}, {"t": [(-1.0, True)]})
    with pytest.raises(KeyError):
        mod.max_delta({"t": [(-1.0, True)], "u": [(-1.0, True)]}, {"t": [(-1.0, True)]})


def test_lm_eval_cli_check_bad_input_exits_2_not_1(tmp_path, monkeypatch, capsys):
    """Exit 1 means 'the two sides differ' (README); a run folder with no `none` row is bad input: exit 2."""
    mod = bench_module("lm_eval_cli_check", monkeypatch)
    with pytest.raises(SystemExit) as exc:
        mod.main(["--recipe-run", str(tmp_path)])
    assert exc.value.code == 2 and "'none' row" in capsys.readouterr().err


def test_gptq_loop_library_way_solves_copies_like_the_reference(monkeypatch):
    """Both ways must leave the block's weights as they were: the timed repeats after the counted call solve the
    same weights, and the library copies a model's linear before its walk (`consume_w` is for its own stacks)."""
    import argparse

    import torch

    mod = bench_module("gptq_loop", monkeypatch)
    a = argparse.Namespace(hidden=64, intermediate=128, heads=4, kv_heads=2, bits=4, group_size=32)
    problem = mod.block_problem(a, "cpu")
    before = {n: m.weight.detach().clone() for n, m in problem[0].items()}
    first = mod.library_way(problem, 4, 32)
    assert all(torch.equal(before[n], m.weight) for n, m in problem[0].items())
    assert all(torch.equal(x, y) for x, y in zip(first, mod.library_way(problem, 4, 32), strict=True))
    assert all(torch.equal(x, y) for x, y in zip(first, mod.reference_way(problem, 4, 32), strict=True))


def test_calib_memory_inplace_method_seconds_leave_the_backup_out(monkeypatch):
    """`--path inplace` printed 'gptq=.../NNNs' with FloatBlocks' backup (writing every block to disk) inside the
    method's seconds; the other paths time the method alone. The backup now has its own seconds."""
    import time

    import torch
    from tiny_families import tiny_model

    import ptq_bench.quant.apply as apply

    mod = bench_module("calib_memory", monkeypatch)

    class SlowBackup:
        def __init__(self, model, folder) -> None:
            time.sleep(1.0)

        def restore(self, model) -> None:
            pass

    class Quick:
        config_cls = dict

        def apply(self, model, cfg, calib) -> None:
            pass

    monkeypatch.setattr(apply, "FloatBlocks", SlowBackup)
    monkeypatch.setattr(mod, "build_llama", lambda dtype, layers: tiny_model("llama").to(getattr(torch, dtype)))
    monkeypatch.setattr(mod, "method_and_config", lambda name: (Quick(), {}))
    out = mod.run_path("inplace", "float32", 1, 1, 8)
    assert out["phases"]["gptq"]["seconds"] < 0.5 and out["phases"]["backup"]["seconds"] >= 1.0, out["phases"]


def test_gpu_vs_cpu_flags_a_metric_only_one_run_has(monkeypatch, capsys):
    """A row whose accuracy only one device measured printed "–" (read: neither measured it) and exit 0; the
    agreement columns covered the metrics both rows have, silently. It now lists such metrics and exits 1."""
    mod = bench_module("gpu_vs_cpu", monkeypatch)
    row = {"method": "none", "config": {}, "metrics": {"ppl_gptq/wikitext2": 10.0, "lm_eval/piqa/0shot/acc": 0.6}}
    key = ("m", "FP16", None, "{}")
    assert mod.compare({key: row}, {key: row}, ("cpu", "cuda")) == 0
    partial = {**row, "metrics": {"ppl_gptq/wikitext2": 10.0}}
    assert mod.compare({key: row}, {key: partial}, ("cpu", "cuda")) == 1
    assert "lm_eval/piqa/0shot/acc" in capsys.readouterr().out.splitlines()[-1]


def test_eval_speed_exits_1_when_an_exact_model_disagrees(monkeypatch):
    """eval_speed printed its agreement and exited 0 whatever it said: a float model beyond 1e-4 in a
    request's log-likelihood, or with an accuracy moved, is a disagreement (exit 1); a model rounding
    activations in float32 is not held to it."""
    mod = bench_module("eval_speed_report", monkeypatch)
    good = [{"max_abs_dloglik": 6.1e-5, "dacc": 0.0}, {"max_abs_dloglik": 1e-6, "dacc": 0.0}]
    assert mod.verdict(good, exact=True)[1] == 0
    assert mod.verdict(good + [{"max_abs_dloglik": 2e-4, "dacc": 0.0}], exact=True)[1] == 1
    line, status = mod.verdict(good + [{"max_abs_dloglik": 1e-5, "dacc": 2.5}], exact=True)
    assert status == 1 and line.startswith("agreement: NO")
    assert mod.verdict([{"max_abs_dloglik": 3.9, "dacc": 7.5}], exact=False)[1] == 0
