"""Tiny randomly initialised checkpoints of every model family, built from transformers' own config
classes (no download). One entry per `config.model_type`, and one per further layout where config values
choose among several (Falcon's, keyed "falcon:<layout>"); adding a family to the registry means adding
one line here.

Sizes are the smallest that keep each family's structure: 2 decoder blocks (Gemma 2/3 alternate a
sliding-window and a global layer, with a window shorter than the test prompts), grouped-query
attention where the family has it, hidden 64.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

COMMON = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 256}

SLIDING_FULL = ["sliding_attention", "full_attention"]
DENSE_SPARSE = ["dense", "sparse"]  # a dense first block, then experts
MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
ROUTED = {"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "n_group": 1, "topk_group": 1}
MLA = {"q_lora_rank": 32, "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16,
       "head_dim": 8, "num_key_value_heads": 4}  # head_dim: the rotary part's; kv_b_proj makes every head's k and v
GRANITE_MOE = {"num_local_experts": 4, "num_experts_per_tok": 2, "residual_multiplier": 0.5, "attention_multiplier": 0.25,
               "embedding_multiplier": 4.0, "logits_scaling": 2.0}
FALCON = {"hidden_size": 64, "ffn_hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "max_position_embeddings": 256}
# hybrids: block 0 of the other token mixer, block 1 attention (Gated DeltaNet: 2 key heads, 4 value heads)
GDN = {"layer_types": ["linear_attention", "full_attention"], "linear_num_key_heads": 2, "linear_num_value_heads": 4,
       "linear_key_head_dim": 8, "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4, "head_dim": 16}
QWEN_MOE = {**MOE, "shared_expert_intermediate_size": 32}
# Falcon-H1: Mamba-2 beside attention in every block, with its multipliers away from 1
FALCON_H1 = {"head_dim": 16, "mamba_d_ssm": 128, "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_n_groups": 1,
             "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 16, "mamba_rms_norm": True,
             "attention_in_multiplier": 0.5, "ssm_in_multiplier": 2.0, "ssm_out_multiplier": 0.75}
# Mamba-2 (Granite 4.0-H): 8 heads of 16 over 2 x hidden, one group
MAMBA2 = {"layer_types": ["linear_attention", "full_attention"], "mamba_n_heads": 8, "mamba_d_head": 16,
          "mamba_n_groups": 1, "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 16}
# Jamba: Mamba-1 blocks with one attention block in every 4 (at 1), experts in every other block (at 1, 3)
JAMBA = {"attn_layer_period": 4, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
         "mamba_d_state": 16, "mamba_d_conv": 4, "mamba_expand": 2}
SSM = {"hidden_size": 64, "num_hidden_layers": 2, "state_size": 16, "expand": 2, "conv_kernel": 4}
# Kimi Delta Attention hybrids: KDA blocks 0 and 2, MLA block 1; block 0 dense, then experts and a shared one
KDA = {"num_hidden_layers": 3, "num_key_value_heads": 4, "layer_types": ["linear_attention", "full_attention",
                                                                         "linear_attention"],
       "mlp_layer_types": ["dense", "sparse", "sparse"], "moe_intermediate_size": 32, "n_group": 1, "topk_group": 1}
KIMI = {**KDA, **{k: MLA[k] for k in ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")},
        "num_local_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1, "linear_head_dim": 16,
        "linear_num_heads": 4, "linear_conv_kernel_dim": 4}
BAILING = {**KDA, **{k: MLA[k] for k in ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim",
                                         "v_head_dim")},
           "head_dim": 16, "num_experts": 4, "num_experts_per_token": 2, "num_expert_group": 1, "num_shared_experts": 1,
           "short_conv_kernel_size": 4, "num_nextn_predict_layers": 0,
           "expert_swiglu_limit_list": [0, 7.0, 7.0], "share_expert_swiglu_limit_list": [0, 7.0, 7.0]}
VOCAB_SIZE = "<vocab_size>"  # a config value that must equal the checkpoint's vocabulary size
GEMMA4 = {**COMMON, "head_dim": 16, "sliding_window": 16, "layer_types": SLIDING_FULL, "hidden_size_per_layer_input": 0}
# model_type -> (transformers config class name, config kwargs)
FAMILY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", COMMON),
    "mistral": ("MistralConfig", {**COMMON, "sliding_window": 16}),
    "qwen2": ("Qwen2Config", COMMON),
    "qwen3": ("Qwen3Config", {**COMMON, "head_dim": 16}),
    "gemma": ("GemmaConfig", {**COMMON, "head_dim": 16}),
    "gemma2": ("Gemma2Config", {**COMMON, "head_dim": 16, "sliding_window": 16}),
    "gemma3_text": ("Gemma3TextConfig", {**COMMON, "head_dim": 16, "sliding_window": 16,
                                         "layer_types": ["sliding_attention", "full_attention"]}),
    # Gemma 4: E2B-like (per-layer inputs; block 2 reuses block 0's keys and values, with a double-wide MLP),
    # 31B-like (full layers' values are their keys) and 26B-A4B-like (experts beside the MLP)
    "gemma4_text": ("Gemma4TextConfig", {**GEMMA4, "num_hidden_layers": 3, "layer_types": [*SLIDING_FULL, "full_attention"],
                                         "hidden_size_per_layer_input": 16, "vocab_size_per_layer_input": VOCAB_SIZE,
                                         "num_kv_shared_layers": 1, "use_double_wide_mlp": True}),
    # Gemma 3n: 4 AltUp streams, LAuReL of rank 8, per-layer inputs; block 2 reuses block 1's keys and values; block 0's MLP
    # keeps its gaussian top 5%. altup_correct_scale off: transformers initializes that scale to zeros, and the per-layer
    # gate would read zeros
    "gemma3n_text": ("Gemma3nTextConfig", {**GEMMA4, "num_hidden_layers": 3, "layer_types": [*SLIDING_FULL, "full_attention"],
                                           "hidden_size_per_layer_input": 16, "vocab_size_per_layer_input": VOCAB_SIZE,
                                           "num_kv_shared_layers": 1, "laurel_rank": 8, "altup_correct_scale": False,
                                           "activation_sparsity_pattern": [0.95, 0.0, 0.0]}),
    "gemma4_text:k_eq_v": ("Gemma4TextConfig", {**GEMMA4, "attention_k_eq_v": True}),
    "gemma4_text:moe": ("Gemma4TextConfig", {**GEMMA4, "attention_k_eq_v": True, "enable_moe_block": True, "num_experts": 4,
                                             "top_k_experts": 2, "moe_intermediate_size": 32}),
    "gemma4_text:moe_per_layer": ("Gemma4TextConfig", {**GEMMA4, "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2,
                                                       "moe_intermediate_size": 32, "hidden_size_per_layer_input": 16,
                                                       "vocab_size_per_layer_input": VOCAB_SIZE}),
    "phi3": ("Phi3Config", {**COMMON, "sliding_window": 16}),
    "opt": ("OPTConfig", {"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "max_position_embeddings": 256, "word_embed_proj_dim": 64}),
    "gpt_neox": ("GPTNeoXConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "max_position_embeddings": 256}),
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    "smollm3": ("SmolLM3Config", {**COMMON, "no_rope_layer_interval": 2}),  # block 1 without RoPE
    "granite": ("GraniteConfig", {**COMMON, "residual_multiplier": 0.5, "attention_multiplier": 0.25,
                                  "embedding_multiplier": 4.0, "logits_scaling": 2.0}),
    "helium": ("HeliumConfig", {**COMMON, "head_dim": 16}),
    "arcee": ("ArceeConfig", COMMON),
    "ernie4_5": ("Ernie4_5Config", COMMON),
    "apertus": ("ApertusConfig", COMMON),
    "nemotron": ("NemotronConfig", COMMON),
    "stablelm": ("StableLmConfig", COMMON),
    "starcoder2": ("Starcoder2Config", {**COMMON, "sliding_window": 16}),
    "phi": ("PhiConfig", COMMON),
    "gptj": ("GPTJConfig", {"n_embd": 64, "n_layer": 2, "n_head": 4, "rotary_dim": 8, "n_positions": 256}),
    "cohere": ("CohereConfig", COMMON),
    "olmo": ("OlmoConfig", {**COMMON, "clip_qkv": 8.0}),  # OLMo-1B-0724 clips q/k/v at 8
    "olmo2": ("Olmo2Config", COMMON),
    "olmo3": ("Olmo3Config", {**COMMON, "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]}),
    "bitnet": ("BitNetConfig", COMMON),
    "glm4": ("Glm4Config", {**COMMON, "head_dim": 16}),
    "glm": ("GlmConfig", {**COMMON, "head_dim": 16}),
    "cohere2": ("Cohere2Config", {**COMMON, "sliding_window": 16, "layer_types": SLIDING_FULL}),
    # North: RoPE in its sliding layers, none (NoPE) in its full ones
    "cohere_compass_text": ("CohereCompassTextConfig", {**COMMON, "sliding_window": 16, "layer_types": SLIDING_FULL,
                                                        "rope_parameters": {"sliding_attention": {
                                                            "rope_type": "default", "rope_theta": 10000.0},
                                                            "full_attention": None}}),
    "exaone4": ("Exaone4Config", {**COMMON, "sliding_window": 16, "layer_types": SLIDING_FULL}),
    "ministral": ("MinistralConfig", {**COMMON, "head_dim": 16, "sliding_window": 16, "layer_types": SLIDING_FULL}),
    "seed_oss": ("SeedOssConfig", {**COMMON, "head_dim": 16}),
    "internlm3": ("InternLM3Config", {**COMMON, "head_dim": 16}),
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", {**COMMON, "head_dim": 16}),
    "vaultgemma": ("VaultGemmaConfig", {**COMMON, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 16,
                                        "layer_types": SLIDING_FULL}),
    "gpt_bigcode": ("GPTBigCodeConfig", {"n_embd": 64, "n_inner": 128, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    "gpt_neo": ("GPTNeoConfig", {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
                                 "attention_types": [[["global", "local"], 1]], "window_size": 16,
                                 "max_position_embeddings": 256}),
    "codegen": ("CodeGenConfig", {"n_embd": 64, "n_inner": 128, "n_layer": 2, "n_head": 4, "rotary_dim": 8,
                                  "n_positions": 256, "n_ctx": 256}),
    "bloom": ("BloomConfig", {"hidden_size": 64, "n_layer": 2, "n_head": 4}),
    "mpt": ("MptConfig", {"d_model": 64, "expansion_ratio": 2, "n_layers": 2, "n_heads": 4, "max_seq_len": 256}),
    "persimmon": ("PersimmonConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                      "num_attention_heads": 4, "max_position_embeddings": 256}),
    "ministral3": ("Ministral3Config", {**COMMON, "head_dim": 16, "sliding_window": 16}),
    "exaone": ("ExaoneConfig", COMMON),
    "iquestcoder": ("IQuestCoderConfig", {**COMMON, "head_dim": 16}),
    "cwm": ("CwmConfig", {**COMMON, "head_dim": 16, "sliding_window": 16, "layer_types": SLIDING_FULL,
                          "bos_token_id": 1}),  # an int, its config class insists
    "granite_swa": ("GraniteSWAConfig", {**COMMON, "sliding_window": 16, "layer_types": SLIDING_FULL,
                                         "residual_multiplier": 0.5, "embedding_multiplier": 4.0}),
    "diffllama": ("DiffLlamaConfig", COMMON),
    "hyperclovax": ("HyperCLOVAXConfig", {**COMMON, "residual_multiplier": 0.5}),  # with its post-norms
    "jais2": ("Jais2Config", COMMON),
    "apertus1p5_text": ("Apertus1p5TextConfig", COMMON),
    "nanochat": ("NanoChatConfig", COMMON),
    "xglm": ("XGLMConfig", {"d_model": 64, "ffn_dim": 128, "num_layers": 2, "attention_heads": 4,
                            "max_position_embeddings": 256}),
    "biogpt": ("BioGptConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "max_position_embeddings": 256}),
    "gpt_neox_japanese": ("GPTNeoXJapaneseConfig", {"hidden_size": 64, "intermediate_multiple_size": 2,
                                                    "num_hidden_layers": 2, "num_attention_heads": 4,
                                                    "max_position_embeddings": 256}),
    "ctrl": ("CTRLConfig", {"n_embd": 64, "dff": 128, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    "openai-gpt": ("OpenAIGPTConfig", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    "falcon": ("FalconConfig", FALCON),  # Falcon-7B: one LayerNorm, parallel block, multi-query
    "falcon:11b": ("FalconConfig", {**FALCON, "new_decoder_architecture": True, "num_kv_heads": 2,
                                    "num_ln_in_parallel_attn": 1}),
    "falcon:40b": ("FalconConfig", {**FALCON, "new_decoder_architecture": True, "num_kv_heads": 2}),
    "falcon:rw": ("FalconConfig", {**FALCON, "parallel_attn": False, "multi_query": False, "alibi": True,
                                   "bias": True}),
    "qwen3_5_text": ("Qwen3_5TextConfig", {**COMMON, **GDN}),
    "qwen3_5_moe_text": ("Qwen3_5MoeTextConfig", {**COMMON, **GDN, **QWEN_MOE}),
    # Qwen4-Exp: 2 hyper-connection streams; a Gated DeltaNet block with per-layer n-gram embeddings (PLE), an
    # attention block with its QSA token indexer (a budget of 8 tokens, in blocks of 4: below the prompts' lengths),
    # a Gated DeltaNet block without PLE; experts in every block. PLE needs an eos id (it pads n-gram contexts with it)
    "qwen4_exp_text": ("Qwen4ExpTextConfig", {**COMMON, **GDN, **QWEN_MOE, "num_hidden_layers": 3, "layer_types": [
        "linear_attention", "indexed_attention", "linear_attention"], "hc_count": 2, "hc_lowrank": 16, "ple_layer_ids": [1],
        "ple_embed_dim": 32, "ngram_size": 3, "heads_per_ngram": 2, "ngram_vocab_size_base": 64, "split_ngram_parts": 1,
        "eos_token_id": 1, "indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16, "indexer_budget": 8,
        "indexer_compress_ratio": 4}),
    "qwen3_next": ("Qwen3NextConfig", {**COMMON, **GDN, **QWEN_MOE}),
    "lfm2": ("Lfm2Config", {**COMMON, "layer_types": ["conv", "full_attention"]}),
    # LFM2-MoE: block 0 dense (conv), then experts in an attention and a conv block
    "lfm2_moe": ("Lfm2MoeConfig", {**COMMON, **MOE, "num_hidden_layers": 3, "num_dense_layers": 1,
                                   "layer_types": ["conv", "full_attention", "conv"]}),
    # LFM3: a conv, a sliding (gated attention) and a full block; then without the attention gate
    "lfm3": ("Lfm3Config", {**COMMON, "head_dim": 16, "num_hidden_layers": 3, "sliding_window": 16,
                            "layer_types": ["conv", "sliding_attention", "full_attention"]}),
    "lfm3:no_gate": ("Lfm3Config", {**COMMON, "head_dim": 16, "layer_types": ["conv", "full_attention"],
                                    "use_attention_gate": False}),
    "bamba": ("BambaConfig", {**COMMON, **{k: v for k, v in MAMBA2.items() if k != "layer_types"},
                              "attn_layer_indices": [1]}),  # block 0 Mamba-2, block 1 attention
    "falcon_h1": ("FalconH1Config", {**COMMON, **FALCON_H1}),
    "falcon_h1:no_norm": ("FalconH1Config", {**COMMON, **FALCON_H1, "mamba_rms_norm": False}),
    # Nemotron-H: a Mamba-2, an attention, an MLP and a MoE block (ungated experts, a shared MLP)
    "nemotron_h": ("NemotronHConfig", {**COMMON, "layers_block_type": ["mamba", "attention", "mlp", "moe"], "head_dim": 16,
                                       "mamba_num_heads": 8, "mamba_head_dim": 16, "n_groups": 1, "ssm_state_size": 16,
                                       "conv_kernel": 4, "expand": 2, "chunk_size": 16, "n_routed_experts": 4,
                                       "num_experts_per_tok": 2, "moe_intermediate_size": 32, "n_group": 1, "topk_group": 1,
                                       "moe_shared_expert_intermediate_size": 32}),
    # pure recurrent decoders, 2 blocks: Mamba, Falcon-Mamba; Mamba-2 with 8 heads of 16 over 2 x hidden in 2 groups
    # (the gated norm normalizes per group), chunks of 16 tokens
    "mamba": ("MambaConfig", SSM),
    "falcon_mamba": ("FalconMambaConfig", SSM),
    "mamba2": ("Mamba2Config", {**SSM, "num_heads": 8, "head_dim": 16, "n_groups": 2, "chunk_size": 16}),
    # xLSTM: q/k narrower than v (transformers' cache sizes q/k from a multiple of 64: 64 here, as the layer's)
    "xlstm": ("xLSTMConfig", {"hidden_size": 64, "num_hidden_layers": 2, "num_heads": 4, "qk_dim_factor": 1.0,
                              "v_dim_factor": 2.0, "chunk_size": 16}),
    # RecurrentGemma: block 0 recurrent (RG-LRU), block 1 local attention (multi-query) with a 16-token window
    "recurrent_gemma": ("RecurrentGemmaConfig", {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                                                 "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
                                                 "attention_window_size": 16, "conv1d_width": 4,
                                                 "block_types": ["recurrent", "attention"]}),
    # a dense Mamba block, an attention block with experts, a dense Mamba block, a Mamba block with experts
    "jamba": ("JambaConfig", {**COMMON, **JAMBA, "num_experts": 4, "num_experts_per_tok": 2, "num_hidden_layers": 4}),
    "jamba:dense": ("JambaConfig", {**COMMON, **JAMBA, "num_experts": 1}),  # Jamba-Reasoning-3B's kind: no experts
    "kimi_linear": ("KimiLinearConfig", {**COMMON, **KIMI}),
    "kimi_linear:no_q_lora": ("KimiLinearConfig", {**COMMON, **KIMI, "q_lora_rank": None}),
    "bailing_hybrid": ("BailingHybridConfig", {**COMMON, **BAILING}),
    "bailing_hybrid:no_q_lora": ("BailingHybridConfig", {**COMMON, **BAILING, "q_lora_rank": None}),
    # OLMo-Hybrid: block 0 OLMo 3's post-norm attention, block 1 a Gated DeltaNet
    "olmo_hybrid": ("OlmoHybridConfig", {**COMMON, "layer_types": ["full_attention", "linear_attention"],
                                         "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
                                         "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4}),
    # MiniMax-Text-01: block 0 lightning attention (blocks of 8 tokens), block 1 attention; its residual weights
    # away from 1 so that a residual mistake shows
    "minimax": ("MiniMaxConfig", {**COMMON, "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
                                  "layer_types": ["linear_attention", "full_attention"], "block_size": 8,
                                  "full_attn_alpha_factor": 2.0, "linear_attn_alpha_factor": 2.0,
                                  "mlp_alpha_factor": 2.0}),
    "granitemoehybrid": ("GraniteMoeHybridConfig", {**COMMON, **GRANITE_MOE, **MAMBA2, "shared_intermediate_size": 32}),
    "granitemoehybrid:dense": ("GraniteMoeHybridConfig", {**COMMON, **GRANITE_MOE, **MAMBA2, "num_local_experts": 0,
                                                          "shared_intermediate_size": 32}),
    # mixtures of experts: 4 experts, 2 per token (models/experts.py unfuses them)
    "mixtral": ("MixtralConfig", {**COMMON, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "olmoe": ("OlmoeConfig", {**COMMON, "num_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": ("Qwen3MoeConfig", {**COMMON, "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2,
                                     "moe_intermediate_size": 32, "mlp_only_layers": [0]}),  # block 0 dense
    "qwen2_moe": ("Qwen2MoeConfig", {**COMMON, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                     "shared_expert_intermediate_size": 64}),
    "phimoe": ("PhimoeConfig", {**COMMON, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "flex_olmo": ("FlexOlmoConfig", {**COMMON, "num_experts": 4, "num_experts_per_tok": 2}),
    # a dense first block, then routed experts with a shared one after them
    "glm4_moe": ("Glm4MoeConfig", {**COMMON, "head_dim": 16, "n_routed_experts": 4, "num_experts_per_tok": 2,
                                   "moe_intermediate_size": 32, "n_shared_experts": 1, "first_k_dense_replace": 1,
                                   "use_qk_norm": True}),
    # run as GLM-4.5's MoE (Glm4MoeForCausalLM): a dense first block, then experts with a shared one after them
    "sarvam_moe": ("SarvamMoEConfig", {**COMMON, "head_dim": 16, "n_routed_experts": 4, "num_experts_per_tok": 2,
                                       "moe_intermediate_size": 32, "n_shared_experts": 1, "first_k_dense_replace": 1}),
    "param2moe": ("Param2MoeConfig", {**COMMON, "head_dim": 16, "n_routed_experts": 4, "num_experts_per_tok": 2,
                                      "moe_intermediate_size": 32, "n_shared_experts": 2, "first_k_dense_replace": 1}),
    "flint": ("FlintConfig", {**COMMON, **MOE, "head_dim": 16, "shared_expert_intermediate_size": 32, "sliding_window": 16,
                              "layer_types": SLIDING_FULL, "mlp_only_layers": [0]}),
    "dots1": ("Dots1Config", {**COMMON, "head_dim": 16, "n_routed_experts": 4, "num_experts_per_tok": 2,
                              "moe_intermediate_size": 32, "n_shared_experts": 1, "first_k_dense_replace": 1}),
    "hunyuan_v1_moe": ("HunYuanMoEV1Config", {**COMMON, "head_dim": 16, "num_experts": 4, "moe_topk": 2}),
    "mellum": ("MellumConfig", {**COMMON, **MOE, "head_dim": 16, "sliding_window": 16, "layer_types": SLIDING_FULL,
                                "mlp_layer_types": DENSE_SPARSE}),
    "minimax_m2": ("MiniMaxM2Config", {**COMMON, "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "mimo_v2_flash": ("MiMoV2FlashConfig", {**COMMON, **ROUTED, "head_dim": 16, "v_head_dim": 8, "sliding_window": 16,
                                              "layer_types": SLIDING_FULL, "mlp_layer_types": DENSE_SPARSE}),
    "exaone_moe": ("ExaoneMoeConfig", {**COMMON, **MOE, "head_dim": 16, "num_shared_experts": 1, "sliding_window": 16,
                                       "layer_types": SLIDING_FULL, "mlp_layer_types": DENSE_SPARSE}),
    "solar_open": ("SolarOpenConfig", {**COMMON, **ROUTED, "head_dim": 16, "n_shared_experts": 1}),
    "hy_v3": ("HYV3Config", {**COMMON, **MOE, "head_dim": 16, "num_shared_experts": 1, "mlp_layer_types": DENSE_SPARSE}),
    "kolibri1": ("Kolibri1Config", {**COMMON, **MOE, "head_dim": 16, "shared_expert_intermediate_size": 32,
                                    "sliding_window": 16, "layer_types": SLIDING_FULL}),
    "laguna": ("LagunaConfig", {**COMMON, **MOE, "head_dim": 16, "shared_expert_intermediate_size": 32,
                                "sliding_window": 16, "layer_types": SLIDING_FULL, "mlp_layer_types": DENSE_SPARSE}),
    "beam": ("BeamConfig", {**COMMON, **ROUTED, "num_experts": 4, "head_dim": 16, "sliding_window": 16,
                            "layer_types": SLIDING_FULL, "mlp_layer_types": DENSE_SPARSE}),
    # MiniMax-M3: block 0 dense with full attention, block 1 experts and a shared MLP with the block-sparse indexer
    # (blocks of 4 keys, 2 chosen per query, so that it chooses within the test prompts)
    "minimax_m3_vl_text": ("MiniMaxM3VLTextConfig", {**COMMON, "head_dim": 16, "rotary_dim": 8, "intermediate_size": 32,
                                                     "dense_intermediate_size": 128, "shared_intermediate_size": 32,
                                                     "num_local_experts": 4, "num_experts_per_tok": 2, "index_n_heads": 2,
                                                     "index_head_dim": 16, "index_block_size": 4, "index_topk_blocks": 2,
                                                     "layer_types": ["full_attention", "minimax_m3_sparse"],
                                                     "mlp_layer_types": DENSE_SPARSE}),
    # A.X-K2: block 0 dense, block 1 experts and a shared one; the indexer keeps 4 keys per query, with 16 heads
    # (the config's default; with 2, most relu'd index scores are exactly 0: topk breaks ties by the row's length)
    "axk2": ("AXK2Config", {**COMMON, **ROUTED, **MLA, "n_shared_experts": 1, "mlp_layer_types": DENSE_SPARSE, "index_topk": 4,
                            "index_n_heads": 16, "index_head_dim": 16, "gated_norm_rank": 4}),
    "minicpm5_moe": ("MiniCPM5MoeConfig", {**COMMON, **ROUTED, "head_dim": 16, "n_shared_experts": 1,
                                           "mlp_layer_types": DENSE_SPARSE}),
    "afmoe": ("AfmoeConfig", {**COMMON, **MOE, "head_dim": 16, "num_dense_layers": 1, "num_shared_experts": 1,
                              "sliding_window": 16, "layer_types": SLIDING_FULL}),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", {**COMMON, "moe_num_experts": 4, "moe_k": 2, "moe_intermediate_size": 32,
                                            "moe_num_shared_experts": 1, "moe_layer_start_index": 1}),
    "ernie4_5_moe:unshared": ("Ernie4_5_MoeConfig", {**COMMON, "moe_num_experts": 4, "moe_k": 2,
                                                     "moe_intermediate_size": 32, "moe_num_shared_experts": 0}),
    "cohere2_moe": ("Cohere2MoeConfig", {**COMMON, **MOE, "head_dim": 16, "sliding_window": 16,
                                         "layer_types": SLIDING_FULL, "mlp_layer_types": DENSE_SPARSE,
                                         "prefix_dense_intermediate_size": 128}),
    "cohere2_moe:shared": ("Cohere2MoeConfig", {**COMMON, **MOE, "head_dim": 16, "sliding_window": 16,
                                                "layer_types": SLIDING_FULL, "num_shared_experts": 1}),
    "gpt_oss": ("GptOssConfig", {**COMMON, "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
                                 "sliding_window": 16, "layer_types": SLIDING_FULL}),
    # multi-head latent attention: low-rank q (or q_proj, where q_lora_rank is None) and kv
    "deepseek_v3": ("DeepseekV3Config", {**COMMON, **ROUTED, **MLA, "n_shared_experts": 1, "first_k_dense_replace": 1}),
    "deepseek_v3:no_q_lora": ("DeepseekV3Config", {**COMMON, **ROUTED, **MLA, "q_lora_rank": None,
                                                   "n_shared_experts": 1, "first_k_dense_replace": 1}),
    # Sarvam-105B, run as DeepSeek-V3 (q_lora_rank None, its default; then with a low-rank q)
    "sarvam_mla": ("SarvamMLAConfig", {**COMMON, **ROUTED, **MLA, "q_lora_rank": None, "n_shared_experts": 1,
                                       "first_k_dense_replace": 1}),
    "sarvam_mla:q_lora": ("SarvamMLAConfig", {**COMMON, **ROUTED, **MLA, "n_shared_experts": 1, "first_k_dense_replace": 1}),
    "deepseek_v2": ("DeepseekV2Config", {**COMMON, **ROUTED, **MLA, "n_shared_experts": 1, "first_k_dense_replace": 1}),
    "deepseek_v2:no_q_lora": ("DeepseekV2Config", {**COMMON, **ROUTED, **MLA, "q_lora_rank": None, "n_shared_experts": 1}),
    "glm4_moe_lite": ("Glm4MoeLiteConfig", {**COMMON, **ROUTED, **MLA, "n_shared_experts": 1,
                                            "mlp_layer_types": DENSE_SPARSE}),
    "glm4_moe_lite:no_q_lora": ("Glm4MoeLiteConfig", {**COMMON, **ROUTED, **MLA, "q_lora_rank": None,
                                                      "n_shared_experts": 1}),
    # dots3.note: MLA with a head gate, block 0 DSA-indexed (an indexer: top 16 keys, fewer than the tests' prompts,
    # so that its selection matters) and dense, block 1 sliding with experts and a shared expert after them. 16
    # indexer heads: with 2, many keys score exactly 0 (every head's ReLU), and top-k breaks those ties by the
    # row's length, so a prefix's logits changed with what followed it
    "dots3_note_text": ("Dots3NoteTextConfig", {**COMMON, **ROUTED, **MLA, "head_dim": 24, "n_shared_experts": 1,
                                                "shared_experts_intermediate_size": 32, "index_topk": 16,
                                                "index_head_dim": 16, "index_n_heads": 16, "sliding_window": 16,
                                                "layer_types": ["indexed_attention", "sliding_attention"],
                                                "mlp_layer_types": DENSE_SPARSE, "swa_num_attention_heads": 4,
                                                "swa_num_key_value_heads": 4, "swa_q_lora_rank": 32,
                                                "swa_kv_lora_rank": 32, "swa_head_dim": 24, "swa_qk_nope_head_dim": 16,
                                                "swa_v_head_dim": 16}),
    "minicpm3": ("MiniCPM3Config", {**COMMON, **MLA}),
    "minicpm3:no_q_lora": ("MiniCPM3Config", {**COMMON, **MLA, "q_lora_rank": None}),
    "youtu": ("YoutuConfig", {**COMMON, **MLA}),
    "youtu:no_q_lora": ("YoutuConfig", {**COMMON, **MLA, "q_lora_rank": None}),
    "llama4_text": ("Llama4TextConfig", {**COMMON, "head_dim": 16, "intermediate_size": 32, "intermediate_size_mlp": 128,
                                         "num_local_experts": 4, "num_experts_per_tok": 2, "moe_layers": [1],
                                         "no_rope_layers": [1, 0], "attention_chunk_size": 16,
                                         "floor_scale": 8}),  # block 0 chunked, block 1 NoPE with its temperature
    "granitemoe": ("GraniteMoeConfig", {**COMMON, **GRANITE_MOE}),
    "granitemoeshared": ("GraniteMoeSharedConfig", {**COMMON, **GRANITE_MOE, "shared_intermediate_size": 32}),
    "granitemoeshared:unshared": ("GraniteMoeSharedConfig", {**COMMON, **GRANITE_MOE}),
    "granitemoe_swa": ("GraniteMoeSWAConfig", {**COMMON, **GRANITE_MOE, "shared_intermediate_size": 32,
                                               "sliding_window": 16, "layer_types": SLIDING_FULL}),
}


def tiny_config(model_type: str, vocab_size: int = 512) -> Any:
    import transformers

    cls_name, kwargs = FAMILY_CONFIGS[model_type]
    kwargs = {k: vocab_size if v == VOCAB_SIZE else v for k, v in kwargs.items()}
    special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}  # the tokenizer owns them
    return getattr(transformers, cls_name)(vocab_size=vocab_size, **{**special, **kwargs})


def tiny_model(model_type: str, vocab_size: int = 512, seed: int = 0, layers: int | None = None) -> torch.nn.Module:
    """A randomly initialised fp32 CausalLM of the family, in eval mode (`layers`: decoder blocks, else 2)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, vocab_size)
    if layers is not None:
        config.num_hidden_layers = layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        if model_type in ZERO_ROUTERS:
            _draw_routers(model)
    return model.float().eval()


# transformers initializes these families' routers to zeros: every token of a fresh model would pick the same
# experts (the tie's), leaving the others without calibration input
ZERO_ROUTERS = {"afmoe"}


@torch.no_grad()
def _draw_routers(model: torch.nn.Module) -> None:
    from ptq_bench.families import family_of_config
    from ptq_bench.quant.calibrate import submodule_or_none

    family = family_of_config(model.config)
    for layer in model.get_submodule(family.blocks):
        for router in filter(None, (submodule_or_none(layer, name) for name in family.floats)):
            torch.nn.init.normal_(router.weight, std=model.config.initializer_range)


def save_tiny(model_type: str, out_dir: Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a tiny checkpoint folder (safetensors + config.json) that `source:` can load."""
    tiny_model(model_type, vocab_size, seed).save_pretrained(out_dir)
    return Path(out_dir)
