"""The benchmark scripts still run end to end at their smallest size (their figures are read by people, so a
script that crashes after printing half of them would go unnoticed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bench_module import bench_module
from smoke_ref import ROOT


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_eval_speed_runs_tasks_and_wikitext(data_dir):
    """Tasks with their exact ceiling, then wikitext's rolling requests (which have none: this used to crash)."""
    out = _run("eval_speed.py", "--tiny", "--limit", "2", "--repeats", "0", "--tasks", "piqa", "--wikitext-limit", "1",
               "--data", str(data_dir), "--overhead", "8", "--rows", "2")
    assert "tasks: 4 requests" in out and "exact ceiling" in out.split("tasks: ")[1].splitlines()[0]
    sweep = out.split("tasks: ")[1].splitlines()[1:3]
    assert sweep[0].startswith("  FastLM at overhead=8:") and sweep[1].startswith("  FastLM at rows=2:"), out
    assert "wikitext: 1 requests" in out


def test_eval_speed_stand_in_keeps_the_vocabulary(data_dir):
    """--stand-in times a one-layer, 64-wide Llama with the model's vocabulary in the model's place."""
    out = _run("eval_speed.py", "--tiny", "--stand-in", "--limit", "2", "--repeats", "0", "--tasks", "piqa",
               "--wikitext-limit", "0", "--data", str(data_dir))
    head = out.split("model: ")[1].splitlines()[0]
    assert "(one-layer stand-in)" in head and "vocab 4096" in head, head
    assert int(head.split(" params")[0].rsplit(" ", 1)[-1].replace(",", "")) < 2 * 4096 * 64 + 10**5, head
    assert "tasks: 4 requests" in out


def test_gptq_loop_counts_fewer_kernels_and_equal_weights():
    out = _run("gptq_loop.py", "--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2",
               "--layers", "2", "--group-size", "32", "--repeats", "1")
    last = out.strip().splitlines()[-1]
    assert "weights bit for bit equal: yes" in last and "columns 1.33x" in last, out


def test_bitlinear_float_path_caches_the_weight_with_equal_logits():
    out = _run("bitlinear_kernel.py", "--tiny", "--float-path", "--repeats", "1", "--batch", "2", "--seq", "16")
    lines = [ln for ln in out.splitlines() if "re-quantizing" in ln]
    assert len(lines) == 2 and all("logits equal: True" in ln for ln in lines), out
    assert all(float(ln.split("kernels ")[-1].split("x")[0]) > 1.2 for ln in lines), out


def test_gpu_vs_cpu_prints_a_dash_where_neither_row_measured(capsys, monkeypatch):
    """The committed CPU and CUDA SmolLM2 rows: GPTQ W3 ran no zero-shot task on either device, and the base
    has no KLD; that is "–", not a difference of 0 (which the CUDA results' README once printed)."""
    mod = bench_module("gpu_vs_cpu", monkeypatch)
    cuda = mod.keyed(ROOT / "results" / "smollm2_ptq_cuda_bf16")
    cpu = {k: v for k, v in mod.keyed(ROOT / "results" / "smollm2_ptq").items() if k in cuda}
    assert mod.compare(cpu, cuda, ("cpu", "cuda")) == 0
    rows = capsys.readouterr().out.splitlines()[1:-1]
    w3 = [ln.split()[-3:] for ln in rows if "W3" in ln]
    assert len(w3) == 3 and all(c[-1] == "–" and c[0] != "–" for c in w3), w3
    (base,) = [ln.split()[-3:] for ln in rows if " none " in f" {ln} " or "FP16" in ln or "W16A16" in ln]
    assert base[1] == "–" and base[2] != "–", base


def test_quip_vs_reference_without_a_checkout_says_what_to_clone(monkeypatch, tmp_path):
    """The reference's code is not in this repository: without a checkout, one line saying where to get it."""
    monkeypatch.delenv("QUIP_REFERENCE", raising=False)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quip_vs_reference.py")], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env={k: v for k, v in os.environ.items() if k != "QUIP_REFERENCE"})
    assert proc.returncode == 2 and "git clone https://github.com/Cornell-RelaxML/QuIP" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quip_vs_reference.py"), "--reference",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and str(tmp_path) in proc.stderr, proc.stderr


def test_random_checkpoint_writes_a_loadable_checkpoint_with_its_tokenizer(data_dir, tmp_path):
    """random_checkpoint.py: the checkpoint the GPTQModel comparisons ran on, loadable as a source."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "qwen3_next"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "random_checkpoint.py"), "qwen3_next", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PTQ_BENCH_DATA": str(data_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen3_next" and model.config.layer_types[0] == "linear_attention"
    assert len(AutoTokenizer.from_pretrained(str(out))) == model.config.vocab_size == 384


def test_matmul_precision_prints_every_way_and_pieces_add_accuracy():
    """Each bfloat16 piece pair added brings the emulated multiply closer to float64 (a wrong split would not)."""
    out = _run("matmul_precision.py", "--shape", "64", "32", "48", "--repeats", "1")
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[2:]}
    assert list(rows) == ["fp32", "bf16", "bf16x1", "bf16x3", "bf16x6", "split", "int8"], out
    err = {name: float(rows[name][-1]) for name in ("bf16x1", "bf16x3", "bf16x6")}
    assert err["bf16x1"] > 10 * err["bf16x3"] > 10 * err["bf16x6"], out


# Bad input: a script exits 2 with one line naming the problem, before any work (nothing on stdout), never a
# traceback and never 1, which several scripts use for "the two sides disagree" (benchmarks/README.md).
# `{tmp}` is the test's tmp_path: CKPT a folder with a config.json, REF a QuIP checkout of empty modules.
REFUSAL_S = 120  # a refusal takes seconds (interpreter and imports); the limit only keeps a regression finite
BAD_INPUT = [  # (script, arguments, environment, what the error line must name)
    ("gptq_vs_gptqmodel.py", ["--model", "/nonexistent/dir"], {}, "folder not found: /nonexistent/dir"),
    ("gptq_vs_gptqmodel.py", ["--model", "{tmp}/CKPT", "--data-dir", "/nonexistent"], {}, "--data-dir: folder not found"),
    ("smoothquant_vs_llmcompressor.py", ["--source", "/nonexistent"], {}, "'/nonexistent' does not exist"),
    ("smoothquant_vs_llmcompressor.py", ["--data-dir", "/nonexistent"], {}, "--data-dir: folder not found"),
    ("gpu_vs_cpu.py", ["/nonexistent.yaml", "--devices", "cpu", "cpu", "--out", "{tmp}/out"], {},
     "file not found: /nonexistent.yaml"),
    ("gpu_vs_cpu.py", ["recipes/smoke.yaml", "--devices", "cdua", "cpu", "--out", "{tmp}/out"], {},
     "unknown device 'cdua'"),
    ("eval_speed.py", ["--model", "/nonexistent/dir"], {}, "'/nonexistent/dir' does not exist"),
    ("eval_speed.py", ["--tiny", "--tasks", "piqaa"], {}, "unknown task 'piqaa'"),
    ("eval_speed.py", ["--tiny", "--limit", "-3"], {}, "--limit: must be a finite number of at least 0, got -3"),
    ("eval_speed.py", ["--tiny", "--data", "/nonexistent"], {}, "--data: folder not found: /nonexistent"),
    ("forward_profile.py", ["--model", "/nonexistent"], {}, "--model: folder not found: /nonexistent"),
    ("bitlinear_kernel.py", ["--model", "/nonexistent"], {}, "--model: folder not found: /nonexistent"),
    ("calib_runner.py", ["--gptq", "/nonexistent"], {}, "--gptq: folder not found: /nonexistent"),
    ("smollm2_probe.py", ["--windows", "0"], {}, "--windows: must be a finite number of at least 1, got 0"),
    ("matmul_precision.py", ["--shape", "0", "32", "48"], {}, "--shape: must be a finite number of at least 1, got 0"),
    ("gptq_loop.py", ["--heads", "0"], {}, "--heads: must be a finite number of at least 1, got 0"),
    ("gptq_loop.py", ["--hidden", "64", "--intermediate", "64", "--heads", "5", "--repeats", "1"], {},
     "--heads must divide --hidden"),
    ("recipe_fuzz.py", ["-n", "-1"], {}, "-n: must be a finite number of at least 1, got -1"),
    ("lm_eval_cli_check.py", ["--model", "/nonexistent/dir"], {}, "--model: folder not found: /nonexistent/dir"),
    ("lm_eval_cli_check.py", ["--recipe-run", "/nonexistent/run"], {}, "--recipe-run: folder not found: /nonexistent/run"),
    ("offload_run.py", ["--preset", "smollm2", "--modes", "copy"], {"PTQ_BENCH_DATA": "/nonexistent"},
     "$PTQ_BENCH_DATA: folder not found: /nonexistent"),
    ("random_checkpoint.py", ["mixtral", "{tmp}/out"], {"PTQ_BENCH_DATA": "/nonexistent"},
     "$PTQ_BENCH_DATA: folder not found: /nonexistent"),
    ("quip_vs_reference.py", ["--reference", "{tmp}/REF", "--threads", "0"], {},
     "--threads: must be a finite number of at least 1, got 0"),
]


@pytest.mark.parametrize(("script", "args", "env", "names"), BAD_INPUT,
                         ids=[f"{s.removesuffix('.py')}:{' '.join(a)}" for s, a, _, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(script, args, env, names, tmp_path):
    (tmp_path / "CKPT").mkdir()
    (tmp_path / "CKPT" / "config.json").write_text("{}")
    (tmp_path / "REF").mkdir()
    for name in ("quant", "method", "vector_balance", "bal"):
        (tmp_path / "REF" / f"{name}.py").write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *(a.format(tmp=tmp_path) for a in args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=REFUSAL_S, env={**os.environ, **env})
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    assert proc.returncode == 2 and names in last and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout == "" and not (tmp_path / "out").exists(), proc.stdout[-2000:]  # no work began, nothing written


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="checks the refusal of cuda on a machine without CUDA")
def test_gpu_vs_cpu_refuses_cuda_without_cuda_before_either_run(tmp_path):
    """It used to run the whole recipe on the CPU first, then fail on cuda with exit 1 ("the runs differ")."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_vs_cpu.py"), "recipes/smoke.yaml", "--devices",
                           "cuda", "cpu", "--out", str(tmp_path / "runs")], capture_output=True, text=True, cwd=ROOT,
                          timeout=REFUSAL_S)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    assert proc.returncode == 2 and "no cuda device is available" in last, proc.stderr[-2000:]
    assert proc.stdout == "" and not (tmp_path / "runs").exists()
