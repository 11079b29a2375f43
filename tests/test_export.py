"""Matched model building, save/load round trip, and HF export loaded by stock transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ptq_bench.kinds import BITNET_MODES
from ptq_bench.models.bitlinear import BitLinear, unpack_ternary
from ptq_bench.models.build import (
    MODEL_KINDS,
    ArchConfig,
    build_model,
    cast_model,
    export_hf,
    load_model,
    max_logit_diff,
    save_model,
)

ARCH = ArchConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, max_seq_len=64)
VOCAB = 256
# Measured: 0.0 for all three kinds (ours in no-grad mode runs transformers' BitLinear math op for op).
HF_TOL = 1e-5


def _ids(seed=1):
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(seed))


def _tiny(kind, seed=0):
    """A tiny model whose parameters are moved off their init (norm gains included)."""
    model = build_model(kind, ARCH, VOCAB, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


# ----------------------------------------------------------------------------- build


def test_arch_config_checks():
    with pytest.raises(ValueError, match="multiple of arch.num_heads"):
        ArchConfig(hidden_size=66, num_heads=4)
    with pytest.raises(ValueError, match="multiple of 4"):
        ArchConfig(intermediate_size=690)
    with pytest.raises(ValueError, match="num_layers: must be >= 1"):
        ArchConfig(num_layers=0)
    with pytest.raises(ValueError, match="arch.hidden: unknown key"):
        ArchConfig.from_dict({"hidden": 64})


def test_matched_models_share_initial_weights():
    models = {k: build_model(k, ARCH, VOCAB, seed=3) for k in MODEL_KINDS}
    fp = models["fp16"].state_dict()
    for kind in ("bitnet_b158", "bitnet_b1"):
        m = models[kind]
        sd = m.state_dict()
        assert torch.equal(sd["model.layers.0.mlp.down_proj.weight"], fp["model.layers.0.mlp.down_proj.weight"])
        assert torch.equal(sd["lm_head.weight"], fp["lm_head.weight"])
        assert torch.equal(sd["model.embed_tokens.weight"], fp["model.embed_tokens.weight"])
        assert sum(isinstance(x, BitLinear) for x in m.modules()) == 7 * ARCH.num_layers
        assert not isinstance(m.lm_head, BitLinear)
        norm = m.model.layers[0].input_layernorm
        assert "weight" in dict(norm.named_buffers()) and "weight" not in dict(norm.named_parameters())
    other = build_model("fp16", ARCH, VOCAB, seed=4).state_dict()
    assert not torch.equal(other["lm_head.weight"], fp["lm_head.weight"])
    state = torch.random.get_rng_state()
    build_model("fp16", ARCH, VOCAB, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("int4", ARCH, VOCAB, seed=0)


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_save_load_round_trip(tmp_path, kind):
    model = _tiny(kind)
    save_model(model, kind, tmp_path / "m")
    loaded, got_kind = load_model(tmp_path / "m")
    assert got_kind == kind
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert max_logit_diff(model, loaded, _ids()) == 0.0


def test_save_keeps_dtype_and_checks_kind(tmp_path):
    model = cast_model(_tiny("bitnet_b1"), torch.bfloat16)
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    save_model(model, "bitnet_b1", tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)
    assert max_logit_diff(model, loaded, _ids()) == 0.0
    with pytest.raises(ValueError, match="'bitnet_b158' given"):
        save_model(model, "bitnet_b158", tmp_path / "x")


# ----------------------------------------------------------------------------- HF export


STOCK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["ptq_bench"] = None  # any import of ptq_bench now raises ImportError
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations.bitnet import BitLinear as HFBitLinear

    root, kinds = sys.argv[1], sys.argv[2].split(",")
    ids = torch.load(f"{root}/ids.pt")
    info = {}
    for kind in kinds:
        model = AutoModelForCausalLM.from_pretrained(f"{root}/{kind}").eval()
        with torch.no_grad():
            torch.save(model(input_ids=ids).logits, f"{root}/{kind}.logits.pt")
        q = model.model.layers[0].self_attn.q_proj
        info[kind] = {"bitlinear": isinstance(q, HFBitLinear), "weight_dtype": str(q.weight.dtype),
                      "lm_head": type(model.lm_head).__name__}
    print(json.dumps(info))
    """
)


def test_export_loads_in_stock_transformers(tmp_path):
    ids = _ids()
    torch.save(ids, tmp_path / "ids.pt")
    ours = {}
    for kind in MODEL_KINDS:
        model = _tiny(kind)
        export_hf(model, kind, tmp_path / kind)
        with torch.no_grad():
            ours[kind] = model(input_ids=ids).logits
    script = tmp_path / "stock_load.py"
    script.write_text(STOCK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Eager mode: transformers' BitLinear is torch.compile'd, ~30 s to compile on CPU; same math.
    env.update(TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(  # -I: no PYTHONPATH, no cwd or script dir on sys.path
        [sys.executable, "-I", str(script), str(tmp_path), ",".join(MODEL_KINDS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind in MODEL_KINDS:
        theirs = torch.load(tmp_path / f"{kind}.logits.pt")
        diff = (theirs - ours[kind]).abs().max().item()
        assert diff <= HF_TOL, f"{kind}: max |logit diff| {diff}"
        assert info[kind]["lm_head"] == "Linear"
        assert info[kind]["bitlinear"] == (kind in BITNET_MODES)  # a float kind (fp16 or a new one): none
    assert info["bitnet_b158"]["weight_dtype"] == "torch.uint8"


def test_export_format(tmp_path):
    model = _tiny("bitnet_b1")
    export_hf(model, "bitnet_b1", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"] == {
        "quant_method": "bitnet", "modules_to_not_convert": ["lm_head"], "linear_class": "bitlinear",
        "quantization_mode": "offline", "use_rms_norm": True, "rms_norm_eps": ARCH.rms_norm_eps,
        "ptq_bench_kind": "bitnet_b1",  # read back as bitnet_hf_b1 (W1A8), not the format's W1.58
    }
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "model.safetensors"))
    packed = sd["model.layers.0.mlp.gate_proj.weight"]
    assert packed.dtype == torch.uint8 and packed.shape == (ARCH.intermediate_size // 4, ARCH.hidden_size)
    assert set(unpack_ternary(packed).unique().tolist()) == {-1.0, 1.0}  # binary rides the ternary format
    beta = model.model.layers[0].mlp.gate_proj.weight.abs().mean()
    assert sd["model.layers.0.mlp.gate_proj.weight_scale"].item() == pytest.approx(1 / beta.item(), rel=1e-6)
    assert "model.layers.0.mlp.gate_proj.rms_norm.weight" in sd


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_model_reads_hf_exports(tmp_path, dtype):
    ids = _ids()
    for kind, expect in (("fp16", "fp16"), ("bitnet_b158", "bitnet_hf"), ("bitnet_b1", "bitnet_hf_b1")):
        model = cast_model(_tiny(kind), dtype)  # measured 0.0 in bf16 too (plain .to() gives ~1e-2)
        export_hf(model, kind, tmp_path / kind)
        with torch._dynamo.config.patch(disable=True):  # eager transformers BitLinear (see above)
            loaded, got = load_model(tmp_path / kind)
            assert got == expect
            assert max_logit_diff(model, loaded, ids) <= HF_TOL


def test_a_new_float_kind_saves_and_exports_as_fp16_does(tmp_path, monkeypatch):
    """README: adding a model kind is one entry in kinds.py. A float kind other than `fp16` (say a second
    LR schedule) was refused after its training by save_model ("the model is a 'fp16' model"), and
    export_hf would have written it in the BitNet format: build.py named `fp16` instead of reading the
    kind's BitLinear mode."""
    import ptq_bench.models.build as build

    monkeypatch.setattr(build, "MODEL_KINDS", (*build.MODEL_KINDS, "fp16_alt"))  # kinds.py: mode None
    model = _tiny("fp16")
    save_model(model, "fp16_alt", tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "ptq_bench.json").read_text())["kind"] == "fp16_alt"
    assert (tmp_path / "saved" / "config.json").is_file()  # a plain HF checkpoint too, as fp16's
    export_hf(model, "fp16_alt", tmp_path / "hf")
    assert "quantization_config" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    with pytest.raises(ValueError, match="linears are b158, not float"):
        save_model(_tiny("bitnet_b158"), "fp16_alt", tmp_path / "wrong")
