"""Tiny models and measurements shared by the quantization tests (import from test files)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

from ptq_bench.quant.calibrate import decoder_layers, model_family, quantizable_linears

VOCAB, HIDDEN, LAYERS = 256, 64, 2


def tiny_llama(seed: int = 0, hidden: int = HIDDEN, intermediate: int = 128, layers: int = LAYERS) -> LlamaForCausalLM:
    """Random-init LLaMA: hidden 64, 2 layers, 4 heads, vocab 256, float32, eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # default init is tiny (std 0.02); make the blocks matter
        for m in quantizable_linears(model).values():
            m.weight.normal_(0, 1 / m.in_features**0.5)
    return model


def calib_tokens(n: int = 8, seqlen: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, seqlen), generator=g)


def add_outlier_channels(model: nn.Module, channels: tuple[int, ...] = (3, 17, 40), factor: float = 50.0) -> None:
    """Scale a few weight channels of every smoothing norm (families registry): activation outliers as in
    real LLMs."""
    with torch.no_grad():
        for layer in decoder_layers(model):
            for pair in model_family(model).smooth:
                layer.get_submodule(pair.norm).weight[list(channels)] *= factor


def add_weight_outliers(model: nn.Module, frac: float = 0.01, factor: float = 20.0, seed: int = 3) -> None:
    """Multiply a random fraction of weight entries by `factor` (heavy-tailed weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in quantizable_linears(model).values():
            mask = torch.rand(m.weight.shape, generator=g) < frac
            m.weight[mask] *= factor


@torch.no_grad()
def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens, use_cache=False).logits.float()


@torch.no_grad()
def relative_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((ref - out).pow(2).sum() / ref.pow(2).sum())


@torch.no_grad()
def nll(model: nn.Module, tokens: torch.Tensor) -> float:
    """Mean next-token NLL; exp() of it is the perplexity."""
    lg = logits(model, tokens)[:, :-1]
    return float(torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), tokens[:, 1:].reshape(-1)))


@torch.no_grad()
def linear_errors(fp: nn.Module, q: nn.Module, tokens: torch.Tensor) -> dict[str, float]:
    """Per-linear relative output error ||X W^T - X W_hat^T||^2 / ||X W^T||^2 on the fp model's inputs X."""
    inputs: dict[str, list[torch.Tensor]] = {}
    fp_lin, q_lin = quantizable_linears(fp), quantizable_linears(q)
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs.setdefault(n, []).append(a[0].detach()))
             for n, m in fp_lin.items()]
    fp(tokens, use_cache=False)
    for h in hooks:
        h.remove()
    out = {}
    for n, xs in inputs.items():
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs]).float()
        w, w_hat = fp_lin[n].weight.float(), q_lin[n].weight.float()
        out[n] = relative_error(x @ w.T, x @ w_hat.T)
    return out


def quantized_copy(model: nn.Module, method: str, calib: torch.Tensor | None = None, **params) -> tuple:
    """(quantized deep copy, report) for a registered method and its config params."""
    from ptq_bench.quant import get_method

    m = get_method(method)
    target = copy.deepcopy(model)
    report = m.apply(target, m.config_cls(**params), calib if m.needs_calibration else None)
    return target, report
