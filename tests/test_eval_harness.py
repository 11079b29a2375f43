"""lm-eval tasks on the local data: FastLM against stock HFLM on every task, metric naming, reuse.

A tiny random Llama and a byte-level BPE trained here on a few hundred C4 documents; 8 documents per
task (4 wikitext pages). Both backends must give every request the same log-likelihood within 1e-4
and the same is_greedy flag, and every metric must be identical.
"""

import gzip
import itertools
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ptq_bench.eval.harness import PAPER_TASKS, TASKS, TaskSuite, metric_key  # noqa: E402

DATA = Path(os.environ.get("PTQ_BENCH_DATA", Path(__file__).resolve().parents[1] / "../shared/data")).resolve()
pytestmark = pytest.mark.skipif(not (DATA / "hellaswag").is_dir(), reason=f"no data folder at {DATA}")
LIMIT = 8


def make_tokenizer(add_bos: bool):
    """Byte-level BPE with ptq_bench.tokenizer's special tokens; add_bos prepends BOS like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    with gzip.open(DATA / "train_corpus/c4_en_train_shard00000_head.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line)["text"] for line in itertools.islice(fh, 300)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|endoftext|>", "<|pad|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                           special_tokens=[("<|endoftext|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|pad|>")


def make_model(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)  # 256 positions: long BoolQ passages hit HFLM's truncation
    return LlamaForCausalLM(cfg).eval()


def compare(ref: dict, new: dict) -> tuple[float, int]:
    worst, flips = 0.0, 0
    for name in ref:
        assert len(ref[name]) == len(new[name])
        for a, b in zip(ref[name], new[name]):
            if isinstance(a, tuple):  # loglikelihood: (logprob, is_greedy)
                worst, flips = max(worst, abs(a[0] - b[0])), flips + (a[1] != b[1])
            else:  # loglikelihood_rolling: logprob
                worst = max(worst, abs(a - b))
    return worst, flips


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(add_bos=False)


@pytest.fixture(scope="module")
def model(tok):
    return make_model(len(tok))


@pytest.fixture(scope="module")
def runs(tok, model):
    torch.set_num_threads(1)
    out = {}
    for backend in ("hflm", "fast"):
        suite = TaskSuite(list(TASKS), DATA, tok, limit=LIMIT, backend=backend, batch_size=8)
        out[backend] = (suite, suite.evaluate(model, progress=False), suite.last_responses)
    return out


def test_every_task_loads_with_lm_evals_own_config(runs):
    suite = runs["fast"][0]
    prov = suite.provenance()
    assert prov["n_docs"] == {name: LIMIT for name in TASKS}
    for name in TASKS:
        task = suite._tasks[name]
        assert task.config.dataset_path == "json" and task.config.task == TASKS[name].lm_eval_task
    # partial scoring (Winogrande, WSC273): the contexts differ, the continuation is shared
    wino = [i for i in suite._tasks["winogrande"].instances if i.doc_id == 0]
    assert len({i.args[0] for i in wino}) == 2 and len({i.args[1] for i in wino}) == 1


def test_metric_keys_are_named_by_protocol(runs):
    metrics = runs["fast"][1]
    expected = {metric_key(name, 0, m) for name in TASKS for m in TASKS[name].metrics}
    expected |= {metric_key(name, 0, f"{m}_stderr") for name in TASKS for m in TASKS[name].metrics
                 if m in ("acc", "acc_norm")}  # lm-eval's closed-form stderr of a mean (none for perplexities)
    assert set(metrics) == expected
    assert "lm_eval/hellaswag/0shot/acc_norm" in metrics and "lm_eval/boolq/0shot/acc_norm" not in metrics
    assert "lm_eval/wikitext/0shot/word_perplexity" in metrics
    assert [TASKS[n].label for n in PAPER_TASKS] == ["HS", "WGe", "ARCe", "ARCc", "PQ", "BQ", "OQ", "SC", "WG"]


def test_fast_equals_hflm_on_every_task(runs):
    ref, new = runs["hflm"], runs["fast"]
    assert new[0].last_path == "fast:shared"
    worst, flips = compare(ref[2], new[2])
    assert worst <= 1e-4 and flips == 0
    assert new[1] == ref[1]  # every accuracy and perplexity identical


def test_gpu_batching_gives_the_same_numbers_in_fewer_forwards(runs, tok, model, monkeypatch):
    """The GPU's batching (batching.BATCHING["gpu"]: HFLM's largest batch, a forward weighed as thousands of
    positions) only regroups rows: on this CPU it must still give HFLM's numbers, in fewer forwards."""
    import dataclasses

    from ptq_bench.eval import batching

    class Forwards:
        token_local = True  # counts calls, touches no value (FastLM keeps its shared path)
        n = 0

        def __call__(self, _module, _args) -> None:
            self.n += 1

    counts, suite = {}, runs["fast"][0]
    wide = dataclasses.replace(batching.BATCHING["gpu"], rows=16)  # more rows per forward and window
    for device, figures in (("cpu", batching.BATCHING["cpu"]), ("gpu", batching.BATCHING["gpu"]), ("wide", wide)):
        monkeypatch.setitem(batching.BATCHING, "cpu", figures)
        forwards = Forwards()
        handle = model.get_input_embeddings().register_forward_pre_hook(forwards)
        try:
            assert suite.evaluate(model, progress=False) == runs["hflm"][1]
        finally:
            handle.remove()
        assert suite.last_path == "fast:shared"
        worst, flips = compare(runs["hflm"][2], suite.last_responses)
        assert worst <= 1e-4 and flips == 0
        counts[device] = forwards.n
    assert counts["wide"] <= counts["gpu"] < counts["cpu"] / 2, counts


def test_suite_is_reused_across_models(runs, tok, model):
    suite = runs["fast"][0]
    assert suite.evaluate(make_model(len(tok), seed=1), progress=False) != runs["fast"][1]
    assert all(len(i.resps) == 1 for t in suite._tasks.values() for i in t.instances)  # reset, not appended
    assert suite.evaluate(model, progress=False) == runs["fast"][1]


@pytest.mark.parametrize("mode", ["plain", "hflm"])
def test_other_fast_paths(tok, model, mode):
    names = ["arc_easy", "winogrande", "wikitext"]
    ref = TaskSuite(names, DATA, tok, limit=4, backend="hflm", batch_size=8)
    new = TaskSuite(names, DATA, tok, limit=4, backend="fast", batch_size=8, fast_mode=mode)
    a, b = ref.evaluate(model, progress=False), new.evaluate(model, progress=False)
    worst, flips = compare(ref.last_responses, new.last_responses)
    assert new.last_path == f"fast:{mode}" and a == b and flips == 0
    assert worst <= (0.0 if mode == "hflm" else 1e-4)


def test_bos_adding_tokenizer_and_auto_mode_for_hooked_models():
    tok = make_tokenizer(add_bos=True)
    assert tok("a b").input_ids[0] == tok.bos_token_id
    model = make_model(len(tok), seed=2)
    names = ["hellaswag", "wsc273", "wikitext"]
    ref = TaskSuite(names, DATA, tok, limit=4, backend="hflm", batch_size=8)
    new = TaskSuite(names, DATA, tok, limit=4, backend="fast", batch_size=8)
    assert new.evaluate(model, progress=False) == ref.evaluate(model, progress=False)
    assert compare(ref.last_responses, new.last_responses)[0] <= 1e-4
    # a forward hook (fake quantization) makes the model a black box: HFLM's batching, bit for bit
    handle = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: (a[0].round(),))
    try:
        b, a = new.evaluate(model, progress=False), ref.evaluate(model, progress=False)
        assert new.last_path == "fast:hflm" and a == b
        assert compare(ref.last_responses, new.last_responses) == (0.0, 0)
    finally:
        handle.remove()


def _absmax(model, **params):
    """A copy of `model` under ptq_bench's Absmax (per-channel weights, dynamic activations)."""
    import copy

    from ptq_bench.quant.registry import get_method

    out, method = copy.deepcopy(model), get_method("absmax")
    method.apply(out, method.make_config(params), None)
    return out


def test_auto_path_follows_token_locality(tok, model):
    """Per-token rounding (Absmax A8 per token, BitNet) shares prefixes; per-tensor activation scales mix
    a row with its batch mates: only HFLM's batching, and forcing a regrouping path is refused."""
    from ptq_bench.eval.fast_lm import FastLM
    from ptq_bench.models.build import ArchConfig, build_model

    per_token = _absmax(model, w_bits=8, a_bits=8)
    per_tensor = _absmax(model, w_bits=8, a_bits=8, a_granularity="tensor")
    bitnet = build_model("bitnet_b158", ArchConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, max_seq_len=256), len(tok), seed=0)
    assert [FastLM(m, tok).mode for m in (model, per_token, bitnet, per_tensor)] == ["shared"] * 3 + ["hflm"]
    for mode in ("shared", "plain"):
        with pytest.raises(ValueError, match="per-tensor"):
            FastLM(per_tensor, tok, mode=mode)


@pytest.mark.parametrize("kind", ["absmax_w4a4", "bitnet_b158"])
def test_token_local_sharing_is_exact_in_float64(tok, model, kind):
    """Token-local rounding models take the shared path; in float64 (summation order no longer moves a
    rounding step) it equals HFLM as for a float model: the same computation, not an approximation."""
    from ptq_bench.models.build import ArchConfig, build_model

    if kind == "bitnet_b158":
        quant = build_model(kind, ArchConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                                             max_seq_len=256), len(tok), seed=0)
    else:
        quant = _absmax(model, w_bits=4, a_bits=4)
    quant.double()
    names = ["hellaswag", "arc_easy", "winogrande"]
    ref = TaskSuite(names, DATA, tok, limit=LIMIT, backend="hflm", batch_size=8)
    fast = TaskSuite(names, DATA, tok, limit=LIMIT, backend="fast", batch_size=8)
    assert fast.evaluate(quant, progress=False) == ref.evaluate(quant, progress=False)
    assert fast.last_path == "fast:shared"
    worst, flips = compare(ref.last_responses, fast.last_responses)
    assert worst <= 1e-9 and flips == 0


def test_fewshot_examples_never_hold_the_document_itself(tok):
    """With no train split locally, few-shot examples come from the evaluation split; lm-eval leaves a
    document out of its own examples only when fewshot_split == test_split. Before `task_config` named the
    split, OpenBookQA's doc 27 (limit 30, 3-shot) was its own example, gold answer included."""
    suite = TaskSuite(list(PAPER_TASKS), DATA, tok, limit=30, num_fewshot=3, backend="hflm")
    checked = 0
    for name in PAPER_TASKS:
        task = suite._tasks[name]
        for inst in task.instances:
            text = task.doc_to_text(inst.doc)
            if isinstance(text, int):  # partial scoring (Winogrande, WSC273): the context is a choice
                continue
            assert inst.args[0].count(text) == 1, (name, inst.doc_id)
            checked += 1
    assert checked > 600


def test_fewshot_fast_equals_hflm(tok, model):
    """Few-shot contexts (long, shared by a document's choices) through both backends."""
    out = {}
    for backend in ("hflm", "fast"):
        suite = TaskSuite(list(PAPER_TASKS), DATA, tok, limit=4, num_fewshot=2, backend=backend, batch_size=8)
        out[backend] = (suite.evaluate(model, progress=False), suite.last_responses)
    worst, flips = compare(out["hflm"][1], out["fast"][1])
    assert worst <= 1e-4 and flips == 0
    assert out["fast"][0] == out["hflm"][0]
    assert "lm_eval/arc_easy/2shot/acc" in out["fast"][0]


def test_templates_compiled_once_render_as_lm_eval(tok, monkeypatch):
    """`compile_templates_once` replaces lm-eval's per-call Jinja compile by a cache of compiled templates:
    every task's text, choices and target must be what lm-eval's own `apply_template` renders, doc by doc."""
    from lm_eval import utils

    suite = TaskSuite(list(PAPER_TASKS), DATA, tok, limit=LIMIT, backend="hflm")
    assert getattr(utils.apply_template, "compiles_once", False)
    views = []
    for name in PAPER_TASKS:
        task = suite._tasks[name]
        for inst in task.instances[:: max(1, len(task.instances) // 6)]:
            views.append((name, inst.doc_id, task.doc_to_text(inst.doc), task.doc_to_choice(inst.doc),
                          task.doc_to_target(inst.doc)))
    with monkeypatch.context() as m:
        m.setattr(utils, "apply_template", lambda template, doc: utils.env.from_string(template).render(**doc))
        for name, doc_id, *rendered in views:
            task = suite._tasks[name]
            doc = next(i.doc for i in task.instances if i.doc_id == doc_id)
            assert rendered == [task.doc_to_text(doc), task.doc_to_choice(doc), task.doc_to_target(doc)], (name, doc_id)
    assert len({v[0] for v in views}) == len(PAPER_TASKS)


@pytest.mark.parametrize("mode", ["shared", "hflm"])
def test_a_continuation_longer_than_the_context_is_refused_as_hflm_refuses_it(tok, mode):
    """HFLM asserts len(continuation) <= max_length; FastLM scored such a request anyway, on positions taken
    from the wrong end of its row (HellaSwag at max length 32: -270.7 where HFLM gives no number; PIQA: an
    IndexError traceback)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from ptq_bench.errors import PtqBenchError
    from ptq_bench.eval.fast_lm import FastLM

    model = make_model(len(tok))
    model.config.max_position_embeddings = 32
    reqs = [Instance("loglikelihood", {}, ("The cat", " sat" * n), 0, ("hellaswag", 2, 1)) for n in (3, 40)]
    with pytest.raises(AssertionError):
        HFLM(pretrained=model, tokenizer=tok, batch_size=8).loglikelihood(reqs, disable_tqdm=True)
    lm = FastLM(model, tok, batch_size=8, progress=False, mode=mode)
    with pytest.raises(PtqBenchError, match=r"hellaswag document 2: a continuation of 80 tokens .* max length 32"):
        lm.loglikelihood(reqs, disable_tqdm=True)


def test_two_tasks_may_not_share_an_lm_eval_task_name():
    """A variant entry naming its YAML's own `task:` (what TaskSpec's comment said) shared it with the entry
    already listed: lm-eval loaded one of the two, and both rows carried its numbers (measured: a variant
    `arc_easy_v` of arc_challenge.yaml over ARC-Easy's file reported ARC-Challenge's accuracy)."""
    from ptq_bench.eval import harness

    harness.check_distinct(TASKS)
    variant = harness.TaskSpec("arc_challenge", "arc/arc_challenge.yaml", {"test": "arc_easy/test.jsonl"},
                               ("acc",), "ARCeV", paper=False)
    with pytest.raises(ValueError, match="'arc_challenge' and 'arc_easy_v' share lm_eval_task 'arc_challenge'"):
        harness.check_distinct({**TASKS, "arc_easy_v": variant})


def test_a_model_with_nan_log_likelihoods_has_no_accuracy(tok):
    """lm-eval's argmax over NaN log-likelihoods picks the first choice: a diverged model (NaN logits) scored
    "25.00" on PIQA, the share of documents whose answer is the first one. Such a task's metrics are NaN."""
    import math

    model = make_model(len(tok))
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    suite = TaskSuite(["piqa", "winogrande"], DATA, tok, limit=4, backend="fast", batch_size=8)
    metrics = suite.evaluate(model, progress=False)
    assert metrics and all(math.isnan(v) for v in metrics.values()), metrics
    assert not any(k.endswith("_stderr") for k in metrics)


@pytest.mark.parametrize("backend", ["fast", "hflm"])
def test_float16_log_likelihoods_that_overflow_to_minus_inf_give_no_accuracy(tok, backend):
    """float16 log-likelihoods are summed in float16 (as stock HFLM sums them): a model whose token log-probs
    are ~-3e4 gives -inf for every choice, and lm-eval's argmax over that tie picks the first choice, as over
    NaN: PIQA "scored" the share of first answers. A document whose every choice is -inf makes the task NaN."""
    import math

    from ptq_bench.models.build import cast_model

    model = make_model(len(tok))
    with torch.no_grad():
        model.lm_head.weight.mul_(3e4 / model(torch.arange(32)[None]).logits.abs().max())
    cast_model(model, torch.float16)
    suite = TaskSuite(["piqa"], DATA, tok, limit=4, backend=backend, batch_size=8)
    metrics = suite.evaluate(model, progress=False)
    assert all(r[0] == -math.inf for r in suite.last_responses["piqa"])  # the overflow this test is about
    assert metrics and all(math.isnan(v) for v in metrics.values()), metrics



def test_a_minus_inf_choice_beside_a_finite_one_keeps_the_accuracy():
    """Only a document whose every choice is -inf (or any NaN) leaves lm-eval's argmax a pick of choice 0: one
    -inf choice beside finite ones still orders them, and the task keeps its accuracy, not NaN."""
    import math
    from types import SimpleNamespace

    from ptq_bench.eval.harness import _finite

    def choices(doc: int, *lls: float) -> list[SimpleNamespace]:
        return [SimpleNamespace(doc_id=doc, resps=[(ll, False)]) for ll in lls]

    ordered = choices(0, -1.0, -math.inf) + choices(1, -math.inf, -2.0, -3.0)
    assert _finite(ordered)
    assert not _finite(ordered + choices(2, -math.inf, -math.inf))
    assert not _finite(choices(0, -1.0, math.nan))

def test_a_task_file_changed_with_its_mtime_kept_is_read_again(tmp_path, tok):
    """datasets keys its cache of a local JSON file by path and mtime: a file rewritten with its mtime kept
    (cp -p, rsync -t, an archive of fixed mtimes) was scored as its old content, the manifest naming the new."""
    path = tmp_path / "piqa/validation.jsonl"
    path.parent.mkdir()
    rows = [json.loads(line) for line in itertools.islice(open(DATA / "piqa/validation.jsonl"), 3)]
    goals = []
    for mark in ("first", "second"):
        path.write_text("".join(json.dumps({**r, "goal": f"{mark} {r['goal']}"}) + "\n" for r in rows))
        os.utime(path, ns=(10**18, 10**18))
        task = TaskSuite(["piqa"], tmp_path, tok, backend="hflm")._tasks["piqa"]
        goals.append(task.instances[0].args[0])
    assert goals[0].startswith("Question: first ") and goals[1].startswith("Question: second ")


@pytest.mark.parametrize("size", [0, 1000])
def test_a_damaged_datasets_cache_is_rebuilt(tmp_path, monkeypatch, capsys, size):
    """A zero-byte or cut arrow file in datasets' cache of a task: a pyarrow traceback mid-run before."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    tok = make_tokenizer(add_bos=False)

    def requests():
        suite = TaskSuite(["piqa"], DATA, tok, limit=4, backend="fast", batch_size=8)
        return [i.args for i in suite._tasks["piqa"].instances]

    want = requests()
    (arrow,) = tmp_path.rglob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:size])
    assert requests() == want
    assert "datasets cache" in capsys.readouterr().out and arrow.stat().st_size > size


def test_fewshot_examples_are_the_ones_lm_evals_simple_evaluate_draws(tok, tmp_path):
    """lm-eval's `simple_evaluate` seeds every task's few-shot sampler with its `fewshot_random_seed` default:
    another seed draws other examples, so every few-shot number would be another protocol's, silently."""
    import inspect

    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    from ptq_bench.eval.harness import write_task_configs

    seed = inspect.signature(simple_evaluate).parameters["fewshot_random_seed"].default
    suite = TaskSuite(["arc_easy"], DATA, tok, limit=3, num_fewshot=2, backend="hflm")
    write_task_configs(["arc_easy"], DATA, tmp_path)
    task = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["arc_easy"])["tasks"]["arc_easy"]
    task.set_config(key="num_fewshot", value=2)
    task.set_fewshot_seed(seed=seed)
    task.build_all_requests(limit=3, rank=0, world_size=1)
    assert [i.args for i in suite._tasks["arc_easy"].instances] == [i.args for i in task.instances]


def test_hflm_positions_count_the_forwards_hflm_runs(tok, model):
    """`work.hflm_positions` (eval_speed's work ratio and ceiling table, `estimate`'s hflm projection) against
    HFLM's own forwards: its logits cache runs one forward per distinct input (context + continuation[:-1]),
    whatever the continuation's length. Multi-token requests were counted once each: 16 positions where HFLM
    ran 8 on these requests, so HFLM's work (and FastLM's ratio over it) was overstated."""
    from lm_eval.models.huggingface import HFLM

    from ptq_bench.eval.work import hflm_positions

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    positions: list[int] = []
    call = lm._model_call
    lm._model_call = lambda inps, **kw: positions.append(inps.shape[1]) or call(inps, **kw)
    requests = [("a", [1, 2], [3, 4]), ("a", [1, 2], [3, 5]), ("b", [1, 2, 3], [4]), ("b", [1, 2, 3], [6]),
                ("c", [5], [6, 7]), ("c", [5, 6], [7, 8]), ("d", [5, 6], [8])]
    lm._loglikelihood_tokens([((str(i), ""), ctx, cont) for i, (_, ctx, cont) in enumerate(requests)],
                             disable_tqdm=True)
    assert hflm_positions(requests) == (sum(positions), sum(positions))
