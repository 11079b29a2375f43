"""Requests/s of lm-eval's HFLM vs ptq_bench's FastLM on the same TaskSuite, and whether they agree.

    python benchmarks/eval_speed.py --model DIR --limit 40        # a HF checkpoint dir with its tokenizer
    python benchmarks/eval_speed.py --tiny --limit 40             # a small random Llama + BPE, runs anywhere
    python benchmarks/eval_speed.py --model DIR --absmax 8 8      # the same model as Absmax W8A8 (per token)
    python benchmarks/eval_speed.py --model DIR --bitnet b158     # its linears as BitNet BitLinears
    python benchmarks/eval_speed.py --model DIR --ceiling-only --limit 0   # exact ceiling, whole tasks
    python benchmarks/eval_speed.py --model DIR --device cuda      # both backends on a GPU
    python benchmarks/eval_speed.py --model smollm2-135m           # a recipe's source (GGUF converted into --cache)
    python benchmarks/eval_speed.py --model smollm2-135m --stand-in   # its tokenizer and vocabulary, one tiny layer

Times `TaskSuite.evaluate` (lm-eval's evaluate: requests, filters, metrics) over all the tasks at once
(lm-eval hands a backend every task's requests in one call, as a recipe's evaluation does), after a
warm-up call, best of --repeats, HFLM and FastLM alternating. Prints requests/s of each backend and
their ratio, and per task the largest |Δ loglik| per request and whether every metric matches.

`work` is the ratio of the model work each backend asked for (2 x block parameters per token through
the blocks + 2 x hidden x vocab per position through the LM head, counted from the real forward
shapes, padding included, attention scores left out): the speedup FastLM would have at equal
efficiency, i.e. the ceiling of skipping work. `--envelope` also runs HFLM at batch size 1 and prints
its own largest |Δ loglik| against HFLM at --batch-size: for a model that rounds activations, the
spread HFLM's numbers have from the batch size alone (see eval/fast_lm.py, "Numerics"); `Δacc` columns
are the largest accuracy difference in points. `--dtype float64` runs the model in double precision,
where summation order no longer moves a rounding step: there a token-local model must agree with
HFLM as a float model does.

Exit status: 0, or 1 when an exact model (float, or any model in float64) has a request beyond 1e-4 in
|Δ loglik| or an accuracy that differs (`eval_speed_report.verdict`); 2 for bad input.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_args import device, exit_with, folder, method_config, new_or_folder, non_negative, positive, source  # noqa: E402
from eval_speed_report import HEAD, max_delta, max_dmetric, only, row, speed, verdict  # noqa: E402


def tiny_tokenizer(data_dir: Path, n_docs: int = 1000, vocab: int = 4096, add_bos: bool = False):
    """A byte-level BPE on the head of the C4 training shard, special tokens as ptq_bench.tokenizer's
    (<|endoftext|> = bos = eos = unk, no BOS added); add_bos=True prepends it like Llama's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from ptq_bench.data import CALIBRATION_FILE, data_file  # the C4 training shard's head

    with gzip.open(data_file(data_dir, CALIBRATION_FILE), "rt", encoding="utf-8") as fh:
        docs = [json.loads(line)["text"] for line in itertools.islice(fh, n_docs)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<|pad|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                           special_tokens=[("<|endoftext|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|pad|>")


def tiny_model(vocab: int, hidden: int = 256, layers: int = 4, heads: int = 4, max_pos: int = 256, seed: int = 0):
    """A random Llama shaped like recipes/quickstart.yaml's models (untied head)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=688 * hidden // 256,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_pos, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def load(args: argparse.Namespace):
    if args.tiny:
        tok = tiny_tokenizer(args.data)
        if args.kind == "llama":
            return tiny_model(len(tok)), tok
        from ptq_bench.models.build import ArchConfig, build_model  # the toolkit's FP16 / BitNet models

        return build_model(args.kind, ArchConfig(max_seq_len=256), len(tok), seed=0), tok
    from transformers import AutoTokenizer

    if not Path(args.model).is_dir():  # a recipe's source (smollm2-135m, a .gguf): as a checkpoint folder in --cache
        from ptq_bench.source_load import load_source
        from ptq_bench.sources import inspect_source

        model, tok, _kind = load_source(inspect_source(args.model), cache_dir=args.cache)
        return model.eval(), tok
    tok = AutoTokenizer.from_pretrained(args.model)
    try:  # ptq_bench checkpoints (BitLinear models included)
        from ptq_bench.models.build import load_model

        model, _kind = load_model(args.model)
    except ImportError:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32")
    return model.eval(), tok


def make_absmax(model, w_bits: int, a_bits: int) -> None:
    """Absmax PTQ in place: per-channel weights, dynamic per-token activations (ptq_bench's method)."""
    from ptq_bench.quant.registry import get_method

    method = get_method("absmax")
    method.apply(model, method.make_config({"w_bits": w_bits, "a_bits": a_bits}), None)


def make_bitnet(model, mode: str) -> None:
    """Every block linear of a Llama-shaped model swapped for ptq_bench's BitLinear (latent weights copied):
    a BitNet model of the checkpoint's shape, for timing (its accuracy is not the point)."""
    from ptq_bench.models.build import swap_bitlinears

    swap_bitlinears(model, mode, model.config.rms_norm_eps)


class WorkCounter:
    """Forward pre-hooks on the decoder stack and the LM head that add up the model work of each call.
    It does not touch values, so it declares itself token-local (FastLM's path choice is unchanged)."""

    token_local = True

    def __init__(self, model) -> None:
        head = model.get_output_embeddings()
        body = sum(p.numel() for p in model.model.layers.parameters())
        self.per_token, self.per_position = 2 * body, 2 * head.weight.numel()
        self.flops = self.forwards = self.positions = 0
        self.handles = [model.get_input_embeddings().register_forward_pre_hook(self), head.register_forward_pre_hook(self)]
        self.head = head

    def __call__(self, module, args) -> None:
        if module is self.head:  # hidden states (..., hidden) at the positions given to the head
            self.flops += args[0].numel() // args[0].shape[-1] * self.per_position
        else:  # token ids (rows, width): every position goes through the blocks
            self.flops += args[0].numel() * self.per_token
            self.forwards += 1
            self.positions += args[0].numel()


def ceiling(suite, model) -> tuple[float, float]:
    """The work ratio that an exact backend which only skips work can reach at best against a well-batched
    HFLM, counted from the requests alone (`ptq_bench.eval.work`: no model run, no padding on either side):
    (one prefix tree per document, one tree over every document)."""
    from ptq_bench.eval.work import model_sizes

    requests = [r for task in suite.tokenized().values() for r in task]
    sizes = model_sizes(model)
    return work_ratio(requests, sizes), work_ratio(requests, sizes, one_tree=True)


def work_ratio(requests: list, sizes: tuple[int, int], one_tree: bool = False) -> float:
    """HFLM's multiply-adds over the prefix tree's (`ptq_bench.eval.work`) for these requests."""
    from ptq_bench.eval.work import exact_work, hflm_positions, weighted

    return weighted(hflm_positions(requests), sizes) / weighted(exact_work(requests, one_tree), sizes)


def forwards_table(tasks: list[str], limit: int, model, tok, args: argparse.Namespace) -> None:
    """Forwards and block positions of HFLM and of FastLM at each forward cost (--overhead and the table's
    figures) and rows multiple (--rows and the table's), with a GPU's max_tokens (batch x max_length),
    counted on a one-layer stand-in of `model` (its vocabulary and context length: which rows share a
    forward depends on neither depth nor width), on whatever device this runs (`--forwards-only`: what
    the GPU batching changes, without a GPU)."""
    from ptq_bench.eval.batching import BATCHING
    from ptq_bench.eval.harness import TaskSuite

    stand_in = one_layer(model)
    counter = WorkCounter(stand_in)
    suite = TaskSuite(tasks, args.data, tok, limit=limit, backend="hflm", batch_size=args.batch_size)
    runs = [(f"HFLM, batch {args.batch_size}", suite)]
    overheads = sorted({*(args.overhead or []), *(b.overhead for b in BATCHING.values())})
    for rows in sorted({*(args.rows or []), *(b.rows for b in BATCHING.values())}):
        for overhead in overheads:
            fast = TaskSuite(tasks, args.data, tok, limit=limit, backend="fast", batch_size=args.batch_size,
                             fast_mode=args.fast_mode)
            runs.append((f"FastLM, forward = {overhead} positions, rows {rows}x",
                         with_batching(fast, overhead, rows, gpu_tokens=True)))
    print(f"{'batching (max_tokens: batch x max_length)':<48}{'forwards':>9}{'positions':>11}")
    for label, s in runs:
        counter.forwards = counter.positions = 0
        s.evaluate(stand_in, progress=False)
        print(f"{label:<48}{counter.forwards:>9}{counter.positions:>11,}")


def one_layer(model):
    """A random one-layer, 64-wide Llama with `model`'s vocabulary and context length (`--stand-in`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=model.config.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
                      max_position_embeddings=model.config.max_position_embeddings)
    return LlamaForCausalLM(cfg).eval()


def ceiling_table(tasks: list[str], limit: int | None, model, tok, args: argparse.Namespace) -> None:
    """Per task and over all of them, the exact ceiling at `limit` documents per task (None: every
    document), counted from the tokenized requests without running the model (`--ceiling-only`)."""
    from ptq_bench.eval.harness import TaskSuite
    from ptq_bench.eval.work import exact_work, hflm_positions, model_sizes

    per_task = TaskSuite(tasks, args.data, tok, limit=limit).tokenized()
    sizes = model_sizes(model)
    print(f"{'task':<16}{'requests':>9}{'HFLM positions':>16}{'tree positions':>16}{'exact ceiling':>15}")
    for name, requests in [*per_task.items(), ("ALL", [r for reqs in per_task.values() for r in reqs])]:
        print(f"{name:<16}{len(requests):>9}{hflm_positions(requests)[0]:>16,}{exact_work(requests)[0]:>16,}"
              f"{work_ratio(requests, sizes):>15.2f}")


def bench(tasks: list[str], limit: int, model, tok, args: argparse.Namespace, pairs: bool = True) -> dict:
    """Best-of-repeats evaluate() time of each backend on one TaskSuite of `tasks` (built once per backend):
    lm-eval's evaluate sends every task's requests to the backend in one call, as for the paper tasks in
    a recipe. Agreement is reported per task from the same run. `pairs`: the requests are (context,
    continuation) pairs, whose exact ceiling is counted (wikitext's rolling requests have none)."""
    from ptq_bench.eval.harness import TaskSuite

    suites = {b: TaskSuite(tasks, args.data, tok, limit=limit, backend=b, batch_size=args.batch_size,
                           fast_mode=args.fast_mode) for b in ("hflm", "fast")}
    variants = [("overhead", n) for n in args.overhead or []] + [("rows", n) for n in args.rows or []]
    for knob, n in variants:  # FastLM again with one batching figure changed
        suites[f"fast@{knob}={n}"] = with_batching(TaskSuite(tasks, args.data, tok, limit=limit, backend="fast",
                                                             batch_size=args.batch_size, fast_mode=args.fast_mode), **{knob: n})
    for b, suite in suites.items():
        if b != "hflm":
            tokenize_in_call(suite)
    counter = WorkCounter(model)
    metrics, best, work, forwards = best_of(suites, model, args.repeats, counter)
    for h in counter.handles:
        h.remove()
    one = None
    if args.envelope:  # HFLM against itself at batch size 1
        one = TaskSuite(tasks, args.data, tok, limit=limit, backend="hflm", batch_size=1)
        one_metrics = one.evaluate(model, progress=False)
    per_task = []
    for t in tasks:
        fast, hflm = suites["fast"].last_responses[t], suites["hflm"].last_responses[t]
        worst, flips = max_delta({t: hflm}, {t: fast})
        mh, mf = only(metrics["hflm"], t), only(metrics["fast"], t)
        r = {"task": t, "requests": len(fast), "max_abs_dloglik": worst, "greedy_flips": flips,
             "metrics_equal": mh == mf, "dacc": max_dmetric(mh, mf)}
        if one is not None:
            r["envelope"] = max_delta({t: hflm}, {t: one.last_responses[t]})[0]
            r["envelope_dacc"] = max_dmetric(mh, only(one_metrics, t))
        per_task.append(r)
    return {"path": suites["fast"].last_path, "requests": suites["fast"].n_requests, "hflm_s": best["hflm"],
            "ceiling": ceiling(suites["fast"], model) if pairs else None,
            "fast_s": best["fast"], "work": work["hflm"] / work["fast"], "tasks": per_task,
            "hflm_bs1_s": one.last_seconds if one is not None else None, "forwards": forwards,
            "sweep": [{"variant": b.split("@")[1], "s": best[b], "forwards": forwards[b],
                       "work": work["hflm"] / work[b],
                       "max_abs_dloglik": max_delta(suites["hflm"].last_responses, suites[b].last_responses)[0]}
                      for b in suites if "@" in b]}


def tokenize_in_call(suite) -> None:
    """Each FastLM of `suite` gets a fresh RequestEncoder, so its requests are tokenized inside the timed
    evaluate() call as HFLM's are (TaskSuite pre-tokenizes them for FastLM when it is built, untimed)."""
    from ptq_bench.eval.encoder import RequestEncoder

    make = suite.make_lm

    def make_lm(model, progress: bool = True):
        lm = make(model, progress=progress)
        lm.encoder = RequestEncoder(suite.tokenizer)
        return lm

    suite.make_lm = make_lm


def best_of(suites: dict, model, repeats: int, counter: WorkCounter) -> tuple[dict, dict, dict, dict]:
    """A warm-up round, then `repeats` rounds of every suite in turn (backends alternating): per suite its
    metrics, best time of the timed rounds (the warm-up's left out; with repeats 0, the warm-up's),
    work and forwards."""
    metrics, best, work, forwards = {}, {b: float("inf") for b in suites}, {}, {}
    for round_ in range(repeats + 1):
        for b, suite in suites.items():
            counter.flops = counter.forwards = 0
            metrics[b] = suite.evaluate(model, progress=False)
            work[b], forwards[b] = counter.flops, counter.forwards
            if round_ > 0 or repeats == 0:
                best[b] = min(best[b], suite.last_seconds)
    return metrics, best, work, forwards


def with_batching(suite, overhead: int | None = None, rows: int | None = None, gpu_tokens: bool = False):
    """`suite` whose FastLM weighs each forward as `overhead` positions and holds `rows` x batch rows per
    forward and documents per window, where given, instead of its device's figures (`batching.BATCHING`);
    gpu_tokens: up to batch x max_length positions per forward, as on a GPU."""
    make = suite.make_lm

    def make_lm(model, progress: bool = True):
        lm = make(model, progress=progress)
        lm.overhead = lm.overhead if overhead is None else overhead
        lm.rows = lm.rows if rows is None else rows
        if gpu_tokens:
            lm.max_tokens = lm.batch_size * lm.max_length
        return lm

    suite.make_lm = make_lm
    return suite


def task_list(text: str) -> list[str]:
    """An argparse type: 'paper', or a comma list of the toolkit's tasks with (context, continuation) requests
    (`harness.TASKS`; wikitext's rolling requests have --wikitext-limit)."""
    from ptq_bench.eval.harness import PAPER_TASKS, TASKS

    names = list(PAPER_TASKS) if text == "paper" else text.split(",")
    unknown = [t for t in names if t not in TASKS or not TASKS[t].paper]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task {', '.join(map(repr, unknown))} (known: paper, "
                                         f"{', '.join(PAPER_TASKS)}; wikitext: --wikitext-limit)")
    return names


def parse_args() -> argparse.Namespace:
    """The options, each checked here: a bad one is one line and exit 2 before anything loads."""
    from ptq_bench.kinds import TRAINED_KINDS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=source, help="HF checkpoint directory (model + tokenizer), or a recipe's source "
                   "(e.g. smollm2-135m), converted once into --cache")
    p.add_argument("--cache", type=new_or_folder, default=Path(".ptq_cache/sources"),
                   help="where a GGUF source's checkpoint folder is kept (a recipe's <cache_dir>/sources)")
    p.add_argument("--tiny", action="store_true", help="a small random Llama + BPE tokenizer instead of --model")
    p.add_argument("--kind", default="llama", choices=("llama", *TRAINED_KINDS), help="with --tiny: 'llama' (stock "
                   "transformers), or a ptq_bench model kind built with quickstart's architecture")
    p.add_argument("--fast-mode", default="auto", choices=["auto", "shared", "aligned", "plain", "hflm"])
    p.add_argument("--limit", type=non_negative, default=40, help="documents per task")
    p.add_argument("--batch-size", type=positive, default=32, help="as recipes/quickstart.yaml")
    p.add_argument("--repeats", type=non_negative, default=2, help="timed rounds after the warm-up "
                   "(0: the warm-up round alone is timed, first-call costs included)")
    p.add_argument("--data", type=folder, default=os.environ.get("PTQ_BENCH_DATA", "../shared/data"),
                   help="data folder (default: $PTQ_BENCH_DATA, else ../shared/data)")
    p.add_argument("--tasks", type=task_list, default="paper", help="comma list, or 'paper' for the nine paper tasks")
    p.add_argument("--wikitext-limit", type=non_negative, default=4, help="pages of lm-eval wikitext (0 = skip)")
    p.add_argument("--absmax", nargs=2, type=int, metavar=("W", "A"), help="quantize first: Absmax W/A bits "
                   "(per-channel weights, per-token activations)")
    p.add_argument("--bitnet", choices=["b158", "b1"], help="swap the block linears for BitNet BitLinears first")
    p.add_argument("--envelope", action="store_true", help="also HFLM at batch size 1 against HFLM at --batch-size")
    p.add_argument("--device", type=device, default="cpu", help="where the model runs (HFLM follows a passed model's device)")
    p.add_argument("--overhead", type=non_negative, nargs="+", help="also time FastLM weighing each forward as N positions "
                   "(batching.BATCHING's figure for the device is the default run)")
    p.add_argument("--rows", type=positive, nargs="+", help="also time FastLM with N x batch rows per forward and "
                   "documents per window (batching.BATCHING's figure for the device is the default run)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="float64: summation order no longer moves a rounding step, so paths must agree")
    p.add_argument("--forwards-only", action="store_true", help="count forwards and positions of HFLM and of "
                   "FastLM with a GPU's batching at each --overhead and --rows, on a one-layer stand-in (no timing)")
    p.add_argument("--stand-in", action="store_true", help="time a one-layer, 64-wide random Llama with the "
                   "model's vocabulary and tokenizer instead of the model: what each backend costs besides the blocks")
    p.add_argument("--ceiling-only", action="store_true", help="print the exact ceiling per task at --limit "
                   "(0 = every document) from the tokenized requests, without timing anything")
    args = p.parse_args()
    if not (args.tiny or args.model):
        p.error("give --model DIR or --tiny")
    if args.absmax:
        method_config(p, "absmax", "--absmax", w_bits=args.absmax[0], a_bits=args.absmax[1])
    args.data = args.data.resolve()
    return args


def main() -> int:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    import torch

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model, tok = load(args)
    model = one_layer(model) if args.stand_in else model
    if args.bitnet:
        make_bitnet(model, args.bitnet)
    if args.absmax:
        make_absmax(model, *args.absmax)
    model.to(getattr(torch, args.dtype)).to(args.device)
    name = f"{args.device} " + args.dtype + " " + (f"tiny random {args.kind}" if args.tiny else args.model) + (
        " (one-layer stand-in)" if args.stand_in else "") + (
        f" as BitNet {args.bitnet}" if args.bitnet else "") + (" Absmax W{}A{}".format(*args.absmax) if args.absmax else "")
    timing = (f"best of {args.repeats} after a warm-up" if args.repeats else
              "the warm-up round alone timed (--repeats 0: first-call costs in every time and ratio)")
    print(f"model: {name}, {sum(x.numel() for x in model.parameters()):,} "
          f"params, vocab {len(tok)}, torch threads {torch.get_num_threads()}, limit {args.limit} docs/task, "
          f"batch {args.batch_size}, {timing}, FastLM mode {args.fast_mode}")
    from ptq_bench.eval.batching import batching_for

    cut = batching_for(torch.device(args.device).type)
    print(f"FastLM batching on {args.device}: max_tokens {cut.max_tokens or 'batch x max_length'}, a forward weighed "
          f"as {cut.overhead} positions ({cut.basis})")
    tasks = args.tasks
    if args.ceiling_only:
        ceiling_table(tasks, args.limit or None, model, tok, args)
        return 0
    if args.forwards_only:
        forwards_table(tasks, args.limit, model, tok, args)
        return 0
    res = bench(tasks, args.limit, model, tok, args)
    print("FastLM path taken:", res["path"])  # as TaskSuite recorded it
    print(HEAD + (f"{'bs1 |Δll|':>11}{'bs1 Δacc':>9}" if args.envelope else ""))
    for r in res["tasks"]:
        print(row(r["task"], [r]))
    print(row("ALL above", res["tasks"]))
    print(speed("tasks", res))
    runs = res["tasks"]
    if args.wikitext_limit:
        wiki = bench(["wikitext"], args.wikitext_limit, model, tok, args, pairs=False)
        print(row("wikitext", wiki["tasks"]))
        print(speed("wikitext", wiki))
        runs = runs + wiki["tasks"]
    line, status = verdict(runs, exact=not (args.absmax or args.bitnet) or args.dtype == "float64")
    print(line)
    return status


if __name__ == "__main__":
    exit_with(main)
