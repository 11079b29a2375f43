"""`ptq-bench estimate`: it times the real training step of every trained model, a perplexity batch and a
zero-shot sample of every model, projects the recipe (each cell over its own tasks), writes nothing, and
refuses bad arguments, bad recipes and a source without a tokenizer with exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from ptq_bench.cli import main
from ptq_bench.estimate import Measured, report
from ptq_bench.estimate_sets import kld_part
from ptq_bench.recipe import expand_cells, load_recipe

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"


def _recipe(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    raw.update(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), **changes)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_estimate_times_the_training_step_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import ptq_bench.models.train as train_mod

    calls = []
    real = train_mod.update
    monkeypatch.setattr(train_mod, "update", lambda *a, **k: (calls.append(1), real(*a, **k)))
    path = _recipe(tmp_path)
    before = set(tmp_path.rglob("*"))
    assert main(["estimate", str(path), "--steps", "2", "--warmup", "1", "--hours", "1", "--device", "cpu",
                 "--executor", "ray"]) == 0
    out = capsys.readouterr().out
    assert len(calls) == 3 * (2 + 1)  # three trained models, warm-up + timed optimizer steps each
    steps = 40960 // (64 * 16)
    for name in ("fp16", "bitnet_b158", "bitnet_b1"):
        line = next(x for x in out.splitlines() if x.strip().startswith(name + " "))
        assert f"x {steps} steps" in line and "s/step" in line
    assert "train.tokens that fit 1 h of training:" in out
    assert "windows wikitext2 8, c4 8:" in out  # the smoke recipe's max_windows and sets
    # 2 x 8 x 63 x (512 x 4 + 8) B
    assert "KLD references (float32 base log-probs and top-1 ids" in out and ": 0.00207 GB;" in out
    assert "per PTQ cell besides its forwards" in out and "for 4 PTQ cells" in out
    assert "zero-shot (fast, 4 tasks, 8 documents each; timed on 4 and 8 per task, best of 2)" in out
    assert out.count("every task once:") == 3
    assert "calibration tokens): " in out and "for 4 PTQ cells" in out  # smoke: absmax W8/4/2/1 on fp16
    assert sum(" per cell" in x and x.strip().startswith("fp16 ") for x in out.splitlines()) == 4
    # the run's preparation (smoke: 11 s of tokenizing its 12.5M-character corpus, most of its run) and a total
    prep = next(x for x in out.splitlines() if x.startswith("preparation"))
    for what in ("tokenizer training", "tokenizing the training corpus", "tokenizing the perplexity sets"):
        assert what in prep
    assert "calibration" not in prep  # absmax does not calibrate
    total = next(x for x in out.splitlines() if x.startswith("total: ")).split()[1:-1]
    # --executor ray: the Ray projection too, whose one slot is the local total
    ray = next(x for x in out.splitlines() if x.startswith("executor ray, replayed through its dispatch"))
    assert f"): 1 slot {' '.join(total)}, 2 slots " in ray, (total, ray)
    assert set(tmp_path.rglob("*")) == before  # no cache, no run folder


def test_quantization_is_projected_from_two_and_four_blocks(tmp_path, monkeypatch):
    """A cell = fixed part + per-block part x blocks, from timings on the model cut to 2 and 4 blocks;
    calibration seeds are cells of one setting; the model itself keeps its blocks."""
    from tiny_families import tiny_model

    import ptq_bench.estimate as est
    from ptq_bench.quant.calibrate import decoder_layers

    r = load_recipe(_recipe(tmp_path, quantize=[{"method": "absmax", "w_bits": [8, 4]},
                                                {"method": "gptq", "w_bits": 4, "seeds": [0, 1, 2]}]))
    seen = []
    monkeypatch.setattr(est, "_apply_s", lambda m, model, *a: seen.append(len(decoder_layers(model)))
                        or 3.0 + 2.0 * len(decoder_layers(model)))
    model = tiny_model("llama", layers=6)
    out = est._quant_cell_s(r, "fp16", model, 512, "cpu")
    assert len(decoder_layers(model)) == 6 and set(seen) == {2, 4}
    assert out == {"absmax W8A16 channel": (15.0, 1), "absmax W4A16 channel": (15.0, 1),
                   "gptq W4A16 g128": (15.0, 3)}  # exact for a line: 3 + 2 x 6; three seeds, one setting


def _checkpoint(tmp_path: Path, data_dir: Path, tokenizer: bool = True, case: str = "llama") -> Path:
    """A tiny checkpoint folder of a family test case (tests/family_checks.py: a Llama, or a multimodal
    wrapper), with a small BPE tokenizer of its vocabulary when asked."""
    import itertools

    from family_checks import build_case

    from ptq_bench.data import train_documents
    from ptq_bench.tokenizer import train_tokenizer

    tok = train_tokenizer(list(itertools.islice(train_documents(data_dir), 300)), 320)
    folder = tmp_path / "ck"
    build_case(case, len(tok)).save_pretrained(folder)
    if tokenizer:
        tok.save_pretrained(str(folder))
    return folder


def test_loaded_models_get_a_perplexity_forward_only(tmp_path, capsys, data_dir):
    folder = _checkpoint(tmp_path, data_dir)
    path = _recipe(tmp_path, models={"mine": {"kind": "fp16"}, "theirs": {"source": str(folder)}})
    before = set(tmp_path.rglob("*"))
    assert main(["estimate", str(path), "--steps", "1", "--warmup", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.search(r"loaded in \d+\.\d s, not trained", next(x for x in lines if x.strip().startswith("theirs ")))
    assert "x 40 steps" in next(x for x in lines if x.strip().startswith("mine "))
    assert any(x.startswith("training, all 1 trained models") for x in lines)
    assert sum("every task once:" in x for x in lines) == 2  # zero-shot with the source's own tokenizer too
    prep = next(x for x in lines if x.startswith("preparation"))
    assert re.search(r"building the tasks \d+\.\d s", prep), prep  # once per tokenizer: the BPE's, the source's
    assert "loading" not in next(x for x in lines if x.startswith("not projected"))
    assert set(tmp_path.rglob("*")) == before


def test_a_source_without_tokenizer_is_refused_as_run_refuses_it(tmp_path, capsys, data_dir):
    folder = _checkpoint(tmp_path, data_dir, tokenizer=False)
    path = _recipe(tmp_path, models={"theirs": {"source": str(folder)}})
    assert main(["estimate", str(path), "--steps", "1", "--warmup", "0"]) == 2
    assert "holds no tokenizer" in capsys.readouterr().err


def _measured(name: str, step_s: float, steps: int = 100) -> Measured:
    return Measured(name, "fp16", 1_000_000, step_s, steps=steps, ppl_batch_s=0.5, peak_bytes=None,
                    windows={"wikitext2": 8, "c4": 8})


def _smoke_found(fp16_s: float = 1.0, b158_s: float = 0.0, b1_s: float = 1.0) -> list[Measured]:
    """The smoke recipe's three models; a model at 0 s per step is taken as loaded (no training steps)."""
    return [_measured(n, s, 100 if s else 0) for n, s in (("fp16", fp16_s), ("bitnet_b158", b158_s), ("bitnet_b1", b1_s))]


def test_projection_and_fit_arithmetic(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))  # train batch 16 x 64 = 1024 tokens per step
    lines = report(recipe, _smoke_found(1.0, 2.5, 0.0), "cpu", hours=1.0)
    assert "x 100 steps = 1 min 40 s" in lines[1] and "x 100 steps = 4 min 10 s" in lines[2]
    assert "training, all 2 trained models one after another: 5 min 50 s" in lines
    # 3600 s / (3.5 s per 1024-token step across both models) = 1028 whole steps (1028.6)
    assert "train.tokens that fit 1 h of training: 1,052,672" in lines
    # perplexity: 8 windows in one batch of 8 (slowest model 0.5 s), two sets; 7 cells (3 base + 4 Absmax)
    ppl = next(x for x in lines if x.startswith("perplexity:"))
    assert "per batch of 8 x 64" in ppl and "windows wikitext2 8, c4 8: 1.0 s per cell (slowest), 7.0 s for 7 cells" in ppl


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "0"], "--steps: must be a finite number of at least 1, got 0"),
    (["--steps", "two"], "--steps: not an integer: 'two'"),
    (["--warmup", "-1"], "--warmup: must be a finite number of at least 0, got -1"),
    (["--hours", "0"], "--hours: must be a finite number of at least 0.001, got 0"),
    (["--hours", "nan"], "--hours: must be a finite number of at least 0.001, got nan"),
    (["--hours", "inf"], "--hours: must be a finite number of at least 0.001, got inf"),
    (["--device", "tpu"], "--device: invalid choice: 'tpu'"),
])
def test_bad_arguments_exit_2(tmp_path, capsys, argv, needle):
    path = _recipe(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["estimate", str(path), *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_bad_recipe_exit_2_one_line(tmp_path, capsys):
    path = _recipe(tmp_path, trian={"tokens": 1})
    assert main(["estimate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trian" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_exit_2(tmp_path, capsys):
    assert main(["estimate", str(_recipe(tmp_path)), "--device", "cuda"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_hours_with_only_loaded_models_says_so(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    lines = report(recipe, _smoke_found(0.0, 0.0, 0.0), "cpu", hours=2.0)  # every model loaded
    assert "train.tokens: no model of this recipe is trained here" in lines
    assert not any(x.startswith("training, all") for x in lines)


def test_a_recipe_of_sources_trains_no_tokenizer_and_does_not_say_it_does(tmp_path, data_dir):
    """`run` trains no BPE when every model is a `source:`; estimate listed its training as not projected."""
    folder = _checkpoint(tmp_path, data_dir)
    from transformers import AutoTokenizer

    from ptq_bench.estimate_prep import Prep

    prep = Prep(load_recipe(_recipe(tmp_path, models={"theirs": {"source": str(folder)}})), data_dir)
    prep.count(AutoTokenizer.from_pretrained(str(folder)))
    assert set(prep.seconds) == {"tokenizing the perplexity sets"}, prep.seconds  # smoke: absmax, no calibration


def test_zero_shot_projection_follows_each_cells_tasks(tmp_path):
    raw_q = [{"method": "absmax", "w_bits": [8, 4, 2, 1], "a_bits": 16, "tasks": ["hellaswag"]}]
    recipe = load_recipe(_recipe(tmp_path, quantize=raw_q))
    per_task = {"hellaswag": 1.0, "arc_easy": 2.0, "piqa": 3.0, "winogrande": 4.0}
    found = [Measured(n, "fp16", 1, 1.0, 10, 0.5, None, dict(per_task), zero_shot_call_s=0.5)
             for n in ("fp16", "bitnet_b158", "bitnet_b1")]
    line = next(x for x in report(recipe, found, "cpu", None) if x.startswith("zero-shot"))
    # three base cells run all four tasks (10 s each), four Absmax cells of fp16 only hellaswag (1 s each),
    # each cell one evaluate call (0.5 s)
    assert ": 37.5 s for 7 cells" in line


def test_zero_shot_rate_ignores_first_and_slow_calls(monkeypatch):
    """Each sample is timed as the best of its calls after its own warm-up: the 12-document sample's first
    call (new shapes) and one slow call must not set the slope (a single call each made it 9x too steep)."""
    from types import SimpleNamespace

    from ptq_bench import estimate_zero_shot
    from ptq_bench.eval import work

    class Sample:  # 100 units of work at 4 documents, 300 at 12; each call's seconds in order
        def __init__(self, docs: int) -> None:
            self.work = 25 * docs
            self.times = iter([10.0, 1.0, 1.0] if docs == 4 else [10.0, 5.0, 2.0])

        def evaluate(self, _model, progress: bool = True) -> dict:
            self.last_seconds = next(self.times)
            return {}

    recipe = SimpleNamespace(eval=SimpleNamespace(limit=None, backend="fast"))
    zs = estimate_zero_shot.ZeroShot(recipe, None)
    monkeypatch.setattr(zs, "_suite", lambda _tok, limit: Sample(limit or 40))
    monkeypatch.setattr(zs, "_positions", lambda suite: {"piqa": (suite.work, 0)})
    monkeypatch.setattr(work, "model_sizes", lambda _model: (1, 1))
    monkeypatch.setattr(work, "weighted", lambda p, _sizes: p[0])
    fixed, per_task = zs.seconds(None, own_tok=object())
    # the line through (100 units, 1.0 s) and (300, 2.0 s): 0.005 s per unit, 0.5 s per call
    assert per_task == {"piqa": pytest.approx(1000 * 0.005)} and fixed == pytest.approx(0.5)


def test_an_offloaded_source_is_timed_from_disk_block_by_block(tmp_path, capsys, data_dir, monkeypatch):
    """With `offload: true` a run never holds the whole model; estimate loaded it whole (6.06 GB for a
    model whose offloaded run peaked at 1.56 GB). It now opens it as `run` does: every block read from the
    checkpoint while evaluated or quantized, the probes' quantized blocks in a scratch folder it removes."""
    import tempfile

    import ptq_bench.source_load as source_load
    from ptq_bench.models.lazy import CheckpointBlocks

    monkeypatch.setattr(source_load, "load_source", lambda *a, **k: pytest.fail("the whole model was loaded"))
    reads, real = [], CheckpointBlocks.block
    monkeypatch.setattr(CheckpointBlocks, "block", lambda self, i, *a: reads.append(i) or real(self, i, *a))
    folder = _checkpoint(tmp_path, data_dir)
    path = _recipe(tmp_path, models={"theirs": {"source": str(folder)}}, offload=True,
                   quantize=[{"method": "gptq", "w_bits": 4, "group_size": 32}])
    before, scratch = set(tmp_path.rglob("*")), set(Path(tempfile.gettempdir()).glob("ptq-bench-estimate-*"))
    assert main(["estimate", str(path), "--steps", "1", "--warmup", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.search(r"loaded in \d+\.\d s, not trained", next(x for x in lines if x.strip().startswith("theirs ")))
    assert any("every task once:" in x for x in lines)
    assert any(x.strip().startswith("theirs ") and "gptq W4A16 g32" in x and "per cell" in x for x in lines), lines
    assert set(reads) == {0, 1}  # both blocks of the tiny Llama, from its checkpoint
    assert set(tmp_path.rglob("*")) == before  # no cache, no run folder
    assert set(Path(tempfile.gettempdir()).glob("ptq-bench-estimate-*")) == scratch


def test_the_recipes_dtype_is_what_is_timed_after_a_float32_training_step(tmp_path, monkeypatch):
    """`run` trains in float32 and casts the model to the recipe's dtype; estimate timed float32 throughout."""
    import ptq_bench.estimate as est

    seen: dict[str, torch.dtype] = {}
    train, ppl = est._train_step_s, est._ppl_batch_s
    monkeypatch.setattr(est, "_train_step_s", lambda r, n, model, *a: seen.setdefault("train", model.dtype)
                        and train(r, n, model, *a))
    monkeypatch.setattr(est, "_ppl_batch_s", lambda r, probe, *a: seen.setdefault("ppl", probe.model.dtype)
                        and ppl(r, probe, *a))
    path = _recipe(tmp_path, models={"fp16": {"kind": "fp16"}}, dtype="bfloat16", quantize=[])
    assert main(["estimate", str(path), "--steps", "1", "--warmup", "0"]) == 0
    assert seen == {"train": torch.float32, "ppl": torch.bfloat16}


def test_a_probe_copies_its_blocks_and_shares_the_rest():
    """The models cut for the PTQ probes copy only their blocks (methods change nothing else): a deep copy
    of a 1.1B Llama's embeddings and LM head per probe had put an offloaded estimate at 0.80x the model's
    bytes where its run peaks at ~0.45x."""
    from tiny_families import tiny_model

    from ptq_bench.estimate_model import first_blocks

    model = tiny_model("llama", layers=4)
    short = first_blocks(model, 2)
    assert len(short.model.layers) == 2 and len(model.model.layers) == 4
    assert short.model.embed_tokens.weight is model.model.embed_tokens.weight
    assert short.lm_head.weight is model.lm_head.weight and short.model.norm.weight is model.model.norm.weight
    assert short.model.layers[0].self_attn.q_proj.weight is not model.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(short.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)


def test_an_interrupted_estimate_says_so(tmp_path, capsys, monkeypatch):
    """A bare Ctrl-C (no message) printed `ptq-bench: ` and nothing else: the exception object is truthy."""
    import ptq_bench.estimate as est

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(est, "estimate", stop)
    assert main(["estimate", str(_recipe(tmp_path))]) == 130
    assert capsys.readouterr().err.strip() == "ptq-bench: interrupted"


def test_a_probe_whose_random_ids_miss_an_expert_is_not_a_refusal(tmp_path, monkeypatch):
    """The probes calibrate on random ids, the run on real text, which the router sends elsewhere: a probe
    that left an expert without tokens exited 2 where the run of the same recipe succeeded (found by an
    outside audit). That setting is now listed as not projected, the others as before."""
    import math

    from tiny_families import tiny_model

    import ptq_bench.estimate as est
    from ptq_bench.errors import UnreachedLinear
    from ptq_bench.quant.calibrate import decoder_layers

    r = load_recipe(_recipe(tmp_path, quantize=[{"method": "absmax", "w_bits": 8},
                                                {"method": "gptq", "w_bits": 4, "seeds": [0, 1]}]))

    def apply_s(method, model, *a):
        if method.name == "gptq":
            raise UnreachedLinear("block 1 (MixtralDecoderLayer): no calibration input reached mlp.experts.3.w1")
        return 3.0 + 2.0 * len(decoder_layers(model))

    monkeypatch.setattr(est, "_apply_s", apply_s)
    out = est._quant_cell_s(r, "fp16", tiny_model("llama", layers=6), 512, "cpu")
    assert out["absmax W8A16 channel"] == (15.0, 1) and math.isnan(out["gptq W4A16 g128"][0])
    found = [Measured("fp16", "fp16", 1, 1.0, 10, 0.5, None, quant_s=out)]
    lines, per_cell = est._quant_lines(r, found)
    assert lines[0].endswith(": 15.0 s for 1 PTQ cells (2 not projected)"), lines[0]
    # per cell (expand_cells' order): Absmax on fp16 only; the two GPTQ seeds not projected, base cells none
    assert per_cell == [15.0 if (c.model, c.method) == ("fp16", "absmax") else 0.0 for c in expand_cells(r)]
    assert est.UNREACHED in lines[2] and lines[2].endswith("x 2 cells"), lines[2]


@pytest.mark.parametrize("offload", [False, True])
def test_a_multimodal_checkpoint_is_timed_on_its_text_vocabulary(tmp_path, capsys, data_dir, offload):
    """A wrapper's config has no top-level vocab_size (Gemma 4's, Qwen3.5's...): the probe's ids come from its text
    config. `estimate` read model.config.vocab_size, an AttributeError traceback on every multimodal source."""
    folder = _checkpoint(tmp_path, data_dir, case="gemma4")
    path = _recipe(tmp_path, models={"theirs": {"source": str(folder)}}, offload=offload)
    assert main(["estimate", str(path), "--steps", "1", "--warmup", "0"]) == 0, capsys.readouterr().err
    assert re.search(r"loaded in \d+\.\d s, not trained", capsys.readouterr().out)


def test_the_total_counts_every_phase_and_the_preparation(tmp_path):
    """`estimate` printed each phase but no total, and left out the run's preparation: on the smoke recipe
    it projected 5.4 s where the run took 30-50 s, most of it tokenizing the training corpus."""
    recipe = load_recipe(_recipe(tmp_path, quantize=[]))
    found = [Measured(n, "fp16", 1, 0.5, 40, 0.25, None, {"hellaswag": 1.0, "arc_easy": 1.0, "piqa": 1.0,
                      "winogrande": 1.0}, zero_shot_call_s=1.0, windows={"wikitext2": 8, "c4": 8})
             for n in ("fp16", "bitnet_b158", "bitnet_b1")]
    prep = {"tokenizer training": 2.0, "tokenizing the training corpus": 11.0}
    lines = report(recipe, found, "cpu", None, prep)
    # 3 x 20 s of training, 3 cells x 2 sets x 0.25 s of perplexity, 3 x 5 s of zero-shot, 13 s of preparation
    assert "total: 1 min 30 s projected" in lines, lines
    assert any(x.startswith("preparation") and "tokenizing the training corpus 11.0 s" in x for x in lines)


def test_loading_a_source_model_is_projected_once(tmp_path):
    """A source model's loading (SmolLM2's GGUF dequantized: ~17 s here) was named "not projected": the
    SmolLM2 recipe's projection fell short of its run by ~4 min, about 1 min of it loading. It is timed as
    `estimate` loads the model (as a first run does) and counted once per model."""
    recipe = load_recipe(_recipe(tmp_path, quantize=[], models={"fp16": {"kind": "fp16"}}))
    found = [Measured("fp16", "source", 1, 0.0, 0, 0.25, None, windows={"wikitext2": 8, "c4": 8}, load_s=17.0)]
    lines = report(recipe, found, "cpu", None)
    assert "loaded in 17.0 s, not trained" in next(x for x in lines if x.strip().startswith("fp16 "))
    # 17 s of loading, 1 cell x 2 sets x 0.25 s of perplexity
    assert "total: 17.5 s projected" in lines, lines


def test_a_ray_recipe_is_projected_through_the_pools_dispatch(tmp_path):
    """A Ray recipe was projected as a local run (models and cells one after another). Its line now replays the
    projected durations through the pool's dispatch on 1, 2, ... slots; one slot is the local total. A cell waits
    for its model: the source's 17 s of loading, then its 0.5 s of perplexity, on any number of slots."""
    found = [Measured("fp16", "source", 1, 0.0, 0, 0.25, None, windows={"wikitext2": 8, "c4": 8}, load_s=17.0)]
    n = torch.get_num_threads()
    threads = f"{n} torch thread" + ("s" if n > 1 else "")
    for kind in ("ray", "local"):
        recipe = load_recipe(_recipe(tmp_path, quantize=[], models={"fp16": {"kind": "fp16"}},
                                     executor={"kind": kind, "cpus_per_cell": n}))
        lines = report(recipe, found, "cpu", None)
        ray = [x for x in lines if x.startswith("executor ray")]
        assert ray == ([f"executor ray, replayed through its dispatch (models prepared side by side, each model's "
                        f"cells once it is ready; each cell slot as fast as this machine with its "
                        f"{threads}): 1 slot 17.5 s (no more slots gain); not counted: "
                        "each worker building the tasks and reading the tokenized texts, and an actor opening each "
                        "model it moves to"] if kind == "ray" else []), lines
    # an actor of cpus_per_cell CPUs runs that many threads (Ray sets OMP_NUM_THREADS): said when timed otherwise
    recipe = load_recipe(_recipe(tmp_path, executor={"kind": "ray", "cpus_per_cell": n + 1}))  # smoke: 3 models, 7 cells
    lines = report(recipe, _smoke_found(1.0, 2.5, 1.0), "cpu", None, {"fitting the BPE": 10.0})
    assert f"{threads} (a slot runs executor.cpus_per_cell = {n + 1} threads: OMP_NUM_THREADS={n + 1} ptq-bench " \
           "estimate ... times at that count)): " in next(x for x in lines if x.startswith("executor ray"))
    assert "(a slot runs" not in next(x for x in report(recipe, _smoke_found(), "cuda", None) if x.startswith("executor"))
    total = next(x for x in lines if x.startswith("total: "))
    ray = next(x for x in lines if x.startswith("executor ray"))
    # 10 s of preparation; training 100 + 250 + 100 s; 7 cells x 1 s of perplexity (two sets of 8 windows)
    assert total == "total: 7 min 47 s projected"
    # one slot: the local total. Two: bitnet_b158 trains 250 s on one, then its cell; on the other fp16 trains
    # 100 s, then bitnet_b1 (a preparation before the cells of the model an actor holds) 100 s and its cell,
    # then fp16's 5 cells: 10 + max(251, 206) s. No pool does better than the longest model + cell.
    assert "1 slot 7 min 47 s, 2 slots 4 min 21 s (no more slots gain)" in ray, ray


def test_a_text_is_timed_on_its_head_and_projected_to_all(monkeypatch):
    """The preparation encodes the first SHARE of a text's characters, however its documents are sized."""
    import ptq_bench.estimate_prep as prep

    seen = []
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(prep.time, "perf_counter", lambda: next(clock))
    texts = ["a" * 10, "b" * 990]  # one long document holds most of the characters
    def tokenizer(part, **_):
        seen.append(part)
        return {"input_ids": [list(t[::2]) for t in part]}  # an id per two characters

    assert prep.encode_s(tokenizer, texts, share=0.1) == pytest.approx((10.0, 500.0))
    assert seen == [["a" * 10, "b" * 90]]


def test_whole_sets_are_projected_from_the_windows_the_run_evaluates(tmp_path, capsys, data_dir):
    """Whole perplexity sets were "not counted" (neither their time nor, since the KLD references, their disk):
    their windows are now counted from the sets' ids under the recipe's tokenizer, as the run's evaluator
    encodes them (special tokens included), and a reference's bytes follow from them."""
    from ptq_bench.eval.evaluator import Evaluator
    from ptq_bench.prepare import train_recipe_tokenizer

    path = _recipe(tmp_path, eval={**yaml.safe_load(SMOKE.read_text())["eval"], "perplexity": {
        "sets": ["wikitext2", "c4"], "seq_len": 64}})
    assert main(["estimate", str(path), "--steps", "1", "--warmup", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    recipe = load_recipe(path)
    tok = train_recipe_tokenizer(recipe, data_dir)
    ids = Evaluator(recipe.eval, data_dir, tmp_path / "c", tok, "t").ppl_ids
    wins = {s: len(v) // 64 for s, v in ids.items()}
    assert f"windows wikitext2 {wins['wikitext2']}, c4 {wins['c4']}: " in out
    size = sum(wins.values()) * 63 * (recipe.tokenizer.vocab_size * 4 + 8)
    assert f"KLD references (float32 base log-probs and top-1 ids, written to {recipe.cache_path / 'kld'} unless a " \
           f"run left them there): {size / 1e9:.3g} GB;" in out
    assert "not counted" not in out


def test_references_larger_than_the_free_disk_are_flagged(tmp_path, monkeypatch):
    """Only models with PTQ cells have references; their sum is set against the cache disk's free bytes."""
    import ptq_bench.estimate_sets as sets

    recipe = load_recipe(_recipe(tmp_path))  # smoke: PTQ cells on fp16 only
    wins = {"wikitext2": 8.0, "c4": 8.0}
    assert [sets.kld_bytes(recipe, n, 512, wins) for n in ("fp16", "bitnet_b1")] == [2 * 8 * 63 * (512 * 4 + 8), None]
    assert sets.kld_bytes(load_recipe(_recipe(tmp_path, eval=_no_kld())), "fp16", 512, wins) is None
    found = _smoke_found()
    found[0].kld_bytes = 3e9
    monkeypatch.setattr(sets, "free_bytes", lambda folder: 2e9)
    line = next(x for x in report(recipe, found, "cpu", None) if x.startswith("KLD references"))
    assert ": 3 GB; 2 GB free there — more than is free: the run stops" in line
    monkeypatch.setattr(sets, "free_bytes", lambda folder: 4e9)
    assert "more than is free" not in next(x for x in report(recipe, found, "cpu", None) if x.startswith("KLD"))


def _no_kld() -> dict:
    return {**yaml.safe_load(SMOKE.read_text())["eval"], "kld": False}


def test_each_ptq_cells_kl_work_is_projected(tmp_path):
    """A PTQ cell's KLD work besides its forwards (float64 KL over the vocabulary at every token) was not
    projected: 16-21 s of a SmolLM2 cell's ~45 s of evaluation (24 windows of 511 x 49,152 log-probs)."""
    recipe = load_recipe(_recipe(tmp_path))  # smoke: 4 PTQ cells, all on fp16, 2 sets of 8 windows
    found = _smoke_found()
    found[0].kld_bytes, found[0].kl_window_s = 1e6, 0.5
    lines, seconds = kld_part(recipe, found)
    assert seconds == [0.0] * 3 + [16 * 0.5] * 4  # 3 base cells, then 4 PTQ cells x windows x seconds per window
    assert "0.5 s per window" in lines[0] and "8.0 s per PTQ cell besides its forwards, 32.0 s for 4 PTQ cells" in lines[0]
    assert "total: 3 min 59 s projected" in report(recipe, found, "cpu", None)  # + 2 x 100 s training, 7 x 1 s ppl


@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_activation_hooks_are_the_methods_own_and_leave_nothing_behind(granularity):
    """The probe's activation quantizers sit where Absmax puts them, with the same setting, the weights as
    they were; afterwards the model is as before (no hook left)."""
    import copy

    from quant_fixtures import tiny_llama

    from ptq_bench.estimate_act import act_hooks
    from ptq_bench.quant.linears import ActQuant
    from ptq_bench.quant.registry import get_method

    def hooks(model):
        return sorted((n, repr(h)) for n, m in model.named_modules() for h in m._forward_pre_hooks.values()
                      if isinstance(h, ActQuant))

    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    quantized, method = copy.deepcopy(model), get_method("absmax")
    method.apply(quantized, method.make_config({"w_bits": 8, "a_bits": 4, "a_granularity": granularity}))
    with act_hooks(model, (4, granularity)):
        assert hooks(model) == hooks(quantized) and len(hooks(model)) == 7 * len(model.model.layers)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert hooks(model) == []


def test_activation_quantized_cells_are_projected_at_their_own_rates(tmp_path):
    """Activation-quantized cells were projected at their base model's rate: SmolLM2's W8A8 / W4A4 cells took
    56-67 s of evaluation where its weight-only cells took 29-38 s. Each setting's timed rates are used, and a
    per-tensor setting's perplexity runs one window per forward."""
    from ptq_bench.estimate_act import Rates

    quantize = [{"method": "absmax", "w_bits": 8, "a_bits": [16, 8]},
                {"method": "absmax", "w_bits": 8, "a_bits": 8, "a_granularity": "tensor"}]
    recipe = load_recipe(_recipe(tmp_path, quantize=quantize))
    found = _smoke_found()
    for m in found:
        m.zero_shot_s, m.zero_shot_call_s = {t: 1.0 for t in recipe.eval.tasks}, 0.0
    found[0].act = {(8, "token"): Rates(1.5, 8, 1.0, {t: 2.0 for t in recipe.eval.tasks}),
                    (8, "tensor"): Rates(0.25, 1, 0.0, {t: 5.0 for t in recipe.eval.tasks})}
    lines = report(recipe, found, "cpu", None)
    # perplexity: 3 base cells + W8A16 at 2 x 0.5 s, W8A8 per token 2 x 1.5 s, per tensor 16 windows x 0.25 s
    assert any(x.startswith("perplexity:") and "4.0 s per cell (slowest), 11.0 s for 6 cells" in x for x in lines)
    # zero-shot, 4 tasks: 4 cells at 4 s, per token 1 + 8 s, per tensor 20 s
    assert any(x.startswith("zero-shot") and "45.0 s for 6 cells" in x for x in lines)
    assert "  fp16           every task once: 4.0 s, 9.0 s A8, 20.0 s A8 per tensor" in lines


def test_estimate_times_each_activation_setting(tmp_path, capsys):
    path = _recipe(tmp_path, models={"fp16": {"kind": "fp16"}},
                   quantize=[{"method": "absmax", "w_bits": 8, "a_bits": [8, 4]}])
    assert main(["estimate", str(path), "--steps", "1", "--warmup", "0", "--device", "cpu"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("fp16 ") and "every task" in x)
    assert re.fullmatch(r"  fp16 +every task once: [0-9.]+ s, [0-9.]+ s A8, [0-9.]+ s A4", line), line


def test_a_trained_model_is_sized_by_the_fitted_tokenizer(tmp_path, capsys, data_dir):
    """A BPE fitted on too little text stops short of tokenizer.vocab_size, and `run` builds the model on the
    fitted size: estimate sized it (parameters, KLD references, KL work) on the requested one, 3.7x too large."""
    from ptq_bench.prepare import train_recipe_tokenizer

    path = _recipe(tmp_path, tokenizer={"vocab_size": 16384, "train_chars": 30000}, models={"fp16": {"kind": "fp16"}},
                   quantize=[{"method": "absmax", "w_bits": 8}], eval={**yaml.safe_load(SMOKE.read_text())["eval"],
                                                                         "tasks": []})
    assert main(["estimate", str(path), "--steps", "1", "--warmup", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    vocab = len(train_recipe_tokenizer(load_recipe(path), data_dir))
    assert vocab < 16384
    assert f": {2 * 8 * 63 * (vocab * 4 + 8) / 1e9:.3g} GB;" in next(x for x in out.splitlines() if x.startswith("KLD references"))


def test_an_offloaded_models_untimed_activation_cells_are_named_without_tasks(tmp_path):
    """The note that an offloaded model's activation-quantized cells are projected at its base rate sat on the
    per-model zero-shot line, which a recipe without tasks does not print."""
    recipe = load_recipe(_recipe(tmp_path, quantize=[{"method": "absmax", "w_bits": 8, "a_bits": 8}],
                                 eval={**yaml.safe_load(SMOKE.read_text())["eval"], "tasks": []}))
    lines = report(recipe, _smoke_found(), "cpu", None)  # fp16's `act` empty: not timed
    assert any(x.startswith("fp16: offloaded, so its activation-quantized cells are projected at its base rate")
               for x in lines), lines


def test_a_perplexity_sets_ids_are_counted_with_the_special_tokens_the_evaluator_adds(tmp_path, data_dir):
    """The evaluator encodes a perplexity set as one text with the tokenizer's special tokens (a BOS-adding
    tokenizer puts one BOS at the start of the stream); the window count follows that id count, so the
    projection must count the same ids (encoded without them, it is one short)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from ptq_bench.data import perplexity_text
    from ptq_bench.estimate_prep import Prep

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "<s>": 1}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", unk_token="[UNK]")
    recipe = load_recipe(_recipe(tmp_path))
    prep = Prep(recipe, data_dir)
    prep.count(tok)
    ids = prep.projected_ids(tok)
    for name in recipe.eval.perplexity.sets:
        assert ids[name] == len(tok(perplexity_text(name, data_dir))["input_ids"]), name
