"""benchmarks/gptq_envelope.py: the changes it reruns our GPTQ under are rounding-level (the same Hessian to
float32's precision, weights moved by ~1e-6), each reaches the run it is meant for, and the shipped sum is restored."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from bench_module import bench_module
from quant_fixtures import tiny_llama

from ptq_bench.quant.calibrate import decoder_layers
from ptq_bench.quant.statistics import Hessian


def _hessian(x: torch.Tensor, batches: int = 16) -> torch.Tensor:
    h = Hessian(x.shape[-1])
    for part in x.chunk(batches):
        h.add(part)
    return h.H


def test_each_sum_is_the_shipped_hessian_to_float32_precision(monkeypatch):
    env = bench_module("gptq_envelope", monkeypatch)
    x = torch.randn(4096, 48, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 10, 48)
    exact = (2 / x.shape[0]) * (x.double().T @ x.double())
    shipped_add, shipped = Hessian.add, _hessian(x)
    for label, add in env.HESSIAN_SUMS.items():
        with env.hessian_summed(add):
            h = _hessian(x)
        rel = float((h.double() - exact).abs().max() / exact.abs().max())
        assert h.dtype == torch.float32 and rel < 1e-6, (label, rel)  # the Hessian, to float32's precision
        assert not torch.equal(h, shipped), label  # other roundings than the shipped sum's
    assert Hessian.add is shipped_add and torch.equal(_hessian(x), shipped)  # restored


def test_perturbed_moves_only_a_copy_s_block_parameters_by_about_1e_6(monkeypatch):
    env = bench_module("gptq_envelope", monkeypatch)
    fp = tiny_llama()
    before = {k: v.clone() for k, v in fp.state_dict().items()}
    out = env.perturbed(fp)
    assert all(torch.equal(v, before[k]) for k, v in fp.state_dict().items())  # the original untouched
    blocks = {f"model.layers.{i}.{n}" for i, layer in enumerate(decoder_layers(out)) for n, _ in layer.named_parameters()}
    moved = {k for k, v in out.state_dict().items() if not torch.equal(v, before[k])}
    assert blocks and moved == blocks
    for k in blocks:
        rel = float(((out.state_dict()[k] - before[k]) / before[k]).abs().max())
        assert 1e-7 < rel < 1e-5, (k, rel)


def test_perturbed_draws_what_the_smoothquant_script_drew(monkeypatch):
    """smoothquant_vs_llmcompressor.py had its own copy, matching `.layers.` in parameter names; it now imports
    this one, and its noise rows keep their figures only if the draws are the same, tensor for tensor."""
    env = bench_module("gptq_envelope", monkeypatch)
    fp = tiny_llama()
    old = copy.deepcopy(fp)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in old.named_parameters():
            if ".layers." in name:
                t.mul_(1 + 1e-6 * torch.randn(t.shape, generator=gen))
    new = env.perturbed(fp, 3)
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())


def test_each_rerun_quantizes_under_its_own_change(monkeypatch):
    env = bench_module("gptq_envelope", monkeypatch)
    fp, seen = tiny_llama(), []

    def quantize(model):
        seen.append((Hessian.add, model))
        return len(seen)

    found = env.envelope(quantize, lambda m: 50.0 + m, fp)
    assert list(found.values()) == [51.0, 52.0, 53.0]
    assert [add for add, _ in seen[:2]] == list(env.HESSIAN_SUMS.values()) and seen[0][1] is None
    add, noisy = seen[2]
    assert add is not env.HESSIAN_SUMS["float64"] and noisy is not fp
    assert not torch.equal(noisy.model.layers[0].mlp.up_proj.weight, fp.model.layers[0].mlp.up_proj.weight)


def test_the_line_says_whether_gptqmodel_falls_inside_the_range(monkeypatch):
    env = bench_module("gptq_envelope", monkeypatch)
    found = {"summed as GPTQModel": 55.43, "float64": 59.36, "weights x (1 + 1e-6 N(0,1))": 55.80}
    line = env.envelope_line(4, 58.80, 55.26, found)
    assert "with the shipped run 55.43..59.36 (7.1%)" in line and "GPTQModel's 55.26 is outside" in line, line
    assert "is inside" in env.envelope_line(4, 58.80, 56.0, found)


def test_the_paired_line_compares_both_sides_means_and_spreads_over_the_same_runs(monkeypatch):
    env = bench_module("gptq_envelope", monkeypatch)
    line = env.paired_line(4, [58.0, 60.0, 56.0, 58.0], [56.0, 57.0, 55.0, 56.0])
    assert "on the same 4 FP weights (shipped, then x (1 + 1e-6 N(0,1)) seeds 0..2)" in line, line
    assert "ours 58.0000, 60.0000, 56.0000, 58.0000; GPTQModel 56.0000, 57.0000, 55.0000, 56.0000" in line, line
    # means 58 / 56; sample sd 1.633 (2.8% of 58) and 0.8165 (1.5% of 56); ours above in all four
    assert "means 58.00 / 56.00 = 1.0357, sd within the seed ours 2.8%, GPTQModel 1.5%; ours above in 4 of 4" in line
    assert "ours above in 1 of 2" in env.paired_line(4, [57.0, 56.0], [56.0, 56.0])  # a tie is not above
    assert "sd within the seed ours 0.0%" in env.paired_line(4, [57.0], [56.0])


def test_both_sides_quantize_the_same_perturbed_weights(monkeypatch):
    """`--perturb`: ours gets a perturbed copy in memory, GPTQModel (stood in for here) the same weights through a
    float32 checkpoint in a temporary folder, removed afterwards; its solved weights are scored on that copy."""
    from transformers import AutoModelForCausalLM

    cmp = bench_module("gptq_vs_gptqmodel", monkeypatch)
    fp, seen = tiny_llama(), {}
    up = "model.layers.0.mlp.up_proj"

    def ours(_model_dir, _bits, _args, _calib, model=None):
        seen["ours"] = copy.deepcopy(model.state_dict())
        return model, 0.0

    def theirs(model_dir, _bits, _args, _calib):
        seen["dir"], seen["theirs"] = model_dir, AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
        return {"solved": {up: torch.zeros_like(fp.model.layers[0].mlp.up_proj.weight)}}

    class Tok:
        def save_pretrained(self, folder):
            Path(folder, "tokenizer.json").write_text("{}")

    monkeypatch.setattr(cmp, "quantize_ours", ours)
    monkeypatch.setattr(cmp, "quantize_theirs", theirs)
    scored = []
    got = cmp.perturbed_pair("unused", Tok(), fp, 4, argparse.Namespace(verbose=False), None, 1,
                             lambda m: scored.append(copy.deepcopy(m.state_dict())) or len(scored))
    assert got == (1, 2) and not Path(seen["dir"]).exists()
    want = bench_module("gptq_envelope", monkeypatch).perturbed(fp, 1).state_dict()
    assert not torch.equal(want[f"{up}.weight"], fp.state_dict()[f"{up}.weight"])
    for name, tensor in want.items():
        assert torch.equal(seen["ours"][name], tensor) and torch.equal(seen["theirs"][name], tensor), name
        solved = torch.zeros_like(tensor) if name == f"{up}.weight" else tensor
        assert torch.equal(scored[1][name], solved), name


def test_the_matched_check_counts_bit_equal_weights_under_gptqmodel_s_summation(monkeypatch):
    """Ours is rerun with GPTQModel's Hessian summation in force, and the line counts bit-equal weights overall and
    in the least block (here: one row of 64 in block 1's up_proj differs)."""
    cmp = bench_module("gptq_vs_gptqmodel", monkeypatch)
    fp, seen = tiny_llama(), []

    def ours(_model_dir, _bits, _args, _calib, model=None):
        seen.append(Hessian.add)
        return copy.deepcopy(fp), 0.0

    monkeypatch.setattr(cmp, "quantize_ours", ours)
    solved = {n: m.weight.detach().clone() for n, m in fp.named_modules()
              if isinstance(m, torch.nn.Linear) and ".layers." in n}
    solved["model.layers.1.mlp.up_proj"][0] += 1
    block = sum(w.numel() for n, w in solved.items() if ".layers.1." in n)
    line, _ = cmp.matched_check("unused", 4, None, None, {"solved": solved}, 12.5, lambda m: 12.25)
    assert seen == [cmp.HESSIAN_SUMS["summed as GPTQModel"]] and Hessian.add is not seen[0]
    overall, least = 100 * (1 - 64 / (2 * block)), 100 * (1 - 64 / block)
    assert (f"{overall:.2f}% of weights bit-equal to GPTQModel's (64 of {2 * block} differ; least block "
            f"{least:.2f}%)") in line, line
    assert "ppl 12.2500 against its 12.5000" in line and overall != least
