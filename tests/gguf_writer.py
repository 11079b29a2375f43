"""Tiny GGUF files of other architectures than llama, written the way llama.cpp's convert_hf_to_gguf.py
writes them: tensor names from gguf's own `TensorNameMap`, metadata keys the inverse of transformers'
`GGUF_CONFIG_MAPPING`, and each architecture's tensor transform the inverse of transformers'
`TENSOR_PROCESSORS` (llama's q/k row permutation, Gemma / Nemotron norms stored as w + 1, GPT-2's Conv1D
weights transposed, BLOOM's q/k/v split out of the per-head interleaving, Mamba's A stored as -exp(A_log),
stacked experts split into gate and up).

A GGUF carries only the config values its architecture's mapping names; transformers fills the others
with its config class's defaults. `gguf_model` therefore builds the tiny model from those defaults plus
the tiny family's values for the mapped keys only, so the GGUF describes the model exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tiny_families import FAMILY_CONFIGS

# GGUF general.architecture -> (tiny_families key, transformers' GGUF_CONFIG_MAPPING key, general.name)
ARCHS = {
    "llama": ("llama", "llama", "tiny llama"), "mistral": ("mistral", "mistral", "mistral"),
    "qwen2": ("qwen2", "qwen2", "tiny"), "qwen3": ("qwen3", "qwen3", "tiny"),
    "qwen2moe": ("qwen2_moe", "qwen2_moe", "tiny"), "qwen3moe": ("qwen3_moe", "qwen3_moe", "tiny"),
    "phi3": ("phi3", "phi3", "tiny"), "gemma2": ("gemma2", "gemma2", "tiny"), "gemma3": ("gemma3_text", "gemma3", "tiny"),
    "starcoder2": ("starcoder2", "starcoder2", "tiny"), "stablelm": ("stablelm", "stablelm", "tiny"),
    "falcon": ("falcon", "falcon", "tiny"), "gpt2": ("gpt2", "gpt2", "tiny"), "bloom": ("bloom", "bloom", "tiny"),
    "nemotron": ("nemotron", "nemotron", "tiny"), "mamba": ("mamba", "mamba", "tiny"), "lfm2": ("lfm2", "lfm2", "tiny"),
    "qwen35": ("qwen3_5_text", "", "tiny"),  # transformers' newer loader: its own metadata reader (below)
}
GGUF_ARCH = {"mistral": "llama"}  # llama.cpp writes Mistral as llama (transformers tells it by general.name)
GPT2_CONV1D = ("attn_qkv.weight", "ffn_down.weight", "ffn_up.weight", "attn_output.weight")


def gguf_config(arch: str, vocab_size: int) -> Any:
    """The tiny family's config reduced to what a GGUF of `arch` can carry (the rest: class defaults)."""
    import transformers
    from transformers.integrations.ggml import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    family, mapping_key, _ = ARCHS[arch]
    cls_name, kwargs = FAMILY_CONFIGS[family]
    if arch == "qwen35":  # one value head per key head: llama.cpp's tiling of value heads is then the identity
        kwargs = {**kwargs, "linear_num_value_heads": kwargs["linear_num_key_heads"],  # and 3 m-RoPE sections of 2
                  "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                                      "mrope_section": [2, 2, 2], "mrope_interleaved": True}}
        return getattr(transformers, cls_name)(vocab_size=vocab_size, bos_token_id=None, eos_token_id=None,
                                               pad_token_id=None, **kwargs)
    carried = {v for v in GGUF_CONFIG_MAPPING[mapping_key].values() if v}
    kept = {k: v for k, v in kwargs.items() if k in carried}
    if arch == "lfm2":  # its layer kinds travel as per-layer kv head counts; its MLP width as it is
        kept |= {"layer_types": kwargs["layer_types"], "block_auto_adjust_ff_dim": False}
    special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    gguf_defaults = GGUF_CONFIG_DEFAULTS_MAPPING.get(mapping_key, {})  # what transformers' GGUF loader sets
    return getattr(transformers, cls_name)(vocab_size=vocab_size, **{**special, **gguf_defaults, **kept})


def gguf_model(arch: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(gguf_config(arch, vocab_size))
    return model.float().eval()


def _qwen35_metadata(w: Any, cfg: Any) -> None:
    """What transformers' `gguf_config_mapping._qwen35_config` reads (the inverse of it)."""
    rope = cfg.rope_parameters
    for key, value in {"context_length": cfg.max_position_embeddings, "embedding_length": cfg.hidden_size,
                       "block_count": cfg.num_hidden_layers, "feed_forward_length": cfg.intermediate_size,
                       "attention.head_count": cfg.num_attention_heads, "attention.head_count_kv": cfg.num_key_value_heads,
                       "attention.key_length": cfg.head_dim, "attention.layer_norm_rms_epsilon": cfg.rms_norm_eps,
                       "full_attention_interval": cfg.layer_types.index("full_attention") + 1,
                       "ssm.conv_kernel": cfg.linear_conv_kernel_dim, "ssm.state_size": cfg.linear_key_head_dim,
                       "ssm.group_count": cfg.linear_num_key_heads, "ssm.time_step_rank": cfg.linear_num_value_heads,
                       "ssm.inner_size": cfg.linear_value_head_dim * cfg.linear_num_value_heads,
                       "rope.freq_base": float(rope["rope_theta"]),
                       "rope.dimension_count": int(rope["partial_rotary_factor"] * cfg.head_dim),
                       "rope.dimension_sections": [int(rope["partial_rotary_factor"] * cfg.head_dim) // 6] * 3 + [0]}.items():
        w.add_key_value(f"qwen35.{key}", value, _value_type(value))


def _metadata(w: Any, arch: str, cfg: Any) -> None:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    if arch == "qwen35":
        return _qwen35_metadata(w, cfg)
    g = GGUF_ARCH.get(arch, arch)
    for gguf_key, hf_key in GGUF_CONFIG_MAPPING[ARCHS[arch][1]].items():
        if not hf_key:
            continue
        hf_key = "norm_eps" if arch == "lfm2" and hf_key == "rms_norm_eps" else hf_key  # LFM2's own name
        value = (cfg.rope_parameters or {}).get("rope_theta") if hf_key == "rope_theta" else getattr(cfg, hf_key, None)
        if arch == "gpt2" and hf_key == "n_ctx":  # llama.cpp writes GPT-2's n_ctx (transformers reads n_positions)
            value = cfg.n_positions
        if arch == "lfm2" and hf_key == "num_key_value_heads":
            value = [value if t == "full_attention" else 0 for t in cfg.layer_types]
        if value is not None and not isinstance(value, (dict, str)):
            w.add_key_value(f"{g}.{gguf_key}", value, _value_type(value))


def _value_type(value: Any) -> Any:
    from gguf import GGUFValueType

    if isinstance(value, list):
        return GGUFValueType.ARRAY
    return GGUFValueType.BOOL if isinstance(value, bool) else GGUFValueType.UINT32 if isinstance(value, int) \
        else GGUFValueType.FLOAT32


def _tokenizer(w: Any, tok: Any, arch: str) -> None:
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in tok.all_special_tokens else 1 for t, _ in vocab])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m
                        for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    if arch.startswith("gemma"):  # transformers' Gemma tokenizer needs an unknown token (Gemma's: id 3)
        w.add_unk_token_id(tok.unk_token_id if tok.unk_token_id is not None else tok.eos_token_id)


def gguf_tensors(model: torch.nn.Module, arch: str) -> dict[str, np.ndarray]:
    """{GGUF tensor name: array} of `model`, as llama.cpp stores them."""
    import gguf

    cfg = model.config
    g = GGUF_ARCH.get(arch, arch)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == g),
                                     cfg.num_hidden_layers)
    tied = cfg.tie_word_embeddings or arch in ("falcon", "bloom")
    out = {}
    for hf, t in model.state_dict().items():
        base, _, suffix = hf.rpartition(".") if hf.endswith((".weight", ".bias")) else (hf, "", "")
        if tied and base == "lm_head":
            continue
        if base.endswith("experts.gate_up_proj"):  # (E, 2I, H): gate rows, then up rows
            gate, up = t.numpy().reshape(t.shape[0], 2, -1, t.shape[-1]).transpose(1, 0, 2, 3)
            stem = names.get_name(base.replace("gate_up_proj", "down_proj")).removesuffix("down_exps")
            out[f"{stem}gate_exps.weight"], out[f"{stem}up_exps.weight"] = gate, up
            continue
        name = names.get_name(base) or names.get_name(base.partition(".")[2])  # BLOOM: BloomModel's names
        if base.endswith("linear_attn.dt_bias"):  # Qwen3.5's, as llama.cpp names it
            name, suffix = names.get_name(base.replace("dt_bias", "A_log")).replace("ssm_a", "ssm_dt"), "bias"
        assert name is not None, f"{arch}: no GGUF name for {hf}"
        name = f"{name}.{suffix}" if suffix else name
        out[name] = _transform(arch, name, t.numpy(), cfg)
    return out


def _transform(arch: str, name: str, t: np.ndarray, cfg: Any) -> np.ndarray:
    """The inverse of transformers' TENSOR_PROCESSORS[arch] on one tensor."""
    if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
        n = cfg.num_attention_heads if ".attn_q." in name else cfg.num_key_value_heads
        return t.reshape(n, 2, t.shape[0] // n // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
    if arch in ("gemma2", "gemma3", "nemotron", "qwen35") and "norm.weight" in name and "ssm_norm" not in name:
        return t + 1
    if arch == "gpt2" and name.endswith(GPT2_CONV1D):
        return np.ascontiguousarray(t.T)
    if arch == "bloom" and "attn_qkv" in name:  # per head q, k, v -> all q, all k, all v
        n = cfg.n_head
        return np.ascontiguousarray(t.reshape(n, 3, -1, *t.shape[1:]).swapaxes(0, 1).reshape(t.shape))
    if arch in ("mamba", "qwen35") and name.endswith(".ssm_a"):
        return -np.exp(t)
    if (arch in ("mamba", "lfm2", "qwen35") and "conv" in name and name.endswith("weight") and t.ndim == 3) or \
            "ffn_gate_inp_shexp" in name:
        return np.ascontiguousarray(t.squeeze(1 if t.ndim == 3 else 0))
    return t


def write_gguf(model: torch.nn.Module, tok: Any, path: Path, arch: str, qtype: str = "F32", drop: str = "",
               general_name: str = "") -> Path:
    """A GGUF file of `model` (built by `gguf_model(arch, ...)`) with `tok`'s vocabulary inside; `qtype`
    (e.g. "Q8_0"): the ggml type of its 2-D weights whose rows split into whole blocks (the rest F32);
    `drop`: a GGUF tensor name left out, as a damaged file would; `general_name`: else ARCHS'."""
    import gguf
    from gguf.quants import quantize

    w = gguf.GGUFWriter(str(path), GGUF_ARCH.get(arch, arch))
    w.add_name(general_name or ARCHS[arch][2])
    _metadata(w, arch, model.config)
    w.add_file_type(gguf.LlamaFileType[f"MOSTLY_{qtype}" if qtype != "F32" else "ALL_F32"])
    _tokenizer(w, tok, arch)
    q = gguf.GGMLQuantizationType[qtype]
    for name, t in gguf_tensors(model, arch).items():
        if name == drop:
            continue
        t = np.ascontiguousarray(t, dtype=np.float32)
        if q != gguf.GGMLQuantizationType.F32 and t.ndim == 2 and t.shape[-1] % gguf.GGML_QUANT_SIZES[q][0] == 0:
            w.add_tensor(name, quantize(t, q), raw_dtype=q)
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
