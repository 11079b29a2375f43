"""Method settings as typed, bounded configs, and the light catalog of method names.

Pure dataclasses (no torch) so that `recipe.py` and `ptq-bench validate` can check every setting
without importing the methods. Each method module re-exports its config from here; its solver is
registered under the same name (`@register(name)`), and the registry reads the config class and the
calibration need from `CATALOG` (one place for each).
Bounds are field metadata (`ptq_bench.config.bound`), checked by the one typed loader both when a
recipe is read and when a config is constructed directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptq_bench.config import bound, check_fields, from_dict

TERNARY = 1.58  # w_bits value naming the ternary (b1.58) grid
WEIGHT_GRANULARITIES = ("tensor", "channel", "group")
ACT_GRANULARITIES = ("token", "tensor")
W_BITS = (1, TERNARY, 2, 3, 4, 5, 6, 7, 8, 16)  # absmax / smoothquant weight grids; 16 = unquantized
A_BITS = (2, 3, 4, 5, 6, 7, 8, 16)  # dynamic activation bits; 16 = not quantized
GPTQ_W_BITS = (TERNARY, 2, 3, 4, 8)
QUIP_W_BITS = (2, 3, 4)
TRANSFORMS = ("hadamard", "orthogonal")
SEED_MAX = 2**32 - 1


def refuse_unused_group_size(cfg: Any) -> None:
    """A group_size other than the default is read only by w_granularity "group": elsewhere it is refused, not
    ignored (a row would name a setting its weights never had)."""
    default = type(cfg).__dataclass_fields__["group_size"].default
    if cfg.w_granularity != "group" and cfg.group_size != default:
        raise ValueError(f"group_size {cfg.group_size} needs w_granularity: group (it is {cfg.w_granularity!r}, "
                         "which has no groups)")


def refuse_unused_a_granularity(cfg: Any) -> None:
    """An a_granularity other than the default places activation scales, which a_bits 16 never has: refused,
    not ignored (a row would name a setting that did not happen). An a_bits sweep drops it on its 16 cells
    (`cells._sweep_params`)."""
    default = type(cfg).__dataclass_fields__["a_granularity"].default
    if cfg.a_bits == 16 and cfg.a_granularity != default:
        raise ValueError(f"a_granularity {cfg.a_granularity!r} needs a_bits below 16 (a_bits 16 leaves the "
                         "activations unquantized)")


@dataclass(frozen=True)
class AbsmaxConfig:
    w_bits: float = bound(8, choices=W_BITS)  # weight bits: 1 (sign), 1.58 (ternary), 2..8, 16 = unquantized
    w_granularity: str = bound("channel", choices=WEIGHT_GRANULARITIES)  # one scale per tensor / channel / group
    group_size: int = bound(128, min=1)  # input columns per scale when w_granularity == "group"
    a_bits: int = bound(16, choices=A_BITS)  # activation bits, dynamic absmax; 16 = not quantized
    a_granularity: str = bound("token", choices=ACT_GRANULARITIES)  # one activation scale per token / tensor

    def __post_init__(self) -> None:
        check_fields(self)
        refuse_unused_group_size(self)
        refuse_unused_a_granularity(self)
        if self.w_bits == 16 and self.a_bits == 16:  # a row claiming a method ran on a model left as it was
            raise ValueError("w_bits 16 with a_bits 16 quantizes nothing (16 = unquantized): the model's base "
                             "row is that row")


@dataclass(frozen=True)
class SmoothQuantConfig:
    alpha: float = bound(0.5, min=0.0, max=1.0)  # migration strength: 0 = all on activations, 1 = all on weights
    w_bits: float = bound(8, choices=W_BITS)  # weight bits after smoothing (absmax): 1, 1.58, 2..8, 16
    a_bits: int = bound(8, choices=A_BITS)  # activation bits (dynamic absmax); 16 = not quantized
    w_granularity: str = bound("channel", choices=WEIGHT_GRANULARITIES)  # one scale per tensor / channel / group
    a_granularity: str = bound("token", choices=ACT_GRANULARITIES)  # one activation scale per token / tensor
    group_size: int = bound(128, min=1)  # input columns per weight scale when w_granularity == "group"

    def __post_init__(self) -> None:  # W16A16 is smoothing alone (the fold changes every weight): allowed
        check_fields(self)
        refuse_unused_group_size(self)
        refuse_unused_a_granularity(self)


@dataclass(frozen=True)
class GPTQConfig:
    w_bits: float = bound(4, choices=GPTQ_W_BITS)  # 2, 3, 4, 8, or 1.58 = ternary absmean grid
    group_size: int = bound(128, min=-1)  # columns per quantizer fit; -1 = one per row
    damp: float = bound(0.01, min=0.0, lt=1.0)  # fraction of mean(diag H) added to the diagonal
    block_size: int = bound(128, min=1)  # columns per lazy-update block
    act_order: bool = False  # process columns by descending diag(H)
    sym: bool = True  # symmetric min-max grid (zero implicit); False = asymmetric, zeros stored
    static_groups: bool = False  # fit every group's quantizer on the original weights first
    true_sequential: bool = False  # inside a block: q/k/v, then o, then gate/up, then down
    a_bits: int = bound(16, choices=A_BITS)  # dynamic per-token activation bits; 16 = not quantized

    def __post_init__(self) -> None:
        check_fields(self)
        if self.group_size == 0:
            raise ValueError("group_size must be -1 (per row) or >= 1, got 0")
        if self.w_bits == TERNARY and not self.sym:
            raise ValueError("sym must be True for w_bits 1.58 (the ternary grid is symmetric)")


@dataclass(frozen=True)
class QuIPConfig:
    w_bits: int = bound(2, choices=QUIP_W_BITS)  # 2, 3 or 4 bits on a uniform grid
    transform: str = bound("hadamard", choices=TRANSFORMS)  # rotation: hadamard (randomized) | orthogonal (butterfly)
    rescale: bool = True  # diagonal W/H rescaling before the rotation (reference `pre_rescale`)
    damp: float = bound(0.01, min=0.0, lt=1.0)  # fraction of mean(diag H) added to the diagonal
    seed: int = bound(0, min=0, max=SEED_MAX)  # seed of the random rotations
    block_size: int = bound(128, min=1)  # columns per lazy-update block of the LDLQ loop
    a_bits: int = bound(16, choices=A_BITS)  # dynamic per-token activation bits; 16 = not quantized

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class MethodEntry:
    config: type  # the method's frozen config dataclass
    needs_calibration: bool  # the solver reads calibration windows
    display: str  # name in tables and plots
    needs_smoothing: bool = False  # folds scales into the norms that feed linears (families.Family.smooth)


# method name -> entry; the registry (quant/registry.py) reads config and calibration need from here
CATALOG: dict[str, MethodEntry] = {
    "absmax": MethodEntry(AbsmaxConfig, needs_calibration=False, display="Absmax"),
    "smoothquant": MethodEntry(SmoothQuantConfig, needs_calibration=True, display="SmoothQuant",
                                 needs_smoothing=True),
    "gptq": MethodEntry(GPTQConfig, needs_calibration=True, display="GPTQ"),
    "quip": MethodEntry(QuIPConfig, needs_calibration=True, display="QuIP"),
}


def make_config(method: str, params: dict[str, Any], where: str = "") -> Any:
    """The frozen config of `method` from recipe params (unknown key, wrong type, out of bounds: ConfigError)."""
    return from_dict(CATALOG[method].config, params, where)


# config keys that W/A columns already show, or that never change a row's meaning when at their default
_SHOWN_ELSEWHERE = ("w_bits", "a_bits", "w_granularity", "group_size", "a_granularity")


def setting_label(method: str, config: dict[str, Any]) -> str:
    """A short name of a setting beyond its W/A bits, for tables: weight granularity ("channel", "g128",
    "tensor"), then every other key that differs from the method's default ("alpha=0.8", "act_order")."""
    if method not in CATALOG or not config:
        return ""
    defaults = CATALOG[method].config()
    parts = []
    grouped = hasattr(defaults, "group_size") and not hasattr(defaults, "w_granularity")  # GPTQ: always groups
    gran = config.get("w_granularity", "group" if grouped else None)
    group = config.get("group_size")
    if gran == "group" and group is not None:
        parts.append("channel" if group == -1 else f"g{group}")
    elif gran is not None:
        parts.append(gran)
    if config.get("a_granularity", "token") != "token" and config.get("a_bits", 16) != 16:
        parts.append(f"A per {config['a_granularity']}")
    for key, value in config.items():
        if key in _SHOWN_ELSEWHERE or getattr(defaults, key, value) == value:
            continue
        parts.append(key if value is True else f"no {key}" if value is False else f"{key}={value}")
    return " ".join(parts)


def setting_name(label: str, method: str, config: dict[str, Any]) -> str:
    """A cell's label with its setting ("absmax W4A16 g128"): labels alone repeat across settings."""
    return f"{label} {setting_label(method, config)}".strip()
