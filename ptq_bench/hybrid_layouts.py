"""Hybrids' block layouts: builders for decoders whose blocks mix attention with another token mixer (linear
attention, Mamba, short convolutions, RG-LRU) and the layouts built from them, and the pure recurrent decoders'
(Mamba, Mamba-2, xLSTM). The records and the shared block shapes they start from are in
`ptq_bench.block_layouts`; `ptq_bench.families` maps model types to them.

This module imports nothing heavy (no torch), so `validate` can check a checkpoint's family cheaply.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ptq_bench.block_layouts import (
    EXPERT,
    QKV,
    SHARED_AFTER,
    Family,
    Smooth,
    gated_mla,
    llama_like,
    mla_layouts,
    moe_block,
)


def mixer(family: Family, inputs: tuple[str, ...], out: str, floats: tuple[str, ...] = (),
          inner: tuple[Smooth, ...] = (), inside: tuple[str, ...] = (), middle: tuple[str, ...] = ()) -> Family:
    """`family`'s block with another token mixer in attention's place (a hybrid's linear-attention, Mamba or
    convolution blocks): its input linears `inputs` and `floats` (kept in float) read the attention norm's
    output, and `out` is its output linear; `inner`: norms inside the mixer that feed `out` (Mamba's gated
    RMSNorm); `inside`: linears within the mixer that stay in float and read no smoothed norm (Mamba-1's
    x_proj and dt_proj); `middle`: a group of quantized linears run between the inputs and `out` that read
    another linear's output (a low-rank pair's second half). (`family`'s first two groups and first smoothing
    pair are its attention's, as the builders above make them.)"""
    attn, *rest = family.smooth
    groups = (inputs, *((middle,) if middle else ()), (out,), *family.groups[2:])
    return replace(family, groups=groups, floats=(*family.floats, *floats, *inside),
                   smooth=(Smooth(attn.norm, (*inputs, *floats), attn.kind), *inner, *rest),
                   dense=family.dense and mixer(family.dense, inputs, out, floats, inner, inside, middle))


def delta_attention(family: Family, inputs: tuple[str, ...], floats: tuple[str, ...], inside: tuple[str, ...] = (),
                    middle: tuple[str, ...] = ()) -> Family:
    """Kimi Delta Attention blocks (Kimi-Linear, Ling / Ring 2.5's `bailing_hybrid`) in `family`'s attention
    blocks' place. Both block kinds keep their mixer under `self_attn`; only KDA has a `conv1d`. Its q / k / v
    and output-gate projections (`inputs`, with `middle`, the gate's low-rank second half) are quantized; the
    forget-gate (decay) and beta projections stay in float, as GPTQModel keeps Gated DeltaNet's b / a
    (`floats` read the attention norm; `inside`, a low-rank second half, read another float). The gated
    RMSNorm before o_proj has one weight per head dimension, shared by every head: not smoothed."""
    def named(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f"self_attn.{n}" for n in names)

    return mixer(family, named(inputs), "self_attn.o_proj", named(floats), inside=named(inside), middle=named(middle))


def gated_deltanet(family: Family, inputs: tuple[str, ...], floats: tuple[str, ...]) -> Family:
    """A Gated DeltaNet hybrid (Qwen3-Next, Qwen3.5): blocks with a `linear_attn` have it in attention's
    place. Its projections `inputs` (q/k/v and the output gate z) are quantized; `floats`, the per-head
    decay and update-rate projections (b, a), stay in float, as in GPTQModel's definitions. Its gated
    RMSNorm, which feeds out_proj, has one weight per head dimension shared by every head, so it cannot take
    out_proj's per-channel smoothing scales (as v -> o in attention). The causal depthwise conv1d between the
    projections is not a linear and stays in float."""
    def named(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f"linear_attn.{n}" for n in names)

    return replace(family, variants=(("linear_attn", mixer(family, named(inputs), "linear_attn.out_proj",
                                                           named(floats))),))


# Kimi-Linear and Ling / Ring 2.5: Kimi Delta Attention blocks between MLA blocks (both under self_attn; KDA's
# has a conv1d), dense first blocks, then DeepSeek-V3's experts with a shared one after them. Kimi's forget gate
# and output gate are low-rank pairs (f_a -> f_b, g_a -> g_b); Bailing's MLA has a head-wise output gate g_proj
_KIMI_KDA = delta_attention(SHARED_AFTER, ("q_proj", "k_proj", "v_proj", "g_a_proj"), ("forget_gate.f_a_proj", "b_proj"),
                            inside=("forget_gate.f_b_proj",), middle=("g_b_proj",))
_BAILING_KDA = delta_attention(SHARED_AFTER, ("q_proj", "k_proj", "v_proj", "g_proj"), ("forget_gate.f_proj", "b_proj"))
KIMI_LINEAR = tuple(replace(f, variants=(("self_attn.conv1d", _KIMI_KDA),)) for f in mla_layouts(SHARED_AFTER))
BAILING_HYBRID = tuple(replace(gated_mla(f), variants=(("self_attn.conv1d", _BAILING_KDA),))
                       for f in mla_layouts(SHARED_AFTER))


# LFM2: operator_norm feeds attention (its output linear out_proj) or, in "conv" blocks, a gated short
# convolution (in_proj -> B, C, x; a causal depthwise conv1d; out_proj); ffn_norm feeds the w1 / w3 / w2 MLP
def _lfm_attention(qkv: tuple[str, ...] = QKV, out: str = "self_attn.o_proj", **more: Any) -> Family:
    """An LFM attention block: Llama's under LFM's norm and MLP names."""
    return llama_like(attn_norm="operator_norm", mlp_norm="ffn_norm", mlp_in=("feed_forward.w1", "feed_forward.w3"),
                      mlp_out="feed_forward.w2", qkv=qkv, out=out, **more)


_LFM2 = _lfm_attention(out="self_attn.out_proj")  # attention blocks


def lfm2(attention: Family) -> Family:
    """An LFM2 layout from its attention blocks' (`conv` blocks have the gated short convolution instead)."""
    return replace(attention, variants=(("conv", mixer(attention, ("conv.in_proj",), "conv.out_proj")),))


LFM2 = lfm2(_LFM2)
# LFM3: LFM2's blocks, its attention blocks (sliding or full) with Qwen 3's names and, with `use_attention_gate`, a
# per-head sigmoid gate g_proj reading operator_norm's output; it runs after the attention, so it closes the first
# group. Its post_operator_ / post_ffn_norm (use_sandwich_norm) normalize the mixer's and the MLP's outputs
LFM3 = tuple(lfm2(_lfm_attention(qkv, requires=(("use_attention_gate", gate),)))
             for gate, qkv in ((True, (*QKV, "self_attn.g_proj")), (False, QKV)))
# LFM2-MoE: the first `num_dense_layers` blocks LFM2's, then a router (kept float) and fused experts under
# feed_forward, without a shared expert
_LFM2_EXPERTS = "feed_forward.experts"
LFM2_MOE = lfm2(replace(
    _LFM2, groups=(*_LFM2.groups[:2], (f"{_LFM2_EXPERTS}.{EXPERT}.gate_up_proj",), (f"{_LFM2_EXPERTS}.{EXPERT}.down_proj",)),
    smooth=(_LFM2.smooth[0], Smooth("ffn_norm", ("feed_forward.gate", f"{_LFM2_EXPERTS}.{EXPERT}.gate_up_proj"), "gain")),
    experts=_LFM2_EXPERTS, floats=("feed_forward.gate",), dense=_LFM2))


def mamba2(family: Family, path: str = "mamba") -> Family:
    """A Mamba-2 hybrid (Granite 4.0-H, Nemotron-H): blocks with a Mamba-2 mixer at `path` have it in
    attention's place. Its in_proj (z, x, B, C and dt at once) reads the attention norm's output; its gated
    RMSNorm (y * silu(z), normalized per group, times a weight per channel) feeds out_proj and takes its
    smoothing scales. The causal depthwise conv1d and the state-space scan are not linears and stay in float
    (as in GPTQModel's definitions: in_proj and out_proj are quantized)."""
    return replace(family, variants=((path, mixer(family, (f"{path}.in_proj",), f"{path}.out_proj",
                                                  inner=(Smooth(f"{path}.norm", (f"{path}.out_proj",), "gain"),))),))


def jamba(family: Family) -> Family:
    """Jamba: Mamba-1 blocks (`mamba`) between attention blocks, `family` (attention with a mixture of experts
    or, in its dense blocks, a Llama MLP after pre_ff_layernorm). The Mamba mixer's in_proj (x and the gate z)
    reads the attention norm's output and out_proj the gated scan's; between them x_proj (dt, B, C from the
    convolved x) and dt_proj stay in float, as in GPTQModel's definition. dt_proj's forward is never called:
    transformers multiplies its weight into the normalized dt directly, so dt_layernorm (like b_ / c_layernorm,
    which feed the scan) feeds no quantized linear and is not smoothed; no norm feeds x_proj or out_proj."""
    mamba = mixer(family, ("mamba.in_proj",), "mamba.out_proj", inside=("mamba.x_proj", "mamba.dt_proj"))
    return replace(family, variants=(("mamba", mamba),))


def nemotron_h() -> Family:
    """Nemotron-H: a block is one RMSNorm (`norm`) feeding one mixer (`mixer`), and the mixer decides the
    layout: a relu^2 MLP (up, down: the main layout), Mamba-2 (in_proj; its per-channel gated norm feeds
    out_proj), attention, or a mixture of ungated relu^2 experts (`mixer.experts.*.up_proj`) with a shared MLP
    run after them and a float router. Latent MoE projections (`moe_latent_size`) are not described: refused."""
    def block(inputs: tuple[str, ...], outputs: tuple[str, ...], *inner: Smooth, **more: Any) -> Family:
        floats = more.get("floats", ())
        return Family("model.layers", (inputs, outputs), (Smooth("norm", (*floats, *inputs), "gain"), *inner), **more)

    experts, shared = "mixer.experts", "mixer.shared_experts"
    attention = tuple(f"mixer.{n}" for n in ("q_proj", "k_proj", "v_proj"))
    mamba = block(("mixer.in_proj",), ("mixer.out_proj",), Smooth("mixer.norm", ("mixer.out_proj",), "gain"))
    moe = block((f"{experts}.{EXPERT}.up_proj", f"{shared}.up_proj"), (f"{experts}.{EXPERT}.down_proj", f"{shared}.down_proj"),
                experts=experts, floats=("mixer.gate",))  # in run order: the routed experts, then the shared MLP
    mlp = block(("mixer.up_proj",), ("mixer.down_proj",), requires=(("moe_latent_size", None),))
    return replace(mlp, variants=(("mixer.conv1d", mamba), ("mixer.q_proj", block(attention, ("mixer.o_proj",))),
                                  (experts, moe)))


def falcon_h1(gated_norm: bool) -> Family:
    """Falcon-H1, a parallel hybrid: every block runs Mamba-2 and attention side by side on input_layernorm's
    output (their outputs summed, each times a scalar), then a Llama MLP after pre_ff_layernorm. Where
    `mamba_rms_norm`, the mixer's gated RMSNorm (a weight per channel) feeds out_proj. Groups in run order's
    sense: the norm's readers, then the two output linears (each reads its own input linear's product)."""
    inputs, mlp_in = ("mamba.in_proj", *QKV), ("feed_forward.up_proj", "feed_forward.gate_proj")  # up runs first
    inner = (Smooth("mamba.norm", ("mamba.out_proj",), "gain"),) if gated_norm else ()
    return Family("model.layers", (inputs, ("mamba.out_proj", "self_attn.o_proj"), mlp_in, ("feed_forward.down_proj",)),
                  (Smooth("input_layernorm", inputs, "gain"), *inner, Smooth("pre_ff_layernorm", mlp_in, "gain")),
                  requires=(("mamba_rms_norm", gated_norm),))


# Pure state-space decoders: every block under backbone.layers is one RMSNorm (`norm`) feeding one mixer's in_proj.
# Mamba-1 (Mamba, Falcon-Mamba): in_proj (x and the gate z), the causal conv1d, x_proj (dt, B, C from the
# convolved x), the scan, out_proj; quantized in that order, as GPTQModel's falcon_mamba definition (Jamba's keeps
# x_proj float). dt_proj's forward is never called (transformers multiplies its weight into dt itself): float.
# Falcon-Mamba's dt_ / b_ / c_layernorm have no parameters and feed the scan and that product: nothing to smooth
MAMBA1_BACKBONE = Family("backbone.layers", (("mixer.in_proj",), ("mixer.x_proj",), ("mixer.out_proj",)),
                         (Smooth("norm", ("mixer.in_proj",), "gain"),), floats=("mixer.dt_proj",))
# Mamba-2 (Mamba-Codestral): in_proj (z, x, B, C, dt at once) and out_proj, fed by the gated RMSNorm (a weight per
# channel, normalized per group), as in the hybrids' `mamba2`
MAMBA2_BACKBONE = replace(MAMBA1_BACKBONE, groups=(("mixer.in_proj",), ("mixer.out_proj",)), floats=(),
                          smooth=(*MAMBA1_BACKBONE.smooth, Smooth("mixer.norm", ("mixer.out_proj",), "gain")))


def recurrent_gemma() -> Family:
    """RecurrentGemma (Griffin): (1 + w) RMSNorms; temporal_pre_norm feeds the temporal block, local attention
    (q/k/v, o_proj) or, in recurrent blocks, linear_y (the GeLU branch) and linear_x (convolution, then the RG-LRU),
    multiplied before linear_out; channel_pre_norm feeds the MLP. The RG-LRU's input and recurrence gates are bare
    per-head matrices (baddbmm, no nn.Linear) read from the convolution's output: they stay float."""
    t = "temporal_block."
    attention = llama_like(attn_norm="temporal_pre_norm", mlp_norm="channel_pre_norm", kind="one_plus_gain",
                           qkv=tuple(t + n for n in ("q_proj", "k_proj", "v_proj")),
                           mlp_in=("mlp_block.gate_proj", "mlp_block.up_proj"), mlp_out="mlp_block.down_proj",
                           out=f"{t}o_proj")
    return replace(attention, variants=((f"{t}linear_x", mixer(attention, (f"{t}linear_y", f"{t}linear_x"),
                                                               f"{t}linear_out", inside=(f"{t}rg_lru",))),))


# xLSTM (xLSTM-7B), weight_mode "single": norm_mlstm feeds the mLSTM's q, k, v, output gate and its per-head input
# and forget gates (kept float, as Gated DeltaNet's b / a); its multi-head LayerNorm's output is times the sigmoid
# output gate before out_proj (not smoothed); norm_ffn feeds a gated SiLU MLP. ("fused" weight mode: transformers
# 5.25 cannot initialize it; not described.) A row longer than max_inference_chunksize (16384) runs chunk by chunk
# through all blocks (`whole_rows`: validate refuses such a calibration length)
_MLSTM = tuple(f"mlstm_layer.{n}" for n in ("q", "k", "v", "ogate_preact"))
_MLSTM_GATES = ("mlstm_layer.igate_preact", "mlstm_layer.fgate_preact")
_FFN = ("ffn.proj_up_gate", "ffn.proj_up")
XLSTM = Family("backbone.blocks", (_MLSTM, ("mlstm_layer.out_proj",), _FFN, ("ffn.proj_down",)),
               (Smooth("norm_mlstm", (*_MLSTM, *_MLSTM_GATES), "gain"), Smooth("norm_ffn", _FFN, "gain")),
               floats=_MLSTM_GATES, requires=(("weight_mode", "single"), ("use_bias", False)),
               whole_rows="max_inference_chunksize")


# Qwen3.5 / Qwen3-Next's blocks: (1 + w) RMSNorms; a shared expert (with a sigmoid gate) before the routed ones
QWEN_1PW = llama_like(kind="one_plus_gain")
QWEN_MOE_1PW = moe_block(kind="one_plus_gain", shared="mlp.shared_expert.", shared_gate="mlp.shared_expert_gate")
QWEN3_5_GDN, QWEN3_5_GDN_FLOATS = ("in_proj_qkv", "in_proj_z"), ("in_proj_b", "in_proj_a")
QWEN3_5 = gated_deltanet(QWEN_1PW, QWEN3_5_GDN, QWEN3_5_GDN_FLOATS)
QWEN3_5_MOE = gated_deltanet(QWEN_MOE_1PW, QWEN3_5_GDN, QWEN3_5_GDN_FLOATS)

# Qwen4-Exp: Qwen3.5-MoE's blocks on hc_count residual streams. Each sublayer reads a gated mean of the streams'
# hc_norm (one weight per stream and channel), not a norm's output: no norm -> linears pair, SmoothQuant refused.
# Kept float, as in GPTQModel's definition: the hyper-connections' mixing and injection linears, the QSA indexer's
# index_qk_proj (it selects the tokens attention sees), and in PLE blocks the n-gram table and its key / value projections
_HYPER = tuple(f"{s}_hyper_connection.{n}" for s in ("attn", "mlp")
               for n in ("input_mix_weight_down", "input_mix_weight_up", "block_inject_weight"))
_QWEN4_GDN = QWEN3_5_MOE.variants[0][1]  # its Gated DeltaNet blocks


def _qwen4(family: Family, *floats: str) -> Family:
    return replace(family, smooth=(), dense=None, floats=(*family.floats, *_HYPER, *floats),
                   unsmoothable="its sublayers read a gated mix of the hyper-connection streams, not a norm's output")


QWEN4_EXP = replace(_qwen4(QWEN_MOE_1PW, "self_attn.indexer.index_qk_proj"), variants=(
    ("ple", _qwen4(_QWEN4_GDN, "ple.ple_embedding.ngram_embedding", "ple.key_proj", "ple.value_proj")),
    ("linear_attn", _qwen4(_QWEN4_GDN))))
