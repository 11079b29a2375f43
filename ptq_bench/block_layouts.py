"""Block layouts as data: the records a model family is written in (`Family`, `Smooth`, `OneOf`) and the
builders of the block shapes many families share (Llama's, the parallel block, the pre-LayerNorm block, a
mixture of experts). `ptq_bench.families` maps each transformers `model_type` to one of these.

Norm semantics for smoothing (y = norm(x) feeds the target linears, s the smoothing scales, y' = y / s):
- "gain":          y = w * rms(x)          -> w' = w / s
- "one_plus_gain": y = (1 + w) * rms(x)    -> w' = (1 + w) / s - 1      (Gemma, Gemma 2, Gemma 3)
- "layernorm":     y = w * ln(x) + b       -> w' = w / s, b' = b / s    (OPT, GPT-NeoX, GPT-2)

This module imports nothing heavy (no torch), so `validate` can check a checkpoint's family cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

NORM_KINDS = ("gain", "one_plus_gain", "layernorm")


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
    # a hybrid's other blocks: (module path, layout) -- a block holding that module (e.g. `linear_attn`) has
    # that layout instead (and the layout's own `dense` where it has no experts); the first match wins
    variants: tuple[tuple[str, Family], ...] = ()
    # the config value bounding the rows the model's own forward runs whole (xLSTM's max_inference_chunksize:
    # a longer row runs chunk by chunk through all blocks, and the block runner would record its first chunk)
    whole_rows: str = ""
    # leading axes of the hidden states passed between blocks before (batch, tokens): Gemma 3n's AltUp stacks its
    # streams in front, (streams, batch, tokens, hidden) (the runner's whole-row check reads the axes after them)
    stream_axes: int = 0

    @property
    def linears(self) -> tuple[str, ...]:
        """Every quantized linear of a block, in sequential order (an EXPERT name stands for every expert's)."""
        return tuple(name for group in self.groups for name in group)

    @property
    def all_layouts(self) -> tuple[Family, ...]:
        """This layout, its variants, and each one's dense layout: every layout a block of the model may have."""
        mains = (self, *(variant for _, variant in self.variants))
        return tuple(f for main in mains for f in (main, *((main.dense,) if main.dense else ())))


EXPERT = "*"  # in a linear's name: the expert index (`mlp.experts.*.down_proj`: one linear per expert)


@dataclass(frozen=True)
class OneOf:
    """A `requires` value met by any of several config values."""

    values: tuple[Any, ...]

    def __contains__(self, value: Any) -> bool:
        return value in self.values

    def __repr__(self) -> str:
        return " or ".join(map(repr, self.values))


@dataclass(frozen=True)
class NoneOf(OneOf):
    """A `requires` value met by any config value but these (a size that switches a part on unless 0 / None)."""

    def __contains__(self, value: Any) -> bool:
        return value not in self.values

    def __repr__(self) -> str:
        return "anything but " + " or ".join(map(repr, self.values))


QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")  # an MLP's linears: its inputs, then its output
MLP_IN = ("mlp.gate_proj", "mlp.up_proj")


def llama_like(blocks: str = "model.layers", mlp_norm: str = "post_attention_layernorm", kind: str = "gain",
                mlp_in: tuple[str, ...] = MLP_IN, mlp_out: str = "mlp.down_proj",
                low_bit: bool = False, requires: tuple[tuple[str, Any], ...] = (),
                attn_norm: str = "input_layernorm", qkv: tuple[str, ...] = QKV, out: str = "self_attn.o_proj") -> Family:
    """The Llama block: q/k/v (`qkv`: the attention's input linears), o (`out`), the MLP's input linears
    (gate/up), its output (down); a norm before attention and another before the MLP."""
    return Family(
        blocks=blocks,
        groups=(qkv, (out,), mlp_in, (mlp_out,)),
        smooth=(Smooth(attn_norm, qkv, kind), Smooth(mlp_norm, mlp_in, kind)),
        low_bit=low_bit,
        requires=requires,
    )


def parallel(blocks: str, norm: str, qkv: tuple[str, ...], out: str, mlp_in: tuple[str, ...], mlp_out: str) -> Family:
    """A parallel block (GPT-J, Phi-1/2, Cohere, CodeGen): one LayerNorm feeds attention and the MLP at once,
    x + attn(ln(x)) + mlp(ln(x)), so its output reaches q/k/v (one fused linear when `qkv` names one) and
    the MLP's input linears alike."""
    return Family(
        blocks=blocks,
        groups=(qkv, (out,), mlp_in, (mlp_out,)),
        smooth=(Smooth(norm, (*qkv, *mlp_in), "layernorm"),),
        fused=qkv if len(qkv) == 1 else (),
    )


def pre_ln(blocks: str, norms: tuple[str, str], qkv: tuple[str, ...], out: str, mlp_in: str, mlp_out: str,
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
GLM = replace(llama_like(mlp_in=("mlp.gate_up_proj",)), fused=("mlp.gate_up_proj",))
# CohereLayerNorm: y = w * (x - mean) / std, no bias
COHERE = parallel("model.layers", "input_layernorm", QKV, "self_attn.o_proj", ("mlp.gate_proj", "mlp.up_proj"),
                   "mlp.down_proj")
# OLMo 2/3, EXAONE 4 normalize the attention and MLP *outputs* (and q/k after their projections): no norm
# feeds a linear, so there is nowhere to fold smoothing scales and SmoothQuant is refused (`validate` says so)
POST_NORMS = replace(llama_like(), smooth=())
# Gemma 2/3, VaultGemma: (1 + w) RMSNorms, the MLP's input norm named pre_feedforward_layernorm
GEMMA2 = llama_like(mlp_norm="pre_feedforward_layernorm", kind="one_plus_gain")
# GPT-2's pre-LayerNorm block; c_attn fuses q, k, v (GPTBigCode: q plus multi-query k/v); cross-attention
# blocks have more linears and norms
GPT2_BLOCK = pre_ln("transformer.h", ("ln_1", "ln_2"), ("attn.c_attn",), "attn.c_proj", "mlp.c_fc", "mlp.c_proj",
                     requires=(("add_cross_attention", False),))

# OPT's pre-LayerNorm block (BioGPT, XGLM the same under other paths); OPT-350m normalizes after: its norms
# feed no linear
OPT = pre_ln("model.decoder.layers", ("self_attn_layer_norm", "final_layer_norm"), QKV, "self_attn.out_proj", "fc1",
              "fc2", requires=(("do_layer_norm_before", True),))
# GPT-NeoX: post_attention_layernorm feeds the MLP in the parallel and the sequential form alike
NEOX = pre_ln("gpt_neox.layers", ("input_layernorm", "post_attention_layernorm"), ("attention.query_key_value",),
               "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
# Apertus / Apertus 1.5: xIELU MLP without a gate; its norms are named attention_ / feedforward_layernorm
APERTUS = llama_like(attn_norm="attention_layernorm", mlp_norm="feedforward_layernorm", mlp_in=("mlp.up_proj",))


def moe_block(router: str = "mlp.gate", kind: str = "gain", *, moe: str = "mlp", shared: str = "",
              shared_names: tuple[str, ...] = MLP_NAMES, shared_gate: str = "", shared_last: bool = False,
              qkv: tuple[str, ...] = QKV, mlp_norm: str = "post_attention_layernorm", one_norm: bool = False,
              requires: tuple[tuple[str, Any], ...] = ()) -> Family:
    """Llama's block with a sparse mixture of experts for its MLP: transformers 5's `router` and fused
    `<moe>.experts` (a gate_up / down linear pair per expert once `models.experts` unfuses them), and a
    `shared` always-on expert (its path's prefix, its linears `shared_names`: inputs, then output; run before
    the experts, or after with `shared_last`) with an optional sigmoid `shared_gate`. Routers stay float (as
    in GPTQModel, llm-compressor) and are smoothed with every expert, as SmoothQuant's own Mixtral code does.
    `qkv` are the attention's input linears (with a gate, some families), `mlp_norm` the norm feeding the
    MLP; `one_norm`: a parallel block, input_layernorm feeding attention and the MLP at once (Cohere 2 MoE).
    Blocks without experts (dense first layers, Qwen's mlp_only_layers) have Llama's MLP under `moe`
    (`dense`)."""
    experts = f"{moe}.experts"
    expert_in, expert_out = f"{experts}.{EXPERT}.gate_up_proj", f"{experts}.{EXPERT}.down_proj"
    sh_in, sh_out = (tuple(shared + n for n in shared_names[:-1]), (shared + shared_names[-1],)) if shared else ((), ())
    mlp_in, mlp_out = ((expert_in, *sh_in), (expert_out, *sh_out)) if shared_last else \
        ((*sh_in, expert_in), (*sh_out, expert_out))
    floats = (router, *((shared_gate,) if shared_gate else ()))
    if one_norm:
        smooth = (Smooth("input_layernorm", (*qkv, *floats, *mlp_in), kind),)
        dense = parallel("model.layers", "input_layernorm", qkv, "self_attn.o_proj", MLP_IN, "mlp.down_proj")
    else:
        smooth = (Smooth("input_layernorm", qkv, kind), Smooth(mlp_norm, (*floats, *mlp_in), kind))
        dense = llama_like(kind=kind, mlp_norm=mlp_norm, qkv=qkv, mlp_in=(f"{moe}.gate_proj", f"{moe}.up_proj"),
                           mlp_out=f"{moe}.down_proj")
    return Family("model.layers", (qkv, ("self_attn.o_proj",), mlp_in, mlp_out), smooth, fused=(expert_in,),
                  requires=requires, experts=experts, floats=floats, dense=dense)


SHARED_EXPERTS = "mlp.shared_experts."  # the usual path of a shared expert (Llama's MLP names)
# GLM-4.5/4.6 MoE, dots.llm1: a shared expert after the routed ones (and dense first blocks)
SHARED_AFTER = moe_block(shared=SHARED_EXPERTS, shared_last=True)


def optional_shared(count_key: str, shared: str = SHARED_EXPERTS, **moe: Any) -> tuple[Family, Family]:
    """Both layouts of a mixture of experts whose shared expert exists unless config `count_key` is 0
    (ERNIE-4.5-MoE, Cohere 2 MoE, Granite MoE Shared): without it, then with it (`moe_block`'s arguments)."""
    return moe_block(**moe, requires=((count_key, 0),)), moe_block(shared=shared, **moe)


def mla(family: Family, q_lora: bool = True, requires: tuple[tuple[str, Any], ...] = ()) -> Family:
    """`family` with multi-head latent attention (DeepSeek-V2/V3, MiniCPM3): the attention norm feeds q's
    down-projection q_a_proj (q_proj itself where q_lora_rank is None) and kv_a_proj_with_mqa; q_a_layernorm
    feeds q_b_proj, and kv_a_layernorm (on kv_a's first kv_lora_rank outputs, the rotary part bypasses it)
    feeds kv_b_proj. Groups in run order: the two down-projections, the two up-projections, then o. (`family`'s
    first group and first smoothing pair are its attention's input linears and norm, as the builders above
    make them.)"""
    first = (f"self_attn.{'q_a_proj' if q_lora else 'q_proj'}", "self_attn.kv_a_proj_with_mqa")
    second = (*(("self_attn.q_b_proj",) if q_lora else ()), "self_attn.kv_b_proj")
    attn, *rest = family.smooth
    ups = (*((Smooth("self_attn.q_a_layernorm", ("self_attn.q_b_proj",), attn.kind),) if q_lora else ()),
           Smooth("self_attn.kv_a_layernorm", ("self_attn.kv_b_proj",), attn.kind))
    return replace(family, groups=(first, second, *family.groups[1:]), requires=requires,
                   smooth=(Smooth(attn.norm, first, attn.kind), *ups, *rest),
                   dense=family.dense and mla(family.dense, q_lora))


def mla_layouts(family: Family) -> tuple[Family, Family]:
    """Both MLA layouts of a family: q without a low-rank pair where q_lora_rank is None, else with one."""
    return mla(family, q_lora=False, requires=(("q_lora_rank", None),)), mla(family)


def gated_mla(family: Family, gate: str = "self_attn.g_proj") -> Family:
    """An MLA `family` whose attention has a head-wise sigmoid output gate `gate`: it reads the attention
    norm's output but runs after kv_b_proj, so it closes the first group (whose last linear the lean runner
    stops at)."""
    first, *groups = family.groups
    attn, *rest = family.smooth
    return replace(family, groups=((*first, gate), *groups), smooth=(replace(attn, targets=(*attn.targets, gate)), *rest),
                   dense=family.dense and gated_mla(family.dense, gate))


# MiniMax-M3's text decoder: (1 + w) RMSNorms; dense first blocks (one fused gate_up_proj, a clamped SwiGLU), then
# experts with a shared MLP run first; its "minimax_m3_sparse" layers add an indexer whose q / k projections read
# the attention norm and pick the key blocks each query attends (quantized, as in GPTQModel's definition)
def _minimax_m3(qkv: tuple[str, ...]) -> Family:
    moe = moe_block(kind="one_plus_gain", shared=SHARED_EXPERTS, shared_names=("gate_up_proj", "down_proj"), qkv=qkv)
    return replace(moe, dense=llama_like(kind="one_plus_gain", qkv=qkv, mlp_in=("mlp.gate_up_proj",)))


MINIMAX_M3 = replace(_minimax_m3(QKV), variants=(
    ("self_attn.indexer", _minimax_m3((*QKV, "self_attn.indexer.q_proj", "self_attn.indexer.k_proj"))),))


def axk2(family: Family, gated: tuple[str, ...]) -> Family:
    """A.X-K2: DeepSeek-V3's latent attention (q_a -> q_gate_proj, which also makes a sigmoid output gate; kv_a ->
    kv_b), a DSA indexer picking each query's top-k keys, and norms followed by a low-rank sigmoid gate on their
    own output (`gated`: input_layernorm, and post_attention_layernorm in expert blocks). The gates' fc1 / fc2 and
    the indexer stay in float, as GPTQModel's definition keeps them (transformers keeps weights_proj fp32).
    q_gate_proj reads q_a_layernorm's output concatenated with its input (q_a_proj's raw output): scales folded
    into the norm would reach half of its input columns, so SmoothQuant is refused."""
    floats = (*(f"{norm}.mlp.{fc}" for norm in gated for fc in ("fc1", "fc2")),
              *(f"self_attn.indexer.{n}" for n in ("wq_b", "wk", "weights_proj")))
    groups = (("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa"), ("self_attn.q_gate_proj", "self_attn.kv_b_proj"))
    return replace(family, groups=(*groups, *family.groups[1:]), smooth=(), floats=(*family.floats, *floats),
                   unsmoothable="q_a_layernorm's output reaches q_gate_proj concatenated with q_a_proj's raw output")


AXK2 = replace(axk2(SHARED_AFTER, ("input_layernorm", "post_attention_layernorm")),
               dense=axk2(llama_like(), ("input_layernorm",)))


def dsa_indexer(family: Family, path: str = "self_attn.indexer") -> Family:
    """A gated MLA `family` (q_lora; `gated_mla`: its first group ends with the gate) whose blocks hold a DSA
    indexer (dots3.note): its wk reads the attention norm's output, wq_b q_a_layernorm's (the query latent), and
    both run after kv_b_proj, before the gate; they are quantized, and weights_proj (per-head score weights,
    accumulated in float32) stays float, as in GPTQModel's DeepSeek-V3.2 definition."""
    (*first, gate), second, *groups = family.groups
    attn, q_a, *rest = family.smooth
    wk, wq_b, weights = f"{path}.wk", f"{path}.wq_b", f"{path}.weights_proj"
    return replace(family, groups=((*first, wk, gate), (*second, wq_b), *groups), floats=(*family.floats, weights),
                   smooth=(replace(attn, targets=(*attn.targets, wk, weights)), replace(q_a, targets=(*q_a.targets, wq_b)),
                           *rest), dense=family.dense and dsa_indexer(family.dense, path))


# dots3.note: gated MLA (q_lora always; q/kv latents rescaled by a constant, a norm on the rotary key) with a
# DSA indexer in its indexed-attention blocks (none in sliding ones), dense first blocks (mlp_layer_types), then
# DeepSeek-V3's experts with a shared one after them
_DOTS3 = gated_mla(mla(SHARED_AFTER))
DOTS3_NOTE = replace(_DOTS3, variants=(("self_attn.indexer", dsa_indexer(_DOTS3)),))


def falcon(norms: tuple[str, ...], **requires: Any) -> Family:
    """A Falcon block: one norm feeding attention and the MLP at once (parallel), or two norms each
    feeding its own (`pre_ln`'s pairs, parallel or sequential), under the config values that build it."""
    linears = (("self_attention.query_key_value",), "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
    if len(norms) == 1:
        family = parallel("transformer.h", norms[0], linears[0], linears[1], (linears[2],), linears[3])
    else:
        family = pre_ln("transformer.h", (norms[0], norms[1]), *linears)
    return replace(family, requires=tuple(requires.items()))


# Falcon: which norms a block has and what they feed is decided by three config values
# (FalconDecoderLayer); no other combination runs in transformers either
FALCON = (
    # Falcon-7B: one LayerNorm, parallel block
    falcon(("input_layernorm",), parallel_attn=True, new_decoder_architecture=False,
            num_ln_in_parallel_attn=OneOf((None, 1))),
    # Falcon2-11B: the new architecture with one norm
    falcon(("input_layernorm",), parallel_attn=True, new_decoder_architecture=True, num_ln_in_parallel_attn=1),
    # Falcon-40B / 180B: ln_attn feeds q/k/v and ln_mlp the MLP, both read the block input (None means 2 here)
    falcon(("ln_attn", "ln_mlp"), parallel_attn=True, new_decoder_architecture=True,
            num_ln_in_parallel_attn=OneOf((None, 2))),
    # Falcon-RW: sequential, input_layernorm before attention and post_attention_layernorm before the MLP
    falcon(("input_layernorm", "post_attention_layernorm"), parallel_attn=False, new_decoder_architecture=False),
)


def gemma4(per_layer: bool, moe: bool) -> Family:
    """Gemma 4 (`gemma4_text`; the multimodal `gemma4` holds the same blocks): Gemma 2's four norms per block, but
    RMSNorms y = w * x ("gain", not Gemma's 1 + w). Its attention is one of three, told apart block by block
    (`variants`): q/k/v; q/k where `attention_k_eq_v` makes a full-attention layer's values its keys (no
    v_proj); q alone in the last `num_kv_shared_layers` blocks, which reuse an earlier block's keys and values.
    With `enable_moe_block` (26B-A4B) a mixture of experts runs after the MLP, beside it: its router (a
    weightless norm of its own, then `router.proj`, kept float) reads the residual stream, the experts
    pre_feedforward_layernorm_2's output. With `hidden_size_per_layer_input` (E2B, E4B) each block ends with a
    per-layer-input gate, which reads the residual stream (no norm: nothing to smooth), and its projection,
    which reads the gate times the layer's own input: both quantized, as in GPTQModel's definition."""
    mlp_in, expert_in = ("mlp.gate_proj", "mlp.up_proj"), f"experts.{EXPERT}.gate_up_proj"
    after: tuple[tuple[str, ...], ...] = (mlp_in, ("mlp.down_proj",))
    smooth = (Smooth("pre_feedforward_layernorm", mlp_in, "gain"),)
    if moe:
        after += ((expert_in,), (f"experts.{EXPERT}.down_proj",))
        smooth += (Smooth("pre_feedforward_layernorm_2", (expert_in,), "gain"),)
    if per_layer:
        after += (("per_layer_input_gate",), ("per_layer_projection",))
    moe_parts: dict[str, Any] = {"experts": "experts", "floats": ("router.proj",), "fused": (expert_in,)} if moe else {}

    def attention(qkv: tuple[str, ...]) -> Family:
        return Family("model.layers", (qkv, ("self_attn.o_proj",), *after), (Smooth("input_layernorm", qkv, "gain"), *smooth),
                      **moe_parts)

    requires = (("hidden_size_per_layer_input", (NoneOf if per_layer else OneOf)((0, None))),
                ("enable_moe_block", True if moe else OneOf((False, None))))
    return replace(attention(QKV[:1]), requires=requires,
                   variants=(("self_attn.v_proj", attention(QKV)), ("self_attn.k_proj", attention(QKV[:2]))))


# every Gemma 4 layout: E2B / E4B (per-layer inputs), 31B (dense), 26B-A4B (experts), and the fourth combination
GEMMA4 = tuple(gemma4(per_layer, moe) for per_layer in (False, True) for moe in (False, True))


def gemma3n(qkv: tuple[str, ...] = QKV[:1]) -> Family:
    """Gemma 3n (`gemma3n_text`): RMSNorms y = w * x, Gemma 2's four norms, q/k/v norms after the projections; the
    last `num_kv_shared_layers` blocks reuse an earlier block's keys and values (q alone; a block with k_proj has
    all three, `variants`). Every block passes AltUp's streams, (streams, batch, tokens, hidden), on
    (`stream_axes`); attention and the MLP read the active stream. Float, as in GPTQModel 7.7's definition: AltUp's
    router (its router_norm feeds only it) and prediction / correction coefficients, and LAuReL's low-rank pair.
    The per-layer-input gate reads the corrected active stream times a learnt scale (no norm) and is quantized with
    its projection, as in GPTQModel. LAuReL returns its input plus its low-rank branch, and its input is
    input_layernorm's output, so that output is also the residual stream: a fold into the norm would move it
    (tests/test_families.py), and SmoothQuant is refused, as for MiniMax. The first layers' MLP
    (`activation_sparsity_pattern`) keeps a per-token gaussian top-k of gate_proj's outputs: token-local, and
    down_proj's statistics are what runs. The model's altup_projections, altup_unembed_projections and
    per_layer_model_projection sit outside the blocks and stay float, as embeddings do."""
    floats = (*(f"altup.{n}" for n in ("modality_router", "prediction_coefs", "correction_coefs")),
              "laurel.linear_left", "laurel.linear_right")
    groups = (qkv, ("self_attn.o_proj",), MLP_IN, ("mlp.down_proj",), ("per_layer_input_gate",), ("per_layer_projection",))
    family = Family("model.layers", groups, (), floats=floats, stream_axes=1,
                    unsmoothable="LAuReL adds input_layernorm's output to the residual stream")
    return replace(family, variants=(("self_attn.k_proj", gemma3n(QKV)),)) if qkv == QKV[:1] else family
