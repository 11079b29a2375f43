"""One architecture config -> matched FP16 / BitNet LLaMA-alike models; save, load and HF export.

A BitNet model is a stock `LlamaForCausalLM` whose attention and MLP linears are `BitLinear`s
(embeddings, final norm and LM head stay high precision). Its block-level RMSNorms before attention
and before the MLP keep their modules but lose their learnable gain (a buffer of ones): the
normalization role moves into each BitLinear's own RMSNorm, as the b1.58 training FAQ prescribes, and
the block norm is then a per-token rescale that the inner RMSNorm undoes (up to eps). Keeping the
modules keeps the model a plain Llama, so `export_hf` writes a checkpoint that stock transformers
loads with its own BitNet integration and reproduces our logits.

Two on-disk forms:
- `save_model` / `load_model`: toolkit form, latent (unquantized) weights, safetensors + ptq_bench.json.
- `export_hf`: transformers' BitNet format (2-bit packed weights + weight_scale), or plain
  `save_pretrained` for fp16; loads in stock `AutoModelForCausalLM.from_pretrained`, no ptq_bench.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ptq_bench.kinds import BITNET_MODES, TRAINED_KINDS
from ptq_bench.models.arch import ArchConfig
from ptq_bench.models.bitlinear import BitLinear, pack_ternary
from ptq_bench.models.towers import tower_tensor_ids

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

MODEL_KINDS = TRAINED_KINDS  # kinds built here (ptq_bench/kinds.py is the table)
# Linears inside each decoder layer that become BitLinear in a BitNet model.
BITLINEAR_TARGETS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)
# Block-level norms whose gain is fixed to ones in a BitNet model (their role moves into BitLinear).
BLOCK_NORMS = ("input_layernorm", "post_attention_layernorm")
META_FILE = "ptq_bench.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def llama_config(arch: ArchConfig, vocab_size: int) -> LlamaConfig:
    """The transformers LlamaConfig of `arch`: SwiGLU (silu), RoPE, RMSNorm, no biases, untied head."""
    from transformers import LlamaConfig

    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        hidden_act="silu",
        max_position_embeddings=arch.max_seq_len,
        rms_norm_eps=arch.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=None,  # the tokenizer (saved beside the model) owns special tokens
        eos_token_id=None,
        pad_token_id=None,
    )


def arch_from_llama_config(cfg: LlamaConfig) -> ArchConfig:
    """Inverse of `llama_config` (for models built here)."""
    rope = cfg.rope_parameters or {}
    return ArchConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        max_seq_len=cfg.max_position_embeddings,
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        rms_norm_eps=float(cfg.rms_norm_eps),
    )


def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(MODEL_KINDS)})")


def _fix_gain_to_ones(norm: nn.Module) -> None:
    """Turn an RMSNorm's learnable gain into a buffer of ones (same name, same state_dict key)."""
    ones = torch.ones_like(norm.weight.detach())
    del norm.weight
    norm.register_buffer("weight", ones)


def build_model(kind: str, arch: ArchConfig, vocab_size: int, seed: int) -> LlamaForCausalLM:
    """A freshly initialized fp32 CPU model of `kind`; same seed -> same initial weights across kinds.

    The stock LlamaForCausalLM is initialized under `seed` (without touching the caller's RNG
    state); a BitNet kind then swaps in BitLinears that copy the initialized latent weights.
    """
    from transformers import LlamaForCausalLM

    _check_kind(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config(arch, vocab_size))
    if kind in BITNET_MODES:
        swap_bitlinears(model, BITNET_MODES[kind], arch.rms_norm_eps)
        for layer in model.model.layers:
            for name in BLOCK_NORMS:
                _fix_gain_to_ones(layer.get_submodule(name))
    return model.eval()


def swap_bitlinears(model: LlamaForCausalLM, mode: str, rms_norm_eps: float) -> None:
    """Every block linear (BITLINEAR_TARGETS) replaced by a BitLinear of `mode` that copies its latent weight."""
    for layer in model.model.layers:
        for name in BITLINEAR_TARGETS:
            layer.set_submodule(name, BitLinear.from_linear(layer.get_submodule(name), mode, rms_norm_eps))


def dtype_name(model: nn.Module) -> str:
    """The model's parameter dtype as a name ("float32", "bfloat16", ...)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def cast_model(model: LlamaForCausalLM, dtype: torch.dtype) -> LlamaForCausalLM:
    """`model.to(dtype)` that keeps the rotary frequency buffers in fp32, as `from_pretrained` does, and the
    parameters its model class keeps in float32 (`kept_in_float32`).

    A plain `.to(torch.bfloat16)` also rounds `rotary_emb.inv_freq`, which shifts every RoPE angle
    and (measured) moves logits of a tiny model by ~1e-2 against the same weights loaded by
    transformers. Returns the same model, cast in place. A finite value the dtype cannot hold (|w| > 65504 in
    float16) would become inf: refused, one line (`refuse_overflow`).
    """
    infs = {n: int(torch.isinf(p).sum()) for n, p in model.named_parameters() if p.is_floating_point()}
    rope = {n: b.detach().float() for n, b in model.named_buffers() if n.endswith("inv_freq")}
    kept = kept_in_float32(model, dtype)
    kept_params = {n: p.detach().float() for n, p in model.named_parameters() if n in kept}
    rope.update({n: b.detach().float() for n, b in model.named_buffers() if n in kept})
    model.to(dtype)
    for name, buf in rope.items():
        module_name, _, leaf = name.rpartition(".")
        model.get_submodule(module_name)._buffers[leaf] = buf  # .to(dtype) cast a copy; restore the fp32 one
    for name, param in model.named_parameters():
        if name in kept_params:
            param.data = kept_params[name]
    refuse_overflow(model, infs, dtype)
    return model


def refuse_overflow(model: nn.Module, infs_before: dict[str, int], dtype: torch.dtype) -> None:
    """One line naming the first parameter the cast to `dtype` turned from finite into inf."""
    from ptq_bench.errors import PtqBenchError

    for name, p in model.named_parameters():
        if name in infs_before and (n := int(torch.isinf(p).sum()) - infs_before[name]) > 0:
            dt = str(dtype).removeprefix("torch.")
            raise PtqBenchError(f"dtype: {dt} overflows {n} of {name}'s {p.numel()} values to inf (beyond "
                                f"±{torch.finfo(dtype).max:.6g}): use a wider dtype (float32) for this model")


def kept_in_float32(model: nn.Module, dtype: torch.dtype) -> set[str]:
    """The parameters and buffers `from_pretrained(dtype=dtype)` keeps in float32: those its model class lists in
    `_keep_in_fp32_modules(_strict)` (Kimi-Linear's router weight and dt_bias, DeepSeek-V3's routing bias),
    matched by transformers' own dtype plan and pattern."""
    plan = model._get_dtype_plan(dtype) if hasattr(model, "_get_dtype_plan") else {}
    if not plan:
        return set()
    from transformers.core_model_loading import build_glob_alternation

    pattern = build_glob_alternation(list(plan))[0]
    return {n for n, _ in (*model.named_parameters(), *model.named_buffers()) if pattern.search(n)}


def _detect_mode(model: nn.Module) -> str | None:
    """The BitLinear mode of the model's linears; None = float (nn.Linear)."""
    modes = {m.mode for m in model.modules() if isinstance(m, BitLinear)}
    if len(modes) > 1:
        raise ValueError(f"model mixes BitLinear modes {sorted(modes)}")
    return modes.pop() if modes else None


def _check_model_kind(model: nn.Module, kind: str) -> None:
    """The model's linears are those of `kind` (kinds.KINDS[kind].mode: a float kind has none)."""
    _check_kind(kind)
    found, want = _detect_mode(model), BITNET_MODES.get(kind)
    if found != want:
        raise ValueError(f"kind {kind!r} given, but the model's linears are {found or 'float'}, "
                         f"not {want or 'float'}")


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def save_model(model: LlamaForCausalLM, kind: str, out_dir: Path) -> None:
    """Toolkit form: latent weights as they are (safetensors), config.json, and ptq_bench.json.

    For a float kind (fp16) the folder is also a plain HF checkpoint. `load_model` restores it exactly.
    """
    _check_model_kind(model, kind)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = arch_from_llama_config(model.config)
    dtype = dtype_name(model)
    _save_safetensors(model.state_dict(), out_dir / WEIGHTS_FILE)
    if kind not in BITNET_MODES:  # a float kind: the folder is a plain HF checkpoint too
        cfg = copy.deepcopy(model.config)
        cfg.dtype = dtype
        cfg.architectures = ["LlamaForCausalLM"]
        cfg.save_pretrained(out_dir)
    meta = {"format": "ptq-bench", "format_version": FORMAT_VERSION, "kind": kind, "arch": asdict(arch),
            "vocab_size": model.config.vocab_size, "dtype": dtype}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_model(path: str | Path, device: str = "cpu") -> tuple[LlamaForCausalLM, str]:
    """(model, kind) from any `source:` form (`ptq_bench.sources`): a `save_model` folder, an HF checkpoint
    folder, a GGUF file, a packaged model's short name, or a hub id.

    kind is one of MODEL_KINDS for toolkit folders; for other checkpoints "fp16" (plain, GGUF
    dequantized) or "bitnet_hf" (a transformers BitNet checkpoint, evaluation only).
    """
    from ptq_bench.source_load import load_source
    from ptq_bench.sources import inspect_source

    model, _, kind = load_source(inspect_source(str(path)), device, tokenizer=False)
    return model, kind


def load_toolkit(path: Path, device: str = "cpu") -> LlamaForCausalLM:
    """The model of a `save_model` folder, exactly as saved (latent weights, dtype)."""
    from safetensors.torch import load_file

    meta = json.loads((path / META_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path / META_FILE}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}")
    model = build_model(meta["kind"], ArchConfig.from_dict(meta["arch"]), meta["vocab_size"], seed=0)
    cast_model(model, getattr(torch, meta["dtype"]))
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=True)
    return model.to(device).eval()


def export_hf(model: LlamaForCausalLM, kind: str, out_dir: Path) -> None:
    """A standard HF folder (safetensors) that stock transformers loads without ptq_bench.

    A float kind (fp16): `save_pretrained`. BitNet: transformers' offline BitNet format, linear_class "bitlinear":
    each BitLinear's weight is the ternary W_q packed 4 per byte (`pack_ternary`, uint8 (out/4, in)),
    `weight_scale` is s_w with shape (1,) in the model dtype (transformers divides by it), and
    `rms_norm.weight` is copied; b1 weights are exported as ternary values in {-1, +1}.
    """
    from ptq_bench.sources import EXPORTED_KIND

    _check_model_kind(model, kind)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = next(model.parameters()).dtype
    if kind not in BITNET_MODES:  # a float kind
        model.save_pretrained(out_dir)
        return
    state = {}
    bitlinears = {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}
    for key, value in model.state_dict().items():
        module_name, _, leaf = key.rpartition(".")
        if module_name in bitlinears and leaf == "weight":
            w_q, s_w = bitlinears[module_name].quantized_weight()
            state[key] = pack_ternary(w_q)
            state[f"{module_name}.weight_scale"] = s_w.reshape(1).to(dtype)
        else:
            state[key] = value
    cfg = copy.deepcopy(model.config)
    cfg.dtype = str(dtype).removeprefix("torch.")
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.quantization_config = {
        "quant_method": "bitnet",
        "modules_to_not_convert": ["lm_head"],
        "linear_class": "bitlinear",
        "quantization_mode": "offline",
        "use_rms_norm": True,
        "rms_norm_eps": model.config.rms_norm_eps,
        EXPORTED_KIND: kind,  # b1's {-1, +1} in a ternary format: `source:` reads it back as bitnet_hf_b1
    }
    cfg.save_pretrained(out_dir)
    _save_safetensors(state, out_dir / WEIGHTS_FILE)


@torch.no_grad()
def max_logit_diff(model_a: nn.Module, model_b: nn.Module, input_ids: torch.Tensor) -> float:
    """max |logits_a - logits_b| over a batch of token ids (both models in eval mode, fp32 compare)."""
    out = []
    for m in (model_a, model_b):
        device = next(m.parameters()).device
        out.append(m.eval()(input_ids=input_ids.to(device)).logits.float().cpu())
    return (out[0] - out[1]).abs().max().item()


PACKED_PER_BYTE = 4  # ternary weights per uint8 in transformers' packed BitNet layout (integrations/bitnet.py)


def _packed(model: nn.Module) -> dict[int, torch.Tensor]:
    """Packed ternary weights (uint8 buffers of transformers' BitNet linears), by tensor identity."""
    return {id(m.weight): m.weight for m in model.modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dtype == torch.uint8}


def parameter_count(model: nn.Module) -> int:
    """Parameters as the papers count them: a tied tensor once (as `parameters()`), and the weights of a
    transformers BitNet checkpoint, which it keeps packed in uint8 buffers rather than parameters. A multimodal
    wrapper's are its text decoder's and LM head's (`models.towers`: its towers are neither quantized nor run)."""
    towers = tower_tensor_ids(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in towers) + \
        sum(w.numel() * PACKED_PER_BYTE for w in _packed(model).values() if id(w) not in towers)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the stored weights as the papers count model memory: every high-precision tensor at
    16 bits (FP16/bf16), BitLinear weights packed at 2 bits (4 per byte, transformers' layout) plus
    one 16-bit scale each. Tied tensors (an LM head sharing the embedding) count once; a multimodal wrapper's
    towers not at all (`parameter_count`)."""
    total = 0
    bit_weights = {id(m.weight) for m in model.modules() if isinstance(m, BitLinear)}
    towers = tower_tensor_ids(model)
    tensors = {id(p): p for p in model.state_dict(keep_vars=True).values() if id(p) not in towers}  # tied: once
    packed = _packed(model)
    for p in tensors.values():
        if id(p) in bit_weights:
            total += -(-p.shape[0] // 4) * p.shape[1] + 2
        elif id(p) in packed:  # already 2 bits per weight (its scale is a float tensor of its own)
            total += p.numel()
        elif p.is_floating_point():
            total += p.numel() * 2
    return total
