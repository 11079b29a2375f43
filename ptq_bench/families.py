"""Model families as data: where a decoder's blocks are, which linears a block has, which norm feeds them.

One `Family` per transformers `config.model_type`, or several where config values decide the block
(Falcon's four), each with the values it `requires`. Everything that walks a model (the calibration
runner in `quant.calibrate`, every PTQ method, the tests) reads this table and nothing else, so adding a
family is one entry here plus one tiny test config (tests/tiny_families.py). A model whose family is not
registered is an error naming it, never a silent fallback to the Llama layout.

Names were read from transformers' modeling files (v5): e.g. Gemma 2/3 feed the MLP from
`pre_feedforward_layernorm` (their `post_attention_layernorm` normalizes the attention *output*), OPT's
`self_attn_layer_norm` / `final_layer_norm` are LayerNorms with bias feeding q/k/v and fc1, GPT-NeoX's
`post_attention_layernorm` feeds the MLP whether or not `use_parallel_residual` is set (the parallel
form reads the block input, the sequential form the attention residual: the norm feeds the same linear).

Norm semantics for smoothing (y = norm(x) feeds the target linears, s the smoothing scales, y' = y / s):
- "gain":          y = w * rms(x)          -> w' = w / s
- "one_plus_gain": y = (1 + w) * rms(x)    -> w' = (1 + w) / s - 1      (Gemma, Gemma 2, Gemma 3)
- "layernorm":     y = w * ln(x) + b       -> w' = w / s, b' = b / s    (OPT, GPT-NeoX, GPT-2)

This module imports nothing heavy (no torch), so `validate` can check a checkpoint's family cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ptq_bench.errors import RecipeError

NORM_KINDS = ("gain", "one_plus_gain", "layernorm")

# Module classes whose weights are already low-bit (their forward re-quantizes whatever is stored):
# PTQ on them is refused (see quant.linears.refuse_low_bit). Qualified names, so nothing is imported.
LOW_BIT_CLASSES = (
    "ptq_bench.models.bitlinear.BitLinear",
    "transformers.integrations.bitnet.BitLinear",
    "transformers.integrations.bitnet.AutoBitLinear",
)


@dataclass(frozen=True)
class Smooth:
    """A norm inside a block and the linears that read its output (all of them, or smoothing is wrong)."""

    norm: str  # module path inside a block, e.g. "input_layernorm"
    targets: tuple[str, ...]  # linears fed by the norm's output, e.g. ("self_attn.q_proj", ...)
    kind: str  # one of NORM_KINDS

    def __post_init__(self) -> None:
        if self.kind not in NORM_KINDS:
            raise ValueError(f"Smooth.kind must be one of {NORM_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Family:
    """How one transformers architecture lays out its decoder."""

    blocks: str  # dotted path of the ModuleList of decoder blocks, from the CausalLM
    groups: tuple[tuple[str, ...], ...]  # the block's linears, in GPTQ true-sequential groups
    smooth: tuple[Smooth, ...]  # norm -> linears pairs SmoothQuant folds scales into (none: it is refused)
    fused: tuple[str, ...] = ()  # linears computing several projections at once (e.g. q, k, v)
    conv1d: bool = False  # linears are transformers `Conv1D`: weight stored transposed, (in, out)
    low_bit: bool = False  # the family's linears are already low-bit: PTQ is refused
    requires: tuple[tuple[str, Any], ...] = ()  # config values this layout assumes (else unsupported; OneOf: any)
    unsmoothable: str = "no norm feeds a linear"  # why `smooth` is empty, when it is (SmoothQuant's refusal)
    experts: str = ""  # mixture of experts: where the block's fused experts are (models.experts unfuses them)
    floats: tuple[str, ...] = ()  # modules that stay in float (routers, shared-expert gates); may be smoothed
    dense: Family | None = None  # the layout of a block without experts (a mixture of experts' dense blocks)

    @property
    def linears(self) -> tuple[str, ...]:
        """Every quantized linear of a block, in sequential order (an EXPERT name stands for every expert's)."""
        return tuple(name for group in self.groups for name in group)


EXPERT = "*"  # in a linear's name: the expert index (`mlp.experts.*.down_proj`: one linear per expert)


@dataclass(frozen=True)
class OneOf:
    """A `requires` value met by any of several config values."""

    values: tuple[Any, ...]

    def __contains__(self, value: Any) -> bool:
        return value in self.values

    def __repr__(self) -> str:
        return " or ".join(map(repr, self.values))


QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def _llama_like(blocks: str = "model.layers", mlp_norm: str = "post_attention_layernorm", kind: str = "gain",
                mlp_in: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj"), mlp_out: str = "mlp.down_proj",
                low_bit: bool = False, requires: tuple[tuple[str, Any], ...] = (),
                attn_norm: str = "input_layernorm") -> Family:
    """The Llama block: q/k/v, o, the MLP's input linears (gate/up), its output (down); a norm before
    attention and another before the MLP."""
    return Family(
        blocks=blocks,
        groups=(QKV, ("self_attn.o_proj",), mlp_in, (mlp_out,)),
        smooth=(Smooth(attn_norm, QKV, kind), Smooth(mlp_norm, mlp_in, kind)),
        low_bit=low_bit,
        requires=requires,
    )


def _parallel(blocks: str, norm: str, qkv: tuple[str, ...], out: str, mlp_in: tuple[str, ...], mlp_out: str) -> Family:
    """A parallel block (GPT-J, Phi-1/2, Cohere, CodeGen): one LayerNorm feeds attention and the MLP at once,
    x + attn(ln(x)) + mlp(ln(x)), so its output reaches q/k/v (one fused linear when `qkv` names one) and
    the MLP's input linears alike."""
    return Family(
        blocks=blocks,
        groups=(qkv, (out,), mlp_in, (mlp_out,)),
        smooth=(Smooth(norm, (*qkv, *mlp_in), "layernorm"),),
        fused=qkv if len(qkv) == 1 else (),
    )


def _pre_ln(blocks: str, norms: tuple[str, str], qkv: tuple[str, ...], out: str, mlp_in: str, mlp_out: str,
            requires: tuple[tuple[str, Any], ...] = ()) -> Family:
    """Two norms, each feeding its own linears: norms[0] q/k/v (one fused linear when `qkv` names one),
    norms[1] the MLP's one input linear. GPT-2's sequential pre-LayerNorm block under other names, and
    Falcon-40B's parallel one (both norms read the block input: the pairs are the same)."""
    return Family(
        blocks=blocks,
        groups=(qkv, (out,), (mlp_in,), (mlp_out,)),
        smooth=(Smooth(norms[0], qkv, "layernorm"), Smooth(norms[1], (mlp_in,), "layernorm")),
        fused=qkv if len(qkv) == 1 else (),
        requires=requires,
    )


# GLM / GLM-4: Llama's norms, but the MLP's gate and up projections are one linear (gate_up_proj)
GLM = replace(_llama_like(mlp_in=("mlp.gate_up_proj",)), fused=("mlp.gate_up_proj",))
# CohereLayerNorm: y = w * (x - mean) / std, no bias
COHERE = _parallel("model.layers", "input_layernorm", QKV, "self_attn.o_proj", ("mlp.gate_proj", "mlp.up_proj"),
                   "mlp.down_proj")
# OLMo 2/3, EXAONE 4 normalize the attention and MLP *outputs* (and q/k after their projections): no norm
# feeds a linear, so there is nowhere to fold smoothing scales and SmoothQuant is refused (`validate` says so)
POST_NORMS = replace(_llama_like(), smooth=())
# Gemma 2/3, VaultGemma: (1 + w) RMSNorms, the MLP's input norm named pre_feedforward_layernorm
GEMMA2 = _llama_like(mlp_norm="pre_feedforward_layernorm", kind="one_plus_gain")
# GPT-2's pre-LayerNorm block; c_attn fuses q, k, v (GPTBigCode: q plus multi-query k/v); cross-attention
# blocks have more linears and norms
GPT2_BLOCK = _pre_ln("transformer.h", ("ln_1", "ln_2"), ("attn.c_attn",), "attn.c_proj", "mlp.c_fc", "mlp.c_proj",
                     requires=(("add_cross_attention", False),))

# OPT's pre-LayerNorm block (BioGPT, XGLM the same under other paths); OPT-350m normalizes after: its norms
# feed no linear
OPT = _pre_ln("model.decoder.layers", ("self_attn_layer_norm", "final_layer_norm"), QKV, "self_attn.out_proj", "fc1",
              "fc2", requires=(("do_layer_norm_before", True),))
# GPT-NeoX: post_attention_layernorm feeds the MLP in the parallel and the sequential form alike
NEOX = _pre_ln("gpt_neox.layers", ("input_layernorm", "post_attention_layernorm"), ("attention.query_key_value",),
               "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
# Apertus / Apertus 1.5: xIELU MLP without a gate; its norms are named attention_ / feedforward_layernorm
APERTUS = _llama_like(attn_norm="attention_layernorm", mlp_norm="feedforward_layernorm", mlp_in=("mlp.up_proj",))


def _moe(router: str = "mlp.gate", kind: str = "gain", shared: str = "", shared_gate: str = "",
         shared_last: bool = False) -> Family:
    """Llama's block with a sparse mixture of experts for its MLP: transformers 5's `router` and fused
    `mlp.experts` (a gate_up / down linear pair per expert once `models.experts` unfuses them), and a `shared`
    always-on expert (its path's prefix; run before the experts, or after with `shared_last`) with an optional
    sigmoid `shared_gate`. Routers stay float (as in GPTQModel, llm-compressor) and are smoothed with every
    expert, as SmoothQuant's own Mixtral code does. Blocks without experts (dense first layers, Qwen's
    mlp_only_layers) have Llama's layout (`dense`)."""
    sh = (shared,) if shared else ()
    expert_in, expert_out = f"mlp.experts.{EXPERT}.gate_up_proj", f"mlp.experts.{EXPERT}.down_proj"
    mlp_in = tuple(p + n for p in sh for n in ("gate_proj", "up_proj"))
    mlp_in, mlp_out = ((expert_in, *mlp_in), (expert_out, *(p + "down_proj" for p in sh))) if shared_last else \
        ((*mlp_in, expert_in), (*(p + "down_proj" for p in sh), expert_out))
    floats = (router, *((shared_gate,) if shared_gate else ()))
    return Family("model.layers", (QKV, ("self_attn.o_proj",), mlp_in, mlp_out),
                  (Smooth("input_layernorm", QKV, kind), Smooth("post_attention_layernorm", (*floats, *mlp_in), kind)),
                  fused=(expert_in,), experts="mlp.experts", floats=floats, dense=_llama_like(kind=kind))


# GLM-4.5/4.6 MoE, dots.llm1: a shared expert after the routed ones (and dense first blocks)
SHARED_AFTER = _moe(shared="mlp.shared_experts.", shared_last=True)


def _falcon(norms: tuple[str, ...], **requires: Any) -> Family:
    """A Falcon block: one norm feeding attention and the MLP at once (parallel), or two norms each
    feeding its own (`_pre_ln`'s pairs, parallel or sequential), under the config values that build it."""
    linears = (("self_attention.query_key_value",), "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
    if len(norms) == 1:
        family = _parallel("transformer.h", norms[0], linears[0], linears[1], (linears[2],), linears[3])
    else:
        family = _pre_ln("transformer.h", (norms[0], norms[1]), *linears)
    return replace(family, requires=tuple(requires.items()))


# Falcon: which norms a block has and what they feed is decided by three config values
# (FalconDecoderLayer); no other combination runs in transformers either
FALCON = (
    # Falcon-7B: one LayerNorm, parallel block
    _falcon(("input_layernorm",), parallel_attn=True, new_decoder_architecture=False,
            num_ln_in_parallel_attn=OneOf((None, 1))),
    # Falcon2-11B: the new architecture with one norm
    _falcon(("input_layernorm",), parallel_attn=True, new_decoder_architecture=True, num_ln_in_parallel_attn=1),
    # Falcon-40B / 180B: ln_attn feeds q/k/v and ln_mlp the MLP, both read the block input (None means 2 here)
    _falcon(("ln_attn", "ln_mlp"), parallel_attn=True, new_decoder_architecture=True,
            num_ln_in_parallel_attn=OneOf((None, 2))),
    # Falcon-RW: sequential, input_layernorm before attention and post_attention_layernorm before the MLP
    _falcon(("input_layernorm", "post_attention_layernorm"), parallel_attn=False, new_decoder_architecture=False),
)

# model_type -> its Family, or several told apart by their `requires` (the first that the config meets)
FAMILIES: dict[str, Family | tuple[Family, ...]] = {
    "llama": _llama_like(),
    "mistral": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "smollm3": _llama_like(),  # some layers skip RoPE (no_rope_layers): names and norms as Llama's
    "granite": _llama_like(),  # Granite 3: Llama's block with residual / attention / embedding multipliers
    "helium": _llama_like(),
    "arcee": _llama_like(mlp_in=("mlp.up_proj",)),  # AFM: ReLU² MLP, no gate
    "ernie4_5": _llama_like(),
    "ministral": _llama_like(),
    "seed_oss": _llama_like(),
    "internlm3": _llama_like(),  # transformers runs InternLM3 with LlamaForCausalLM
    "hunyuan_v1_dense": _llama_like(),  # its q/k RMSNorms (query_/key_layernorm) act after the projections
    "ministral3": _llama_like(),
    "exaone": _llama_like(),  # EXAONE 3 / 3.5: transformers renames its GPT-2-style weights to Llama's names
    "iquestcoder": _llama_like(),  # run with LlamaForCausalLM
    "cwm": _llama_like(),  # sliding and full layers
    "granite_swa": _llama_like(),  # Granite's multipliers, sliding and full layers, attention sinks
    "diffllama": _llama_like(),  # differential attention; its groupnorm has no weight and acts after q/k/v
    "hyperclovax": _llama_like(),  # its post_norm1/2 (use_post_norm) normalize the attention / MLP outputs
    "jais2": _llama_like(kind="layernorm", mlp_in=("mlp.up_proj",)),  # LayerNorms with bias, ReLU² MLP
    # NanoChat: ReLU² MLP; its RMSNorms have no weight (as OLMo 1's LayerNorms): nothing to fold into
    "nanochat": replace(_llama_like(mlp_in=("mlp.fc1",), mlp_out="mlp.fc2"), smooth=(),
                        unsmoothable="its RMSNorms have no weight"),
    "glm": GLM,
    # GLM-4 adds post_self_attn_ / post_mlp_layernorm on the attention and MLP *outputs* (before the residual)
    "glm4": GLM,
    "apertus": APERTUS,
    "apertus1p5_text": APERTUS,  # with q/k norms after the projections
    # LayerNorms with bias; StableLM-2-12B's parallel form (use_parallel_residual) has no MLP norm
    "stablelm": _llama_like(kind="layernorm", requires=(("use_parallel_residual", False),)),
    "starcoder2": _llama_like(kind="layernorm", mlp_in=("mlp.c_fc",), mlp_out="mlp.c_proj"),
    "phi": _parallel("model.layers", "input_layernorm", QKV, "self_attn.dense", ("mlp.fc1",), "mlp.fc2"),
    "gptj": _parallel("transformer.h", "ln_1", ("attn.q_proj", "attn.k_proj", "attn.v_proj"), "attn.out_proj",
                      ("mlp.fc_in",), "mlp.fc_out"),
    "cohere": COHERE,
    "cohere2": COHERE,  # Cohere's block, sliding layers
    "olmo2": POST_NORMS,
    "olmo3": POST_NORMS,
    "exaone4": POST_NORMS,  # EXAONE 4: OLMo 2's post-norms (and q/k norms)
    # OLMo 1: Llama's block, but its LayerNorms are parameter-free (OlmoLayerNorm): nothing to fold into
    "olmo": replace(_llama_like(), smooth=(), unsmoothable="its LayerNorms have no weight or bias"),
    "gemma": _llama_like(kind="one_plus_gain"),
    "vaultgemma": GEMMA2,  # without Gemma 2's post-norms
    # Nemotron: LayerNorm1P, y = LN(x) (1 + w) + b; a ReLU² MLP without a gate
    "nemotron": _llama_like(mlp_in=("mlp.up_proj",), kind="one_plus_gain"),
    "gemma2": GEMMA2,
    "gemma3_text": GEMMA2,
    # Gemma3ForConditionalGeneration: the text decoder sits under the multimodal wrapper
    "gemma3": replace(GEMMA2, blocks="model.language_model.layers"),
    "phi3": Family(
        blocks="model.layers",
        groups=(("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",), ("mlp.down_proj",)),
        smooth=(Smooth("input_layernorm", ("self_attn.qkv_proj",), "gain"),
                Smooth("post_attention_layernorm", ("mlp.gate_up_proj",), "gain")),
        fused=("self_attn.qkv_proj", "mlp.gate_up_proj"),
    ),
    "opt": OPT,
    "xglm": replace(OPT, blocks="model.layers", requires=(("add_cross_attention", False),)),  # pre-LN always
    "biogpt": replace(OPT, blocks="biogpt.layers", requires=()),
    "gpt_neox": NEOX,
    "gpt_neox_japanese": replace(NEOX, blocks="gpt_neox_japanese.layers"),  # sequential; the last block's
    # attention bias is a bare parameter (dense_bias), not a linear's
    "gpt2": replace(GPT2_BLOCK, conv1d=True),
    "gpt_bigcode": GPT2_BLOCK,  # StarCoder 1 / SantaCoder: GPT-2's block with nn.Linear (not Conv1D)
    # GPT-1: post-LayerNorm, ln_1's output is both the MLP's input and the residual (and ln_2's the next block's)
    "openai-gpt": replace(GPT2_BLOCK, conv1d=True, smooth=(), requires=(),
                          unsmoothable="its LayerNorms' outputs are also the residual stream (post-LN)"),
    "ctrl": _pre_ln("transformer.h", ("layernorm1", "layernorm2"), tuple(f"multi_head_attention.W{p}" for p in "qkv"),
                    "multi_head_attention.dense", "ffn.0", "ffn.2"),  # CTRL: pre-LN, its MLP an nn.Sequential
    "gpt_neo": _pre_ln("transformer.h", ("ln_1", "ln_2"), tuple(f"attn.attention.{p}_proj" for p in "qkv"),
                       "attn.attention.out_proj", "mlp.c_fc", "mlp.c_proj"),  # global and local attention layers
    # BLOOM: with apply_residual_connection_post_layernorm the norms' outputs are also the residuals, so
    # scaling them would change more than the linears they feed
    "bloom": _pre_ln("transformer.h", ("input_layernorm", "post_attention_layernorm"),
                     ("self_attention.query_key_value",), "self_attention.dense", "mlp.dense_h_to_4h",
                     "mlp.dense_4h_to_h", requires=(("apply_residual_connection_post_layernorm", False),)),
    # MPT: LayerNorms whose bias is set to None
    "mpt": _pre_ln("transformer.blocks", ("norm_1", "norm_2"), ("attn.Wqkv",), "attn.out_proj", "ffn.up_proj",
                   "ffn.down_proj"),
    # Persimmon: its q/k LayerNorms (qk_layernorm) act after the fused projection
    "persimmon": _pre_ln("model.layers", ("input_layernorm", "post_attention_layernorm"),
                         ("self_attn.query_key_value",), "self_attn.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    "falcon": FALCON,
    # CodeGen: GPT-J's parallel block with q/k/v fused in one linear
    "codegen": _parallel("transformer.h", "ln_1", ("attn.qkv_proj",), "attn.out_proj", ("mlp.fc_in",), "mlp.fc_out"),
    # mixtures of experts: transformers' fused experts become one linear pair per expert (models.experts)
    "mixtral": _moe(),
    "olmoe": _moe(),  # with q/k norms after the projections
    "qwen3_moe": _moe(),
    "qwen2_moe": _moe(shared="mlp.shared_expert.", shared_gate="mlp.shared_expert_gate"),
    "glm4_moe": SHARED_AFTER,  # its router is fp32, with grouped top-k; q/k norms after the projections
    "dots1": SHARED_AFTER,
    # Hunyuan-A13B: a shared MLP before the routed experts; the router's linear is the fp32 mlp.gate.wg
    "hunyuan_v1_moe": _moe(router="mlp.gate.wg", shared="mlp.shared_mlp."),
    "phimoe": _moe(router="mlp.router", kind="layernorm"),  # Phi-3.5-MoE: LayerNorms with bias, sparsemixer
    "flex_olmo": replace(_moe(), smooth=()),  # OLMo 2's post-norms: no norm feeds a linear
    # transformers' BitNet (b1.58 checkpoints, `quant_method: bitnet`): linears re-ternarize on every call
    "bitnet": _llama_like(low_bit=True),
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(FAMILIES))


def layouts(model_type: str) -> tuple[Family, ...]:
    """The registered layouts of a `config.model_type` (one, or several that config values tell apart);
    an unknown one is a one-line RecipeError. What this module reads from a model_type alone (low-bit,
    smoothable) is the same in all of them (tests/test_families.py checks it)."""
    if model_type not in FAMILIES:
        raise RecipeError(
            f"model family '{model_type}' is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)}; "
            "a new one is an entry in ptq_bench/families.py)"
        )
    entry = FAMILIES[model_type]
    return entry if isinstance(entry, tuple) else (entry,)


def _get(config: Any, key: str) -> Any:
    """A config value from a transformers config object or a config.json mapping."""
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


def config_keys(model_type: str) -> tuple[str, ...]:
    """The config values that decide whether (and which of) the model type's layouts fit a config."""
    return tuple(dict.fromkeys(key for family in layouts(model_type) for key, _ in family.requires))


def _unmet(family: Family, config: Any) -> list[tuple[str, Any, Any]]:
    """(key, value, expected) of each config value a layout assumes and this config lacks (empty: it fits)."""
    unmet = []
    for key, expected in family.requires:
        value = _get(config, key)
        if not (value in expected if isinstance(expected, OneOf) else value == expected):
            unmet.append((key, value, expected))
    return unmet


def family_of_config(config: Any) -> Family:
    """The family of a transformers config (object or config.json mapping): the first registered layout
    whose config values it has; none is a one-line RecipeError."""
    model_type = _get(config, "model_type")
    options = layouts(str(model_type))
    unmet = [_unmet(family, config) for family in options]
    if [] in unmet:
        return options[unmet.index([])]
    if len(options) == 1:
        key, value, expected = unmet[0][0]
        why = f"with {key}={value!r} is not supported (its layout assumes {expected!r})"
    else:
        values = ", ".join(f"{k}={_get(config, k)!r}" for k in config_keys(str(model_type)))
        why = f"with {values} is not supported (none of its {len(options)} registered layouts has these values)"
    raise RecipeError(f"model family '{model_type}' {why}")


def layout_problem(config: Any) -> str:
    """'' when a family entry describes this config's block layout, else why not (one line)."""
    try:
        family_of_config(config)
    except RecipeError as e:
        return str(e)
    return ""


def smoothing_refusal(model_type: str) -> str:
    """Why a smoothing method cannot run on the family ('' when it has norm -> linears pairs); the one
    message of `validate` (cells.ptq_refusal) and of SmoothQuant itself."""
    family = layouts(model_type)[0]
    if family.smooth:
        return ""
    return (f"model family '{model_type}': {family.unsmoothable} (it names no smoothing pairs), so SmoothQuant "
            "has nowhere to fold its scales")


def low_bit_reason(config: Any) -> str | None:
    """Why a checkpoint is already low-bit (its family, or the quant_method of its quantization_config),
    or None. PTQ of such a checkpoint is refused (see quant.linears)."""
    qcfg = _get(config, "quantization_config")
    if qcfg is not None:
        method = _get(qcfg, "quant_method")
        return f"quant_method '{getattr(method, 'value', method)}'"  # transformers keeps an enum
    model_type = _get(config, "model_type")
    return f"family '{model_type}'" if layouts(str(model_type))[0].low_bit else None


__all__ = ["EXPERT", "FAMILIES", "Family", "LOW_BIT_CLASSES", "NORM_KINDS", "OneOf", "SUPPORTED_MODEL_TYPES", "Smooth",
           "config_keys", "family_of_config", "layout_problem", "layouts", "low_bit_reason", "smoothing_refusal"]
