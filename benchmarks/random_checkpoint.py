"""Random mixture-of-experts checkpoints for `gptq_vs_gptqmodel.py` (no download): a transformers config class,
a fixed seed, `save_pretrained`, and a 384-token byte-level BPE trained on the data folder's corpus (the one
`offload_run.py` gives its checkpoint).

    PTQ_BENCH_DATA=/work/shared/data .venv/bin/python benchmarks/random_checkpoint.py KIND OUT_DIR

KIND (`SHAPES`): mixtral, gpt_oss, deepseek_v3, llama4_text, qwen3_next (hidden 256, 4 blocks, 8 experts),
lfm2, nemotron_h, jamba (dense hybrids, hidden 256, 4 blocks), gemma4_text (E2B's kind: per-layer inputs,
KV sharing); the figures in benchmarks/README.md ("Mixtures of experts") came from these checkpoints. Such a model
is near chance (its perplexity is about its vocabulary): the comparisons check the mechanics, not quality.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_args import checked, exit_with, folder, new_or_folder  # noqa: E402

VOCAB = 384
SPECIAL = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
# kind -> (config class, its values); `redraw`: block weights drawn at 1/sqrt(in) (decisive routing), `norms`:
# (1 + w) norm weights drawn in +-norms (they start at 0)
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "mixtral": ("MixtralConfig", {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
                                  "num_attention_heads": 8, "num_key_value_heads": 4, "num_local_experts": 8,
                                  "num_experts_per_tok": 2, "max_position_embeddings": 512, "redraw": True}),
    # experts stored (in, out), gate and up interleaved, with biases; sliding and full attention alternating
    "gpt_oss": ("GptOssConfig", {"hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 4,
                                 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                                 "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": 64,
                                 "layer_types": ["sliding_attention", "full_attention"] * 2,
                                 "max_position_embeddings": 4096, "tie_word_embeddings": False}),
    # multi-head latent attention, block 0 dense, 8 routed experts + 1 shared
    "deepseek_v3": ("DeepseekV3Config", {"hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
                                         "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
                                         "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
                                         "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "q_lora_rank": 64,
                                         "kv_lora_rank": 64, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32,
                                         "v_head_dim": 32, "head_dim": 16, "max_position_embeddings": 4096,
                                         "tie_word_embeddings": False}),
    # every block MoE: 8 experts, 1 per token as released, a shared expert
    "llama4_text": ("Llama4TextConfig", {"hidden_size": 256, "intermediate_size": 256, "intermediate_size_mlp": 512,
                                         "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                                         "head_dim": 64, "num_local_experts": 8, "num_experts_per_tok": 1,
                                         "max_position_embeddings": 4096, "tie_word_embeddings": False}),
    # Gated DeltaNet blocks 0 and 2, gated attention 1 and 3; 8 experts, top 2, a gated shared expert
    "qwen3_next": ("Qwen3NextConfig", {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
                                       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                                       "layer_types": ["linear_attention", "full_attention"] * 2,
                                       "linear_num_key_heads": 2, "linear_num_value_heads": 4,
                                       "linear_key_head_dim": 64, "linear_value_head_dim": 64,
                                       "linear_conv_kernel_dim": 4, "num_experts": 8, "num_experts_per_tok": 2,
                                       "moe_intermediate_size": 128, "shared_expert_intermediate_size": 128,
                                       "decoder_sparse_step": 1, "mlp_only_layers": [],
                                       "max_position_embeddings": 4096, "tie_word_embeddings": False,
                                       "norms": 0.3}),
    # dense hybrids: LFM2's short-convolution blocks 0 and 2, attention 1 and 3; Nemotron-H's Mamba-2, attention
    # and relu^2 MLP blocks (one norm and one mixer each)
    "lfm2": ("Lfm2Config", {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
                            "num_attention_heads": 4, "num_key_value_heads": 2,
                            "layer_types": ["conv", "full_attention"] * 2, "max_position_embeddings": 4096,
                            "tie_word_embeddings": False}),
    "nemotron_h": ("NemotronHConfig", {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                                       "num_key_value_heads": 2, "head_dim": 64,
                                       "layers_block_type": ["mamba", "mlp", "attention", "mlp"],
                                       "mamba_num_heads": 8, "mamba_head_dim": 64, "n_groups": 1,
                                       "ssm_state_size": 32, "conv_kernel": 4, "expand": 2, "chunk_size": 64,
                                       "max_position_embeddings": 4096, "tie_word_embeddings": False}),
    # Jamba without experts (Jamba-Reasoning-3B's kind): Mamba-1 blocks 0 and 2, attention 1 and 3
    "jamba": ("JambaConfig", {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "attn_layer_period": 2,
                              "attn_layer_offset": 1, "num_experts": 1, "mamba_d_state": 16,
                              "max_position_embeddings": 4096, "tie_word_embeddings": False}),
    # Gemma 4 E2B's kind: per-layer inputs, blocks 2 and 3 reusing blocks 0's and 1's keys and values (q_proj
    # alone, a double-wide MLP), sliding and full attention alternating
    "gemma4_text": ("Gemma4TextConfig", {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
                                         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                                         "layer_types": ["sliding_attention", "full_attention"] * 2,
                                         "sliding_window": 64, "hidden_size_per_layer_input": 64,
                                         "vocab_size_per_layer_input": VOCAB, "num_kv_shared_layers": 2,
                                         "use_double_wide_mlp": True, "max_position_embeddings": 4096,
                                         "tie_word_embeddings": False, "redraw": True}),
}


def build(kind: str) -> Any:
    """The random fp32 model of `kind` (seed 0)."""
    import torch
    import transformers

    cls, values = SHAPES[kind]
    values = dict(values)
    redraw, norms = values.pop("redraw", False), values.pop("norms", 0.0)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        getattr(transformers, cls)(vocab_size=VOCAB, **SPECIAL, **values)).float().eval()
    with torch.no_grad():
        if redraw:
            g = torch.Generator().manual_seed(1)
            for p in model.model.layers.parameters():
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for name, p in model.named_parameters():
            if norms and name.endswith("layernorm.weight"):
                p.uniform_(-norms, norms)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=SHAPES)
    ap.add_argument("out", type=new_or_folder)
    args = ap.parse_args()
    from ptq_bench.data import train_documents
    from ptq_bench.tokenizer import save_tokenizer, train_tokenizer

    data_dir = checked(ap, folder, os.environ.get("PTQ_BENCH_DATA", str(ROOT.parent / "shared" / "data")),
                       "$PTQ_BENCH_DATA")
    docs = train_documents(data_dir)  # a missing corpus file: before anything is written
    build(args.kind).save_pretrained(args.out)
    save_tokenizer(train_tokenizer(docs, VOCAB, 300_000), args.out)
    print(f"{args.kind}: {args.out}")


if __name__ == "__main__":
    exit_with(main)
