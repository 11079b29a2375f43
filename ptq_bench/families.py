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

The records and the shared block shapes are in `ptq_bench.block_layouts`, the hybrids' in
`ptq_bench.hybrid_layouts`.

This module imports nothing heavy (no torch), so `validate` can check a checkpoint's family cheaply.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ptq_bench.block_layouts import (
    APERTUS,
    AXK2,
    COHERE,
    DOTS3_NOTE,
    EXPERT,
    FALCON,
    GEMMA2,
    GEMMA4,
    GLM,
    GPT2_BLOCK,
    MINIMAX_M3,
    NEOX,
    NORM_KINDS,
    OPT,
    POST_NORMS,
    QKV,
    SHARED_AFTER,
    SHARED_EXPERTS,
    Family,
    OneOf,
    Smooth,
    gemma3n,
    llama_like,
    mla_layouts,
    moe_block,
    optional_shared,
    parallel,
    pre_ln,
)
from ptq_bench.errors import RecipeError
from ptq_bench.hybrid_layouts import (
    BAILING_HYBRID,
    KIMI_LINEAR,
    LFM2,
    LFM2_MOE,
    LFM3,
    MAMBA1_BACKBONE,
    MAMBA2_BACKBONE,
    QWEN3_5,
    QWEN3_5_MOE,
    QWEN4_EXP,
    QWEN_MOE_1PW,
    XLSTM,
    falcon_h1,
    gated_deltanet,
    jamba,
    mamba2,
    mixer,
    nemotron_h,
    recurrent_gemma,
)

# Module classes whose weights are already low-bit (their forward re-quantizes whatever is stored):
# PTQ on them is refused (see quant.linears.refuse_low_bit). Qualified names, so nothing is imported.
LOW_BIT_CLASSES = (
    "ptq_bench.models.bitlinear.BitLinear",
    "transformers.integrations.bitnet.BitLinear",
    "transformers.integrations.bitnet.AutoBitLinear",
)


GRANITE = {"router": "block_sparse_moe.router", "moe": "block_sparse_moe"}  # where Granite 3 MoE keeps its experts
GRANITE_MOE_SHARED = optional_shared("shared_intermediate_size", shared="shared_mlp.",
                                     shared_names=("input_linear", "output_linear"), shared_last=True, **GRANITE)
# Granite 4.0-H: Mamba-2 blocks between attention blocks, each with Granite MoE Shared's MLP; without experts
# (num_local_experts 0, Granite-4.0-H-Micro) the shared MLP alone
GRANITE_HYBRID = mamba2(replace(GRANITE_MOE_SHARED[1], dense=llama_like(
    mlp_in=("shared_mlp.input_linear",), mlp_out="shared_mlp.output_linear")))

# OLMo-Hybrid: Gated DeltaNet blocks (pre-norm; their output linear is o_proj, the output gate g_proj) between
# OLMo 3's post-norm attention blocks, whose linears read the raw residual stream. Only the DeltaNet blocks could
# take smoothing scales; a row that says SmoothQuant must have smoothed every block, so it is refused
OLMO_HYBRID_GDN = mixer(llama_like(), tuple(f"linear_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "g_proj")),
                        "linear_attn.o_proj", ("linear_attn.a_proj", "linear_attn.b_proj"))
OLMO_HYBRID = replace(POST_NORMS, variants=(("linear_attn", replace(OLMO_HYBRID_GDN, smooth=())),),
                      unsmoothable="its attention blocks normalize only their outputs (OLMo 3's post-norms)")

# MiniMax-Text-01: every block a mixture of experts (no shared expert); lightning-attention blocks (a fused,
# per-head interleaved qkv_proj, a late sigmoid output_gate on the block's normed input, out_proj) between
# attention blocks. Its residual is the norm's output (`residual = input_layernorm(x)`), so scales folded into
# a norm would change the residual stream: SmoothQuant is refused
_MINIMAX = replace(moe_block(), dense=None, smooth=(), unsmoothable="its norms' outputs are also the residual stream")
MINIMAX = replace(_MINIMAX, variants=(("self_attn.qkv_proj", replace(
    _MINIMAX, groups=(("self_attn.qkv_proj", "self_attn.output_gate"), ("self_attn.out_proj",), *_MINIMAX.groups[2:]),
    fused=(*_MINIMAX.fused, "self_attn.qkv_proj"))),))

# model_type -> its Family, or several told apart by their `requires` (the first that the config meets)
FAMILIES: dict[str, Family | tuple[Family, ...]] = {
    "llama": llama_like(),
    "mistral": llama_like(),
    "qwen2": llama_like(),
    "qwen3": llama_like(),
    "smollm3": llama_like(),  # some layers skip RoPE (no_rope_layers): names and norms as Llama's
    "granite": llama_like(),  # Granite 3: Llama's block with residual / attention / embedding multipliers
    "helium": llama_like(),
    "arcee": llama_like(mlp_in=("mlp.up_proj",)),  # AFM: ReLU² MLP, no gate
    "ernie4_5": llama_like(),
    "ministral": llama_like(),
    "seed_oss": llama_like(),
    "internlm3": llama_like(),  # transformers runs InternLM3 with LlamaForCausalLM
    "hunyuan_v1_dense": llama_like(),  # its q/k RMSNorms (query_/key_layernorm) act after the projections
    "ministral3": llama_like(),
    "exaone": llama_like(),  # EXAONE 3 / 3.5: transformers renames its GPT-2-style weights to Llama's names
    "iquestcoder": llama_like(),  # run with LlamaForCausalLM
    "cwm": llama_like(),  # sliding and full layers
    "granite_swa": llama_like(),  # Granite's multipliers, sliding and full layers, attention sinks
    "diffllama": llama_like(),  # differential attention; its groupnorm has no weight and acts after q/k/v
    "hyperclovax": llama_like(),  # its post_norm1/2 (use_post_norm) normalize the attention / MLP outputs
    "jais2": llama_like(kind="layernorm", mlp_in=("mlp.up_proj",)),  # LayerNorms with bias, ReLU² MLP
    # NanoChat: ReLU² MLP; its RMSNorms have no weight (as OLMo 1's LayerNorms): nothing to fold into
    "nanochat": replace(llama_like(mlp_in=("mlp.fc1",), mlp_out="mlp.fc2"), smooth=(),
                        unsmoothable="its RMSNorms have no weight"),
    "glm": GLM,
    # GLM-4 adds post_self_attn_ / post_mlp_layernorm on the attention and MLP *outputs* (before the residual)
    "glm4": GLM,
    "apertus": APERTUS,
    "apertus1p5_text": APERTUS,  # with q/k norms after the projections
    # LayerNorms with bias; StableLM-2-12B's parallel form (use_parallel_residual) has no MLP norm
    "stablelm": llama_like(kind="layernorm", requires=(("use_parallel_residual", False),)),
    "starcoder2": llama_like(kind="layernorm", mlp_in=("mlp.c_fc",), mlp_out="mlp.c_proj"),
    "phi": parallel("model.layers", "input_layernorm", QKV, "self_attn.dense", ("mlp.fc1",), "mlp.fc2"),
    "gptj": parallel("transformer.h", "ln_1", ("attn.q_proj", "attn.k_proj", "attn.v_proj"), "attn.out_proj",
                      ("mlp.fc_in",), "mlp.fc_out"),
    "cohere": COHERE,
    "cohere2": COHERE,  # Cohere's block, sliding layers
    "cohere_compass_text": COHERE,  # North: Cohere 2's block, per-layer RoPE or NoPE
    "olmo2": POST_NORMS,
    "olmo3": POST_NORMS,
    "exaone4": POST_NORMS,  # EXAONE 4: OLMo 2's post-norms (and q/k norms)
    # OLMo 1: Llama's block, but its LayerNorms are parameter-free (OlmoLayerNorm): nothing to fold into
    "olmo": replace(llama_like(), smooth=(), unsmoothable="its LayerNorms have no weight or bias"),
    "gemma": llama_like(kind="one_plus_gain"),
    "vaultgemma": GEMMA2,  # without Gemma 2's post-norms
    # Nemotron: LayerNorm1P, y = LN(x) (1 + w) + b; a ReLU² MLP without a gate
    "nemotron": llama_like(mlp_in=("mlp.up_proj",), kind="one_plus_gain"),
    "gemma2": GEMMA2,
    "gemma3_text": GEMMA2,
    # Gemma3ForConditionalGeneration: the text decoder sits under the multimodal wrapper
    "gemma3": replace(GEMMA2, blocks="model.language_model.layers"),
    "gemma4_text": GEMMA4,  # block_layouts.gemma4: per-block attention kinds, optional experts and per-layer inputs
    "gemma4": tuple(replace(f, blocks="model.language_model.layers") for f in GEMMA4),  # the multimodal wrapper
    # Gemma 3n (block_layouts.gemma3n): AltUp streams between blocks, LAuReL, per-layer inputs, KV sharing
    "gemma3n_text": gemma3n(),
    # the multimodal wrapper (the hub's checkpoints): text ids reach the blocks as in gemma3n_text; its vision tower
    # is timm's (TimmWrapperModel), which transformers needs installed to build it
    "gemma3n": replace(gemma3n(), blocks="model.language_model.layers"),
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
    "ctrl": pre_ln("transformer.h", ("layernorm1", "layernorm2"), tuple(f"multi_head_attention.W{p}" for p in "qkv"),
                    "multi_head_attention.dense", "ffn.0", "ffn.2"),  # CTRL: pre-LN, its MLP an nn.Sequential
    "gpt_neo": pre_ln("transformer.h", ("ln_1", "ln_2"), tuple(f"attn.attention.{p}_proj" for p in "qkv"),
                       "attn.attention.out_proj", "mlp.c_fc", "mlp.c_proj"),  # global and local attention layers
    # BLOOM: with apply_residual_connection_post_layernorm the norms' outputs are also the residuals, so
    # scaling them would change more than the linears they feed
    "bloom": pre_ln("transformer.h", ("input_layernorm", "post_attention_layernorm"),
                     ("self_attention.query_key_value",), "self_attention.dense", "mlp.dense_h_to_4h",
                     "mlp.dense_4h_to_h", requires=(("apply_residual_connection_post_layernorm", False),)),
    # MPT: LayerNorms whose bias is set to None
    "mpt": pre_ln("transformer.blocks", ("norm_1", "norm_2"), ("attn.Wqkv",), "attn.out_proj", "ffn.up_proj",
                   "ffn.down_proj"),
    # Persimmon: its q/k LayerNorms (qk_layernorm) act after the fused projection
    "persimmon": pre_ln("model.layers", ("input_layernorm", "post_attention_layernorm"),
                         ("self_attn.query_key_value",), "self_attn.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    "falcon": FALCON,
    # CodeGen: GPT-J's parallel block with q/k/v fused in one linear
    "codegen": parallel("transformer.h", "ln_1", ("attn.qkv_proj",), "attn.out_proj", ("mlp.fc_in",), "mlp.fc_out"),
    # mixtures of experts: transformers' fused experts become one linear pair per expert (models.experts)
    "mixtral": moe_block(),
    "olmoe": moe_block(),  # with q/k norms after the projections
    "qwen3_moe": moe_block(),
    "qwen2_moe": moe_block(shared="mlp.shared_expert.", shared_gate="mlp.shared_expert_gate"),
    "glm4_moe": SHARED_AFTER,  # its router is fp32, with grouped top-k; q/k norms after the projections
    "dots1": SHARED_AFTER,
    # Hunyuan-A13B: a shared MLP before the routed experts; the router's linear is the fp32 mlp.gate.wg
    "hunyuan_v1_moe": moe_block(router="mlp.gate.wg", shared="mlp.shared_mlp."),
    "phimoe": moe_block(router="mlp.router", kind="layernorm"),  # Phi-3.5-MoE: LayerNorms with bias, sparsemixer
    "flex_olmo": replace(moe_block(), smooth=()),  # OLMo 2's post-norms: no norm feeds a linear
    # GPT-OSS: experts stored transposed, gate / up interleaved, with biases, a clamped SwiGLU (its own _apply_gate);
    # a biased router; attention sinks, sliding and full layers
    "gpt_oss": moe_block("mlp.router"),
    "mellum": moe_block(),  # with q/k norms after the projections
    "minimax_m2": moe_block(),
    "mimo_v2_flash": moe_block(),  # attention sinks in its sliding layers
    "exaone_moe": SHARED_AFTER,
    "solar_open": SHARED_AFTER,
    "hy_v3": SHARED_AFTER,
    "kolibri1": SHARED_AFTER,  # with GLM-4's norms on the attention and MLP outputs
    # Beam: Gemma 2's four norms (post_attention_layernorm normalizes the attention *output*), a sigmoid gate on
    # the attention (gate_proj, run after q/k/v), NoPE full layers, dense first blocks
    "beam": moe_block(qkv=(*QKV, "self_attn.gate_proj"), mlp_norm="pre_feedforward_layernorm"),
    "axk2": AXK2,  # A.X-K2 (block_layouts.axk2): latent attention with an output gate and an indexer, gated norms
    # Sarvam-30B and Param2 (MoE): transformers runs both with Glm4MoeForCausalLM, so GLM-4.5's block (experts
    # from first_k_dense_replace on, a shared expert after them, always built); q/k norms after the projections
    "sarvam_moe": SHARED_AFTER,
    "param2moe": SHARED_AFTER,
    # Flint: Qwen3-MoE's block (mlp_only_layers dense) with an ungated shared expert run after the routed ones, an fp32
    # sigmoid router; attention sinks, NoPE full layers
    "flint": moe_block(shared="mlp.shared_expert.", shared_last=True),
    "laguna": moe_block(shared=SHARED_EXPERTS, qkv=(*QKV, "self_attn.g_proj")),  # a softplus gate on the attention
    "minicpm5_moe": moe_block(shared=SHARED_EXPERTS, shared_last=True, qkv=(*QKV[1:], "self_attn.q_gate_proj")),  # k, v, then q (with a gate)
    # AFMoE (Trinity): a sigmoid gate on the attention; post_attention_layernorm normalizes its *output*
    "afmoe": moe_block("mlp.router.gate", shared=SHARED_EXPERTS, qkv=(*QKV, "self_attn.gate_proj"),
                       mlp_norm="pre_mlp_layernorm"),
    # ERNIE 4.5 MoE: shared experts unless moe_num_shared_experts is 0
    "ernie4_5_moe": optional_shared("moe_num_shared_experts"),
    # Cohere 2 MoE: Cohere's parallel block (one norm feeds attention, router and experts)
    "cohere2_moe": optional_shared("num_shared_experts", one_norm=True, shared_last=True),
    # Granite 3 MoE: experts under block_sparse_moe; Granite MoE Shared adds shared_mlp (one fused gate/up
    # linear) unless shared_intermediate_size is 0
    "granitemoe": moe_block(**GRANITE),
    "granitemoeshared": GRANITE_MOE_SHARED,
    "granitemoe_swa": GRANITE_MOE_SHARED,  # sliding and full layers, attention sinks
    # Llama 4: feed_forward holds the router (an nn.Linear, kept float), the experts (stored (in, out); their
    # input is the token times its router score: models.experts.ScoredInputMoE) and a shared expert run last;
    # dense blocks (moe_layers) a Llama MLP under feed_forward; NoPE layers, chunked attention, q/k L2 norms
    "llama4_text": moe_block("feed_forward.router", moe="feed_forward", shared="feed_forward.shared_expert.",
                             shared_last=True),
    # multi-head latent attention (block_layouts.mla): DeepSeek-V2/V3 (and Kimi K2, model_type deepseek_v3) with
    # a shared expert after the routed ones and dense first blocks, GLM-4-MoE-Lite, and the dense MiniCPM3, Youtu
    "deepseek_v3": mla_layouts(SHARED_AFTER),
    "deepseek_v2": mla_layouts(SHARED_AFTER),
    "glm4_moe_lite": mla_layouts(SHARED_AFTER),
    "sarvam_mla": mla_layouts(SHARED_AFTER),  # Sarvam-105B: run with DeepseekV3ForCausalLM (q_lora_rank None by default)
    "dots3_note_text": DOTS3_NOTE,
    "dots3_note": DOTS3_NOTE,  # the multimodal checkpoints: AutoModelForCausalLM builds their text decoder (the above)
    "minicpm3": mla_layouts(llama_like()),  # with a residual scale
    "youtu": mla_layouts(llama_like()),
    # hybrids (`Family.variants`: a block with another token mixer has its own layout). Qwen3.5 and Qwen3-Next:
    # Gated DeltaNet blocks between gated-attention blocks (q_proj also makes the output gate), (1 + w) norms
    "qwen3_5_text": QWEN3_5,
    "qwen3_5_moe_text": QWEN3_5_MOE,
    # the hub's Qwen3.5 checkpoints are multimodal; AutoModelForCausalLM builds their text decoder (the above)
    "qwen3_5": QWEN3_5,
    "qwen3_5_moe": QWEN3_5_MOE,
    "qwen4_exp_text": QWEN4_EXP,
    "qwen4_exp": QWEN4_EXP,  # the multimodal checkpoints: AutoModelForCausalLM builds their text decoder (the above)
    "qwen3_next": gated_deltanet(QWEN_MOE_1PW, ("in_proj_qkvz",), ("in_proj_ba",)),
    "kimi_linear": KIMI_LINEAR,
    "bailing_hybrid": BAILING_HYBRID,
    "olmo_hybrid": OLMO_HYBRID,
    "minimax": MINIMAX,
    "minimax_m3_vl_text": MINIMAX_M3,
    "lfm2": LFM2,  # LFM2: gated short-convolution blocks between attention blocks
    "lfm2_moe": LFM2_MOE,
    "lfm3": LFM3,  # LFM2's blocks, Qwen 3's attention (o_proj) with an optional head gate, sliding and full layers
    "granitemoehybrid": GRANITE_HYBRID,
    # Bamba: Granite 4.0-H's Mamba-2 blocks and attention blocks, each with a Llama MLP after pre_ff_layernorm
    "bamba": mamba2(llama_like(mlp_norm="pre_ff_layernorm", mlp_in=("feed_forward.gate_proj", "feed_forward.up_proj"),
                               mlp_out="feed_forward.down_proj")),
    "falcon_h1": (falcon_h1(True), falcon_h1(False)),  # Mamba-2 and attention in every block, side by side
    # Jamba: Mamba-1 blocks between attention blocks, experts every other block (a Llama MLP in the others)
    "jamba": jamba(moe_block(router="feed_forward.router", moe="feed_forward", mlp_norm="pre_ff_layernorm")),
    # pure state-space decoders (hybrid_layouts): one norm and one Mamba mixer per block, recurrent caches
    "mamba": MAMBA1_BACKBONE,
    "falcon_mamba": MAMBA1_BACKBONE,  # Mamba-1 with parameter-free RMSNorms on dt, B and C
    "mamba2": MAMBA2_BACKBONE,
    "xlstm": XLSTM,  # with use_bias its norms add a bias: not described
    "recurrent_gemma": recurrent_gemma(),  # Griffin: RG-LRU blocks between local-attention blocks
    "nemotron_h": nemotron_h(),  # Nemotron-H / Nemotron Nano 2 / Nemotron 3 Nano: one norm and one mixer per block
    # transformers' BitNet (b1.58 checkpoints, `quant_method: bitnet`): linears re-ternarize on every call
    "bitnet": llama_like(low_bit=True),
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
    """A config value from a transformers config object or a config.json mapping; a multimodal wrapper's
    text decoder values from its `text_config` when the top level lacks them (Gemma 4's layout values)."""
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    if value is None and key != "text_config" and (text := _get(config, "text_config")) is not None:
        return _get(text, key)
    return value


def config_keys(model_type: str) -> tuple[str, ...]:
    """The config values that decide whether (and which of) the model type's layouts fit a config, and the
    one bounding its whole rows (`Family.whole_rows`)."""
    keys = [key for family in layouts(model_type) for key in (*(k for k, _ in family.requires), family.whole_rows)]
    return tuple(dict.fromkeys(k for k in keys if k))


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
