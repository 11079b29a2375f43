"""The one table of model kinds: every place that needs a kind's facts reads them from here.

A kind is what a model *is*: how its linears are built (`mode`), its native (weight, activation) bits,
its name in tables, the training schedule it gets by default, and whether post-training quantization
may touch it. Leaf module: no torch. Adding a kind is one entry here (plus its schedule in
SCHEDULES below if it is trained here, and its BitLinear mode in models/bitlinear.py if new).

Decision (issue 9/12 session): PTQ of a model whose linears are already low-bit is refused; such a
model is evaluated as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptq_bench.config import short

# Defaults sized for the small CPU models of the shipped recipes; the papers' large-model values are
# in ../shared/reference/paper_tables.md (BitNet b1: 2.4e-3 at 125M; b1.58: 1.5e-3 -> 1e-3; LLaMA 2.5e-4).
# Keyed by schedule name; a kind's default schedule is `KINDS[kind].schedule`; models/train.py runs them.
SCHEDULES = {
    "llama_cosine": dict(lr=2.5e-3, weight_decay=0.1, betas=(0.9, 0.95), kind="cosine"),
    "b158_two_stage": dict(lr=4e-3, lr_stage2=4e-3 * 2 / 3, weight_decay=0.1, wd_stage2=0.0, betas=(0.9, 0.95), kind="two_stage"),
    "b1_linear": dict(lr=4e-3, weight_decay=0.01, betas=(0.9, 0.98), kind="linear"),
}


@dataclass(frozen=True)
class Kind:
    name: str
    display: str  # name in tables and plots
    native_bits: tuple[float, float]  # nominal (weight bits, activation bits) of the unquantized model
    mode: str | None  # BitLinear mode of its linears ("b158" | "b1"); None = nn.Linear (or not built here)
    schedule: str | None  # default training schedule (SCHEDULES above); None = loaded, never trained
    ptq_default: bool  # a default target of quantize entries that list no `models:`
    ptq_allowed: bool  # may a quantize entry target it at all


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("fp16", "FP16", (16, 16), None, "llama_cosine", ptq_default=True, ptq_allowed=True),
    Kind("bitnet_b158", "BitNet b1.58", (1.58, 8), "b158", "b158_two_stage", ptq_default=False, ptq_allowed=False),
    Kind("bitnet_b1", "BitNet b1", (1, 8), "b1", "b1_linear", ptq_default=False, ptq_allowed=False),
    # a transformers BitNet checkpoint loaded through `source:` (AutoBitLinear, evaluation only)
    Kind("bitnet_hf", "BitNet (HF)", (1.58, 8), None, None, ptq_default=False, ptq_allowed=False),
    # a BitNet b1 model exported by `export_hf`: transformers' ternary format holding only {-1, +1}
    Kind("bitnet_hf_b1", "BitNet b1 (HF)", (1, 8), None, None, ptq_default=False, ptq_allowed=False),
)}

TRAINED_KINDS = tuple(name for name, k in KINDS.items() if k.schedule is not None)  # buildable here
BITNET_MODES = {name: k.mode for name, k in KINDS.items() if k.mode is not None}  # kind -> BitLinear mode
NATIVE_BITS = {name: k.native_bits for name, k in KINDS.items()}
DISPLAY_NAMES = {name: k.display for name, k in KINDS.items()}


def train_steps(total_tokens: int, seq_len: int, batch_size: int) -> int:
    """Optimizer steps of a training run (whole batches only)."""
    return total_tokens // (seq_len * batch_size)


def trained_tokens(total_tokens: int, seq_len: int, batch_size: int) -> int:
    """The tokens a run of `total_tokens` trains on: its whole batches' (4,100 at 16 x 64 trains 4,096)."""
    return train_steps(total_tokens, seq_len, batch_size) * seq_len * batch_size


def ptq_allowed(name: object) -> bool:
    """May a quantize entry target a model of kind `name` (its KINDS entry; an unknown kind may not)?"""
    return name in KINDS and KINDS[name].ptq_allowed


def get_kind(name: str) -> Kind:
    if name not in KINDS:
        raise ValueError(f"unknown model kind {short(name)} (known: {', '.join(KINDS)})")
    return KINDS[name]


def schedule_keys(kind: str) -> set[str]:
    """The hyperparameters of `kind`'s default schedule (lr_stage2 only where there is a second stage)."""
    return set(SCHEDULES[get_kind(kind).schedule])
