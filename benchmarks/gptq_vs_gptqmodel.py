"""Independent check of ptq_bench's GPTQ against GPTQModel (the maintained successor of AutoGPTQ).

    PTQ_BENCH_DATA=/work/shared/data python benchmarks/gptq_vs_gptqmodel.py --model DIR [--bits 4 3]
        [--group-size 128] [--nsamples 32] [--seqlen 128] [--max-windows 128] [--true-sequential] [--pack]
        [--repeats 3] [--envelope]

DIR is a standard Hugging Face checkpoint folder (LlamaForCausalLM safetensors + tokenizer), e.g. a
pipeline export `.ptq_cache/models/fp16-<hash>/hf`. On the same checkpoint and the same calibration
windows (built once: C4 train text -> `encode_stream` -> `calibration_windows`), each bit width is
quantized twice with the same settings, both on CPU in fp32:

    ours:      get_method("gptq"): sym, group_size, damp, act_order=False, static_groups=False
    GPTQModel: QuantizeConfig(bits, group_size, sym=True, desc_act=False, damp_percent=damp,
               act_group_aware=False,  # its default True (GAR group reordering) is not plain GPTQ
               static_groups=False, mse=0.0, fallback=None), loaded with dtype=float32 (its CPU
               default down-casts to bfloat16); its Hessian is fp32, block size 128 (fixed).

Both see the calibration windows as they are (no BOS, no padding, all-ones attention mask), quantize
every decoder-block linear (lm_head and embeddings untouched), and run the blocks in order on the
already-quantized model's activations; `--true-sequential` turns on the q/k/v -> o -> gate/up -> down
order inside a block for both (GPTQModel's default is on, ours off; default here: off).

Known, deliberate difference: when a group starts inside a 128-column block (group_size 32 or 64),
the reference GPTQ and GPTQModel fit its scale on a stale copy of the block, ours on the current
error-compensated weights (see ptq_bench/quant/gptq.py); with group_size 128 or -1 the two
algorithms coincide and the weights should come out bit-identical.

Evaluation is one function for all: WikiText-2, GPTQ protocol (non-overlapping `seqlen` windows of
the "\\n\\n"-joined test text, exp of the mean NLL). GPTQModel's result is its GPTQ solver's output
weights (fake-quant, read from its GPTQProcessor) copied into an fp32 copy of the FP model, so only
the weights differ from ours. With --pack its packing step runs too (timed as `pack s`), the
checkpoint is saved and reloaded (GPTQModel converts its v1 zero points on load; the in-memory model
right after quantize() does not score correctly), and `ckpt ppl` scores its dequantized packed
weights (int codes, fp16 scales) the same way; its own CPU kernel is tried too and reported in the log
(its fp32 CPU kernel needs in_features % group_size == 0; its 3-bit packer needs out_features % 32 == 0).

Agreement is also shown on the weights: `W equal` is the share of weights bit-identical between the two
results (the fp32 Hessians of the two calibration pipelines differ in the last bits, by summation
order, which flips a few roundings that GPTQ's error feedback then propagates), and `solver eq` is the
share of GPTQModel's weights that our `gptq_solve` reproduces bit-exactly from GPTQModel's own
Hessians (100% up to a rare float-level rounding tie when group_size is 128 or -1).

Timing: wall time of our `apply(...)` and of GPTQModel's `model.quantize(...)` (calibration forward
passes included on both sides; its packing only with --pack), best of --repeats, the sides alternating
(the machine may be shared).
With --envelope, ours is rerun three times under rounding-level changes (gptq_envelope.py: the Hessians summed
as GPTQModel sums them, or in float64; the FP weights x (1 + 1e-6 N(0,1))) and one line per bit width prints their
perplexities, their range with the shipped run, and whether GPTQModel's perplexity falls inside it.
With --perturb K, both sides are also run on K copies of the FP weights x (1 + 1e-6 N(0,1)) (seeds 0..K-1; GPTQModel
reads each from a float32 checkpoint saved to a temporary folder), and one line per bit width prints both sides'
K + 1 perplexities, their means, each side's spread within the seed, and in how many runs ours is above.
Then ours runs once more with each Hessian summed as GPTQModel sums it (fp32 X^T X per batch, scaled once; ours
keeps the reference's running average): with group_size 128 or -1 that is the one difference left, and the line
prints the share of weights bit-equal to GPTQModel's and how many differ (SmolLM2 W4 g128: none of 106,168,320,
the perplexities equal; benchmarks/README.md).
Exit status: 0 when every |ours/theirs - 1| <= tolerance, 1 otherwise, 2 when GPTQModel is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_args import (  # noqa: E402
    at_least,
    checkpoint,
    comparison_texts,
    exit_with,
    folder,
    method_config,
    non_negative,
    positive,
)
from gptq_envelope import (  # noqa: E402
    HESSIAN_SUMS,
    NOISE,
    envelope,
    envelope_line,
    hessian_summed,
    paired_line,
    perturbed,
)

INSTALL_HINT = (
    "GPTQModel is not installed: pip install --no-deps gptqmodel pypcre logbar device-smi tokenicer defuser "
    "(--no-deps: its declared requirements would replace torch; see benchmarks/README.md)"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=checkpoint, help="HF checkpoint folder (LlamaForCausalLM + tokenizer)")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--damp", type=float, default=0.01)
    p.add_argument("--nsamples", type=positive, default=32, help="calibration windows")
    p.add_argument("--seqlen", type=at_least(2), default=128, help="calibration and evaluation window length")
    p.add_argument("--max-windows", type=non_negative, default=128, help="WikiText-2 windows to score (0 = all)")
    p.add_argument("--true-sequential", action="store_true", help="q/k/v, o, gate/up, down order, both sides")
    p.add_argument("--seed", type=non_negative, default=0, help="calibration window sampling seed")
    p.add_argument("--data-dir", type=folder, default=None, help="data folder (default: $PTQ_BENCH_DATA)")
    p.add_argument("--tolerance", type=at_least(0, float), default=0.02, help="allowed |ppl ours/theirs - 1|")
    p.add_argument("--repeats", type=positive, default=1, help="time each side this many times, keep the best")
    p.add_argument("--threads", type=positive, default=os.environ.get("OMP_NUM_THREADS", "2"))
    p.add_argument("--pack", action="store_true", help="also pack GPTQModel's result; score its checkpoint and CPU kernel")
    p.add_argument("--verbose", action="store_true", help="show GPTQModel's own logging")
    p.add_argument("--envelope", action="store_true",
                   help="also rerun ours under three rounding-level changes (gptq_envelope.py) and print the range")
    p.add_argument("--perturb", type=non_negative, default=0, metavar="K",
                   help="also run both sides on K copies of the FP weights x (1 + 1e-6 N(0,1)), seeds 0..K-1")
    args = p.parse_args(argv)
    for bits in args.bits:
        method_config(p, "gptq", "--bits/--group-size/--damp", w_bits=bits, group_size=args.group_size, damp=args.damp)
    return args


# --------------------------------------------------------------------------------------------- eval


def perplexity(model, ids, seqlen: int, max_windows: int | None) -> float:
    """GPTQ-protocol perplexity (ptq_bench.eval.perplexity.gptq_perplexity when present)."""
    try:
        from ptq_bench.eval.perplexity import gptq_perplexity
    except ImportError:
        gptq_perplexity = None
    if gptq_perplexity is not None:
        import inspect

        import torch

        quiet = {"progress": False} if "progress" in inspect.signature(gptq_perplexity).parameters else {}
        with torch.no_grad():
            return float(gptq_perplexity(model, ids, seqlen, max_windows, **quiet)["ppl"])
    return _local_perplexity(model, ids, seqlen, max_windows)


def _local_perplexity(model, ids, seqlen: int, max_windows: int | None, batch_size: int = 4) -> float:
    """Non-overlapping seqlen windows of the joined text; exp(mean next-token NLL)."""
    import torch
    import torch.nn.functional as F

    n = ids.numel() // seqlen
    if max_windows:
        n = min(n, max_windows)
    windows = ids[: n * seqlen].view(n, seqlen)
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in windows.split(batch_size):
            batch = batch.to(dev)
            logits = model(batch, use_cache=False).logits.float()
            total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += batch[:, 1:].numel()
    return math.exp(total / count)


# --------------------------------------------------------------------------------------------- sides


@functools.cache
def _fp(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    from ptq_bench.models.experts import unfuse_experts

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    unfuse_experts(model)  # a mixture of experts: one gate_up / down linear pair per expert, as ours are
    return model.eval()


def load_fp(model_dir: str):
    """A fresh fp32 copy of the checkpoint as transformers builds it: loaded once, before GPTQModel loads it
    (GPTQModel's defuser then patches transformers' MoE classes for the rest of the process)."""
    return copy.deepcopy(_fp(model_dir))


# GPTQModel's names for a mixture of experts' per-expert linears (its defuser splits gate and up; older
# checkpoints say block_sparse_moe and w1 / w3 / w2) -> ours: (linear, which half of gate_up_proj or None)
EXPERT_PARTS = {"gate_proj": ("gate_up_proj", 0), "w1": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
                "w3": ("gate_up_proj", 1), "down_proj": ("down_proj", None), "w2": ("down_proj", None)}


def our_name(name: str) -> tuple[str, int | None]:
    """Our linear for GPTQModel's `name`, and which half of an expert's gate_up_proj it is (None: all)."""
    name = name.replace(".block_sparse_moe.", ".mlp.")
    parent, _, leaf = name.rpartition(".")
    if ".experts." not in name or leaf not in EXPERT_PARTS:
        return name, None
    ours, half = EXPERT_PARTS[leaf]
    return f"{parent}.{ours}", half


def weight_of(mods: dict, name: str):
    """The (out, in) weight that GPTQModel's linear `name` is in our model: the linear itself, or for an
    expert's gate or up projection the half of our expert's gate_up_proj that computes it. Halves also where
    the class interleaves gate and up (GPT-OSS): GPTQModel's defuser splits the fused rows in two and
    concatenates the halves' outputs back before the class's `_apply_gate`, so its "gate_proj" is the first
    half of the rows, not the gate (our solver reproduces its weights only so)."""
    ours, half = (name, None) if name in mods else our_name(name)
    w = mods[ours].weight.data
    return w if half is None else w.chunk(2, dim=0)[half]


def stream_check(model_dir: str, calib, theirs: dict) -> tuple[int, float]:
    """(blocks, worst relative difference, trace-normalised): GPTQModel's quantized weights in every block, our
    runner replaying them (each block's inputs the previous quantized block's outputs, as GPTQModel fed them),
    and the Hessians of each block's first group of linears (they read the block's input alone) against those
    GPTQModel's solver got. Within float rounding: both sides calibrate every block on the same stream, so
    what differs between the two results is where float rounding flips a grid choice (and what follows)."""
    from ptq_bench.quant.apply import hessian_stat
    from ptq_bench.quant.calibrate import model_family, run_blockwise

    model = load_weights_into(model_dir, theirs["solved"])
    first: dict[int, dict] = {}
    run_blockwise(model, calib, hessian_stat, lambda i, _l, _g, stats: first.setdefault(i, dict(stats)),
                  true_sequential=True, sequential=False)
    prefix, worst = model_family(model).blocks + ".", 0.0
    for name, h in theirs["hessians"].items():
        block, _, key = our_name(name)[0].removeprefix(prefix).partition(".")
        if key in first.get(int(block), {}):
            worst = max(worst, _relative(first[int(block)][key].H, h))
    return len(first), worst


def _relative(a, b) -> float:
    """|a - b| / |b|, both trace-normalised."""
    a, b = a / a.trace(), b / b.trace()
    return float((a - b).norm() / b.norm())


def forward_hessians(model, calib, prefix: str) -> dict:
    """The Hessians (sum of x^T x) of the linears under `prefix` from plain forwards of the whole model:
    transformers' own forward, the reference both calibration pipelines replay."""
    import torch

    got: dict = {}

    def add(name):
        def hook(_m, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            got[name] = got.get(name, 0) + x.T @ x
        return hook

    handles = [m.register_forward_pre_hook(add(n.removeprefix(prefix))) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith(prefix)]
    with torch.no_grad():
        for batch in calib.split(8):
            model(batch, use_cache=False)
    for h in handles:
        h.remove()
    return {n: h.float() for n, h in got.items()}


def hessian_check(fp, calib, theirs: dict) -> tuple[int, float, float, float]:
    """(linears, worst |H_ours - H_theirs| / |H_theirs|, then each side's worst against transformers' plain
    forward) over block 0, trace-normalised: both sides feed it the same float inputs (without
    --true-sequential), so this checks which tokens reached each linear, a mixture of experts' routing
    included, and the arguments each side replays the block with (masks, rotary, per-layer inputs). `fp`: the
    float model as `load_fp` loaded it (read only)."""
    from ptq_bench.estimate_model import first_blocks
    from ptq_bench.quant.apply import hessian_stat
    from ptq_bench.quant.calibrate import model_family, run_blockwise

    model = first_blocks(fp, 1)  # block 0 alone (a copy)
    prefix, got = f"{model_family(model).blocks}.0.", {}
    run_blockwise(model, calib, hessian_stat, lambda _i, _l, _g, stats: got.update(stats), sequential=False)
    truth = forward_hessians(fp, calib, prefix)
    worst, ours, them, n = 0.0, 0.0, 0.0, 0
    for name, h in theirs["hessians"].items():
        if name.startswith(prefix):
            key = our_name(name)[0].removeprefix(prefix)
            mine, real = got[key].H, truth[key]
            worst, n = max(worst, _relative(mine, h)), n + 1
            ours, them = max(ours, _relative(mine, real)), max(them, _relative(h, real))
    return n, worst, ours, them


def quantize_ours(model_dir: str, bits: int, args: argparse.Namespace, calib, model=None):
    """Our GPTQ on a fresh FP copy of the checkpoint (or on `model`); (the model, seconds)."""
    from ptq_bench.quant.registry import get_method

    method = get_method("gptq")
    cfg = method.make_config({"w_bits": bits, "group_size": args.group_size, "damp": args.damp, "act_order": False,
                              "sym": True, "static_groups": False, "true_sequential": args.true_sequential})
    model = load_fp(model_dir) if model is None else model
    t0 = time.perf_counter()
    method.apply(model, cfg, calib)
    return model, time.perf_counter() - t0


def warm_up(model_dir: str, args: argparse.Namespace, calib) -> None:
    """One untimed quantization of each side on a few windows (first-call library and kernel initialisation),
    so neither side pays it in the table (only ours was warmed up: GPTQModel's first timed call paid it)."""
    from ptq_bench.errors import QuantError

    with contextlib.suppress(QuantError):  # 2 windows may leave an expert of a mixture of experts without tokens
        quantize_ours(model_dir, args.bits[0], args, calib)
    try:
        quantize_theirs(model_dir, args.bits[0], args, calib)
    except Exception as exc:  # noqa: BLE001 - a warm-up only: said, and its first timed call then pays it
        print(f"GPTQModel's warm-up failed ({type(exc).__name__}): its first timed call includes its "
              "initialisation", flush=True)


def quantize_theirs(model_dir: str, bits: int, args: argparse.Namespace, calib) -> dict:
    """GPTQModel on CPU in fp32. Returns a dict:

    model: its model; solved: {linear name: (out, in) fp32 weight from its GPTQ solver}, read where its
    GPTQProcessor leaves it (`module.weight` after `process`, what its later blocks are calibrated on);
    hessians: {name: the Hessian its solver got (fp32, undamped)}; packed: {name: dequantized weight of
    its saved checkpoint} (only with --pack, None when packing failed); seconds: `quantize()` wall time;
    pack_s: time in its packing step. Without --pack the packing step (`submodule_finalize`) is skipped,
    so the model keeps plain linears holding the solver's weights.
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, args.threads)))
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.looper.gptq_processor import GPTQProcessor
    from gptqmodel.models.definitions.jamba import JambaQModel
    from gptqmodel.quantization.gptq import GPTQ

    # its Jamba definition asks for mamba-ssm (CUDA kernels); transformers' Jamba runs its PyTorch scan
    # without it, on both sides alike, so the requirement is lifted for this CPU comparison
    JambaQModel.require_pkgs = None
    qcfg = QuantizeConfig(
        bits=bits, group_size=args.group_size, sym=True, desc_act=False, act_group_aware=False,
        damp_percent=args.damp, static_groups=False, mse=0.0, true_sequential=args.true_sequential,
        fallback=None, device="cpu", offload_to_disk=False,
    )
    rows = [{"input_ids": r.tolist(), "attention_mask": [1] * len(r)} for r in calib]
    out: dict = {"solved": {}, "hessians": {}, "packed": None, "pack_s": 0.0}
    pack_errors: list[str] = []
    orig_process, orig_finalize = GPTQProcessor.process, GPTQProcessor.submodule_finalize
    orig_hessian = GPTQ.finalize_hessian

    def process(self, module, *a, **k):
        res = orig_process(self, module, *a, **k)
        out["solved"][module.full_name] = module.weight.data.detach().float().clone()
        return res

    def finalize(self, *a, **k):
        if not args.pack:
            return None
        t = time.perf_counter()
        try:
            return orig_finalize(self, *a, **k)
        except Exception as exc:  # e.g. its 3-bit packer needs out_features % 32 == 0
            pack_errors.append(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            out["pack_s"] += time.perf_counter() - t

    def finalize_hessian(self, *a, **k):
        H = orig_hessian(self, *a, **k)
        named = getattr(self, "_named_module", None)
        if named is not None and torch.is_tensor(H) and H.ndim == 2:
            out["hessians"].setdefault(named.full_name, H.detach().float().clone())
        return H

    GPTQProcessor.process, GPTQProcessor.submodule_finalize = process, finalize
    GPTQ.finalize_hessian = finalize_hessian
    try:
        with contextlib.nullcontext() if args.verbose else _silenced():
            qmodel = GPTQModel.load(model_dir, qcfg, dtype=torch.float32)
            t0 = time.perf_counter()
            qmodel.quantize(rows, batch_size=8)
            out["seconds"] = time.perf_counter() - t0
    finally:
        GPTQProcessor.process, GPTQProcessor.submodule_finalize = orig_process, orig_finalize
        GPTQ.finalize_hessian = orig_hessian
    out["model"] = qmodel
    if not args.pack:
        return out
    if pack_errors:
        print(f"[w{bits}] GPTQModel packing failed ({len(pack_errors)} modules; first: {pack_errors[0]}); "
              "its checkpoint is not scored", flush=True)
        return out
    # The in-memory model right after quantize() holds GPTQ-v1 zero points that its kernels only read
    # correctly after a save/load round trip (load converts them), so score the reloaded checkpoint.
    with tempfile.TemporaryDirectory(prefix="gptqmodel_") as tmp:
        with contextlib.nullcontext() if args.verbose else _silenced():
            qmodel.save(tmp)
            out["model"] = GPTQModel.load(tmp, device="cpu", dtype=torch.float32)
    out["packed"] = {}
    for name, mod in out["model"].model.named_modules():
        if hasattr(mod, "qweight") and hasattr(mod, "dequantize_weight"):
            with torch.no_grad():
                out["packed"][name] = mod.dequantize_weight().float().T.contiguous()  # GPTQ packs (in, out)
    return out


def solver_check(fp, theirs: dict, bits: int, args: argparse.Namespace) -> float:
    """Our `gptq_solve` on GPTQModel's own Hessians: the share of its solver's weights reproduced bit-exactly.

    This isolates the solver from the calibration pipeline (whose fp32 Hessians differ from ours in the
    last bits, through summation order, which is enough to flip some roundings downstream).
    """
    from ptq_bench.quant.gptq import gptq_solve

    mods = dict(fp.named_modules())
    same = total = 0
    for name, H in theirs["hessians"].items():
        if name not in theirs["solved"]:
            continue
        q, _, _ = gptq_solve(weight_of(mods, name), H, bits, args.group_size, args.damp, 128, False, True, False)
        same += int((q.float() == theirs["solved"][name]).sum())
        total += q.numel()
    return same / total if total else float("nan")


@contextlib.contextmanager
def _silenced():
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def load_weights_into(model_dir: str, weights: dict):
    """An fp32 copy of the FP model with `weights` (name -> (out, in)) in place of its linears."""
    return weights_into(load_fp(model_dir), weights)


def weights_into(model, weights: dict):
    """`model` (changed in place) with `weights` (name -> (out, in)) in place of its linears."""
    import torch

    mods = dict(model.named_modules())
    for name, w in weights.items():
        target = weight_of(mods, name)
        if tuple(w.shape) != tuple(target.shape):
            raise RuntimeError(f"{name}: GPTQModel weight {tuple(w.shape)} vs model {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(w)
    return model


def weight_agreement(ours, theirs_weights: dict, fp) -> dict:
    """How close the two quantized weight sets are: the share of bit-equal weights (overall, and in the decoder
    block with the least), how many differ, and the difference relative to the quantization error itself."""

    o_mods, f_mods = dict(ours.named_modules()), dict(fp.named_modules())
    blocks: dict[str, tuple[int, int]] = {}  # block index -> (bit-equal weights, weights)
    rel = []
    for name, wt in theirs_weights.items():
        wo, wf = weight_of(o_mods, name).float(), weight_of(f_mods, name).float()
        block = name.split(".layers.")[-1].split(".")[0]
        same, total = blocks.get(block, (0, 0))
        blocks[block] = (same + int((wo == wt).sum()), total + wt.numel())
        rel.append(float((wo - wt).norm() / (wt - wf).norm().clamp(min=1e-12)))
    rel.sort()
    same, total = sum(s for s, _ in blocks.values()), sum(t for _, t in blocks.values())
    return {"same": same / max(total, 1), "differ": total - same, "total": total,
            "least_block": min((s / t for s, t in blocks.values()), default=float("nan")),
            "rel_median": rel[len(rel) // 2] if rel else float("nan"),
            "rel_max": rel[-1] if rel else float("nan"), "n": len(rel)}


def matched_check(model_dir: str, bits: int, args: argparse.Namespace, calib, theirs: dict, ppl_theirs: float,
                  score) -> tuple[str, float]:
    """Ours with each Hessian summed as GPTQModel sums it (fp32 X^T X per batch, scaled once): the one
    difference left between the two pipelines where groups start at block boundaries. One line: the share of
    weights bit-equal to GPTQModel's, overall and in the least block, and both perplexities; and ours' perplexity
    (the envelope's "summed as GPTQModel" run, not run again there)."""
    with hessian_summed(HESSIAN_SUMS["summed as GPTQModel"]):
        ours = quantize_ours(model_dir, bits, args, calib)[0]
    agree = weight_agreement(ours, theirs["solved"], ours)  # (its third argument scales only figures not shown here)
    ppl = score(ours)
    return (f"[w{bits}] ours with the Hessians summed as GPTQModel sums them: {100 * agree['same']:.2f}% of weights "
            f"bit-equal to GPTQModel's ({agree['differ']} of {agree['total']} differ; least block "
            f"{100 * agree['least_block']:.2f}%), ppl {ppl:.4f} against its {ppl_theirs:.4f}"), ppl


def perturbed_pair(model_dir: str, tok, fp, bits: int, args: argparse.Namespace, calib, seed: int, score,
                   ours_ppl: float | None = None) -> tuple[float, float]:
    """(ours, GPTQModel's) perplexity, both sides quantizing the same FP weights x (1 + 1e-6 N(0,1))
    (gptq_envelope.perturbed, `seed`); GPTQModel loads them from a float32 checkpoint saved with `tok`. `ours_ppl`:
    ours on these weights, already measured (the envelope's noise run is seed 0's), so not run again."""
    noisy = perturbed(fp, seed)
    if ours_ppl is None:
        ours_ppl = score(quantize_ours(model_dir, bits, args, calib, copy.deepcopy(noisy))[0])
    with tempfile.TemporaryDirectory(prefix="gptq_perturbed_") as tmp:
        with contextlib.nullcontext() if args.verbose else _silenced():  # its shard-writing progress bar
            noisy.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        theirs = quantize_theirs(tmp, bits, args, calib)
    return ours_ppl, score(weights_into(noisy, theirs["solved"]))


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    docs, text = comparison_texts(args.data_dir)  # a missing data folder or file: before GPTQModel is imported
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, args.threads)))  # its loader pool needs 2
    try:
        import gptqmodel  # noqa: F401
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2

    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from ptq_bench.sweep import calibration_windows, encode_stream

    torch.set_num_threads(args.threads)
    model_dir = str(Path(args.model).resolve())
    tok = AutoTokenizer.from_pretrained(model_dir)

    calib = torch.from_numpy(calibration_windows(encode_stream(tok, docs), args.nsamples, args.seqlen, args.seed))
    test_ids = torch.from_numpy(np.asarray(tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64))
    max_windows = args.max_windows or None
    n_windows = min(test_ids.numel() // args.seqlen, max_windows or 1 << 62)
    print(f"model {model_dir}\ncalibration: {args.nsamples} x {args.seqlen} C4-train windows (seed {args.seed}); "
          f"wikitext2: {n_windows} x {args.seqlen} windows; group {args.group_size}, damp {args.damp}, "
          f"true_sequential {args.true_sequential}, threads {args.threads}", flush=True)

    fp = load_fp(model_dir)
    def score(model) -> float:
        return perplexity(model, test_ids, args.seqlen, max_windows)

    fp_ppl = score(fp)
    print(f"FP ppl {fp_ppl:.4f}", flush=True)

    warm_up(model_dir, args, calib[:2])

    rows = []
    for bits in args.bits:
        t_ours, t_theirs = [], []
        for _ in range(max(1, args.repeats)):  # alternate the sides, keep each one's best time
            ours, t = quantize_ours(model_dir, bits, args, calib)
            t_ours.append(t)
            theirs = quantize_theirs(model_dir, bits, args, calib)
            t_theirs.append(theirs["seconds"])
        ppl_ours = score(ours)
        print(f"[w{bits}] ours: ppl {ppl_ours:.4f}, {min(t_ours):.1f}s", flush=True)

        theirs_fp = load_weights_into(model_dir, theirs["solved"])
        ppl_theirs = score(theirs_fp)
        agree = weight_agreement(ours, theirs["solved"], fp)
        solver_same = solver_check(fp, theirs, bits, args)
        if bits == args.bits[0] and not args.true_sequential:
            n, worst, ours_fwd, theirs_fwd = hessian_check(fp, calib, theirs)
            print(f"block 0 Hessians of {n} linears, ours against GPTQModel's (trace-normalised): worst relative "
                  f"difference {worst:.2e}; against transformers' plain forward: ours {ours_fwd:.2e}, GPTQModel's "
                  f"{theirs_fwd:.2e}", flush=True)
            blocks, worst = stream_check(model_dir, calib, theirs)
            print(f"every block's input: GPTQModel's quantized blocks replayed by our runner give each block's first "
                  f"group's Hessians within {worst:.2e} of GPTQModel's ({blocks} blocks)", flush=True)
        ppl_ckpt = float("nan")
        if theirs["packed"]:
            pk = weight_agreement(theirs_fp, theirs["packed"], fp)
            ppl_ckpt = score(load_weights_into(model_dir, theirs["packed"]))
            print(f"[w{bits}] GPTQModel checkpoint (int weights, fp16 scales) dequantized: ppl {ppl_ckpt:.4f}; "
                  f"|W_ckpt - W_solver| / |W_solver - W_fp| median {pk['rel_median']:.2e}", flush=True)
            try:  # its own CPU kernel (fp32 here: TorchFusedLinear; needs in_features % group_size == 0)
                with contextlib.nullcontext() if args.verbose else _silenced():
                    ppl_kernel = score(theirs["model"].model.eval())
                print(f"[w{bits}] GPTQModel checkpoint through its own CPU kernel: ppl {ppl_kernel:.4f}", flush=True)
            except Exception as exc:  # a sanity check only
                print(f"[w{bits}] GPTQModel kernel forward failed: {type(exc).__name__}: {str(exc)[:200]}",
                      flush=True)
        print(f"[w{bits}] GPTQModel: ppl {ppl_theirs:.4f}, {min(t_theirs):.1f}s; {agree['n']} linears, "
              f"{100 * agree['same']:.2f}% of weights bit-equal to ours, |W_ours - W_theirs| / |W_theirs - W_fp| "
              f"median {agree['rel_median']:.2e}, max {agree['rel_max']:.2e}; our solver on its Hessians "
              f"reproduces {100 * solver_same:.2f}% of its weights bit-exactly", flush=True)
        line, ppl_matched = matched_check(model_dir, bits, args, calib, theirs, ppl_theirs, score)
        print(line, flush=True)
        found: dict[str, float] = {}
        if args.envelope:
            found = envelope(lambda m, b=bits: quantize_ours(model_dir, b, args, calib, m)[0], score, fp,
                             done={"summed as GPTQModel": ppl_matched})
            print(envelope_line(bits, ppl_ours, ppl_theirs, found), flush=True)
        if args.perturb:
            pairs = [perturbed_pair(model_dir, tok, fp, bits, args, calib, seed, score,
                                    found.get(NOISE) if seed == 0 else None) for seed in range(args.perturb)]
            print(paired_line(bits, [ppl_ours, *(o for o, _ in pairs)], [ppl_theirs, *(t for _, t in pairs)]),
                  flush=True)
        rows.append((bits, ppl_ours, ppl_theirs, ppl_ckpt, min(t_ours), min(t_theirs), theirs["pack_s"], agree,
                     solver_same))
        del ours, theirs, theirs_fp

    head = (f"{'bits':>4} {'FP ppl':>9} {'ours ppl':>9} {'theirs':>9} {'ratio':>7} {'ours s':>7} {'theirs s':>8} "
            f"{'t ratio':>7} {'W equal':>8} {'solver eq':>9}" + (f" {'ckpt ppl':>9} {'pack s':>6}" if args.pack else "")
            + "  within")
    print("\n" + head + "\n" + "-" * len(head))
    ok_all = True
    for bits, po, pt, pk, to, tt, tp, agree, solver_same in rows:
        ratio = po / pt
        ok = abs(ratio - 1) <= args.tolerance
        ok_all &= ok
        print(f"{bits:>4} {fp_ppl:>9.3f} {po:>9.3f} {pt:>9.3f} {ratio:>7.4f} {to:>7.1f} {tt:>8.1f} {to / tt:>7.3f} "
              f"{100 * agree['same']:>7.2f}% {100 * solver_same:>8.2f}%" + (f" {pk:>9.3f} {tp:>6.1f}" if args.pack else "")
              + f"  {'yes' if ok else 'NO'} (|ratio-1| {'<=' if ok else '>'} {100 * args.tolerance:g}%)")
    return 0 if ok_all else 1


if __name__ == "__main__":
    exit_with(main)
