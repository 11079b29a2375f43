"""The architecture schema: the recipe's `arch` section and the shape a model is built with (no torch).

`models/build.py` builds models from it; `recipe.py` validates it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptq_bench.config import bound, check_fields, from_dict


@dataclass(frozen=True)
class ArchConfig:
    """LLaMA-alike architecture shared by the FP16 and BitNet models of a matched pair."""

    hidden_size: int = bound(256, min=1, max=1 << 17)  # model width d; a multiple of num_heads and of 4 (2-bit packing)
    intermediate_size: int = bound(688, min=1, max=1 << 19)  # SwiGLU inner width; a multiple of 4 (2-bit packing)
    num_layers: int = bound(4, min=1, max=1024)  # decoder blocks
    num_heads: int = bound(4, min=1, max=1024)  # attention heads (no GQA); head_dim = hidden / heads, even
    max_seq_len: int = bound(512, min=1, max=1 << 22)  # longest context the model is built for (max_position_embeddings)
    rope_theta: float = bound(10000.0, gt=0.0)  # rotary embedding base
    rms_norm_eps: float = bound(1e-5, gt=0.0, lt=1.0)  # eps of every RMSNorm, block-level and inside BitLinear

    def __post_init__(self) -> None:
        check_fields(self)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"arch.hidden_size ({self.hidden_size}) must be a multiple of arch.num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"arch.hidden_size / arch.num_heads = {self.hidden_size // self.num_heads} must be even (rotary embeddings)")
        if self.rope_theta < 1.0:  # 1e-100: float32 base 0, inv_freq inf, a NaN forward "diverged" at step 0
            raise ValueError(f"arch.rope_theta ({self.rope_theta:g}) must be >= 1: rotary frequencies are "
                             "rope_theta^(-2i/head_dim), which below 1 rise with i (and overflow to inf)")
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 4:
                raise ValueError(f"arch.{name} ({getattr(self, name)}) must be a multiple of 4 (BitNet packs 4 weights per byte)")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "arch") -> ArchConfig:
        """Build from a mapping through the typed loader (unknown key, type, bounds: ConfigError naming it)."""
        return from_dict(cls, d, where)
