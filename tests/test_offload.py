"""Models larger than host memory: a checkpoint opened lazily (`models.lazy.open_lazily`), calibrated with
its blocks read from the checkpoint and written to disk (`DiskPlacement(source=..., keep=True)`), and
evaluated one block at a time (`placement.streamed`).

The reference is transformers' own `from_pretrained` of the same folder, quantized in memory: logits and
perplexities must be identical, and no more than one block may be materialized at any linear call.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from quant_fixtures import calib_tokens
from test_calib_memory import materialized, probe
from tiny_families import FAMILY_CONFIGS, tiny_config, tiny_model

from ptq_bench.errors import QuantError
from ptq_bench.eval.perplexity import gptq_perplexity
from ptq_bench.families import family_of_config
from ptq_bench.models.experts import unfuse_experts
from ptq_bench.models.lazy import open_lazily
from ptq_bench.quant import get_method
from ptq_bench.quant.placement import DiskPlacement, streamed, use_placement

IDS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(5))


def saved(family: str, folder: Path, **save) -> Path:
    tiny_model(family).save_pretrained(folder, **save)
    return folder


def folder_digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file())).hexdigest()


# mixtures of experts: most are saved one tensor per expert, which transformers' converters merge on loading
FUSED_EXPERTS = tuple(t for t in sorted(FAMILY_CONFIGS) if family_of_config(tiny_config(t)).experts)


def reference(folder: Path) -> torch.nn.Module:
    """transformers' `from_pretrained` of the folder, its experts unfused as `load_source` does (the eager
    loop, whose logits the lazy model's must equal bit for bit)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    unfuse_experts(model)
    return model


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_lazy_model_streams_the_same_logits_as_from_pretrained(family, tmp_path):
    ckpt = saved(family, tmp_path / "ckpt")
    model, blocks = open_lazily(ckpt)
    assert materialized(model) == []  # nothing of the blocks was read
    ref = reference(ckpt)
    assert list(model.state_dict()) == list(ref.state_dict())  # nor held as anything else (e.g. a buffer)
    place = DiskPlacement(tmp_path / "blocks", source=blocks)
    seen = probe(model)
    with torch.no_grad(), streamed(model, place):
        got = model(IDS).logits
        want = ref(IDS).logits  # in the same autograd mode: a kernel may differ between the two
    assert torch.equal(got, want)
    assert all(live == [i] for i, live in seen), seen[:3]
    assert materialized(model) == [] and not (tmp_path / "blocks").exists()  # evicted, nothing written


def test_experts_stored_one_tensor_each_are_merged_by_transformers_converters(tmp_path):
    """Mixtral's checkpoint holds `block_sparse_moe.experts.{e}.w1/w2/w3` (transformers reverts its fused
    experts on saving), here 12 experts (so 10 and 11 sort before 2 as plain strings), sharded so that one
    block's experts span files. Block 1 read lazily holds, for each expert, exactly the slices of
    from_pretrained's fused tensors."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("mixtral")
    config.num_local_experts = 12
    with torch.random.fork_rng(devices=[]):
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())["weight_map"]
    assert len({f for k, f in index.items() if k.startswith("model.layers.1.block_sparse_moe.experts.")}) > 1
    model, blocks = open_lazily(tmp_path / "ckpt")
    got = blocks.block(1)
    fused = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").model.layers[1].mlp.experts
    for e in range(12):
        assert torch.equal(got[f"mlp.experts.{e}.gate_up_proj.weight"], fused.gate_up_proj[e]), e
        assert torch.equal(got[f"mlp.experts.{e}.down_proj.weight"], fused.down_proj[e]), e
    assert set(got) == set(dict(model.model.layers[1].named_parameters()))


def test_sharded_bf16_checkpoint_keeps_its_dtype(tmp_path):
    ckpt = tmp_path / "ckpt"
    tiny_model("llama").to(torch.bfloat16).save_pretrained(ckpt, max_shard_size="40KB")
    assert (ckpt / "model.safetensors.index.json").is_file()
    model, blocks = open_lazily(ckpt)
    with torch.no_grad(), streamed(model, DiskPlacement(tmp_path / "blocks", source=blocks)):
        got = model(IDS).logits
    ref = reference(ckpt)
    assert got.dtype == torch.bfloat16 and torch.equal(got, ref(IDS).logits)


@pytest.mark.parametrize("family", ["deepseek_v3", "kimi_linear"])
def test_a_bf16_checkpoint_keeps_in_float32_what_from_pretrained_keeps(family, tmp_path):
    """A bf16 checkpoint's routers and routing biases (Kimi-Linear's dt_bias too) are float32 in
    from_pretrained (`_keep_in_fp32_modules_strict`); read lazily, every tensor has from_pretrained's dtype and
    value, and the streamed logits are its own."""
    ckpt = tmp_path / "ckpt"
    tiny_model(family).to(torch.bfloat16).save_pretrained(ckpt)
    ref = reference(ckpt)
    want = ref.state_dict()
    model, blocks = open_lazily(ckpt)
    got = {**{n: t for n, t in model.state_dict().items() if not t.is_meta}, **{
        f"{blocks.blocks}.{i}.{n}": t for i in range(len(blocks.experts)) for n, t in blocks.block(i).items()}}
    assert set(got) == set(want)
    assert {n: t.dtype for n, t in got.items()} == {n: t.dtype for n, t in want.items()}
    assert any(t.dtype == torch.float32 for t in want.values())
    assert all(torch.equal(got[n], want[n]) for n in want)
    with torch.no_grad(), streamed(model, DiskPlacement(tmp_path / "blocks", source=blocks)):
        assert torch.equal(model(IDS).logits, ref(IDS).logits)


@pytest.mark.parametrize(("family", "method", "cfg"), [
    ("llama", "gptq", {"w_bits": 4, "group_size": 16}),
    ("gpt2", "gptq", {"w_bits": 4, "group_size": 16, "act_order": True, "true_sequential": True}),
    ("opt", "smoothquant", {"w_bits": 8, "a_bits": 8}),
    ("phi3", "absmax", {"w_bits": 4, "a_bits": 8}),
    ("qwen2", "quip", {"w_bits": 2}),
    ("gptj", "smoothquant", {"w_bits": 8, "a_bits": 8}),  # a parallel block under transformer.h
    ("olmo2", "gptq", {"w_bits": 3, "group_size": 16, "true_sequential": True}),
    ("mixtral", "gptq", {"w_bits": 4, "group_size": 16, "true_sequential": True}),  # experts merged on reading
    ("qwen2_moe", "smoothquant", {"w_bits": 8, "a_bits": 8}),  # router, experts and shared expert scaled
    ("gpt_oss", "absmax", {"w_bits": 4, "a_bits": 8}),  # fused (in, out) experts with biases, as stored
    ("deepseek_v3", "quip", {"w_bits": 2}),  # latent attention, a dense block 0
    ("llama4_text", "gptq", {"w_bits": 3, "group_size": 16}),  # ScoredInputMoE
    ("gemma3n_text", "gptq", {"w_bits": 4, "group_size": 16, "true_sequential": True}),  # AltUp streams, KV sharing
])
def test_offloaded_quantization_equals_in_memory(family, method, cfg, tmp_path):
    ckpt = saved(family, tmp_path / "ckpt")
    before = folder_digest(ckpt)
    m = get_method(method)
    calib = calib_tokens(4, 32) if m.needs_calibration else None
    ref = reference(ckpt)
    m.apply(ref, m.config_cls(**cfg), calib)

    model, blocks = open_lazily(ckpt)
    place = DiskPlacement(tmp_path / "blocks", source=blocks, keep=True)
    seen = probe(model)
    with use_placement(place):
        report = m.apply(model, m.config_cls(**cfg), calib)
    assert report.n_linears > 0 and materialized(model) == []  # kept on disk, every block written
    assert len(list((tmp_path / "blocks").iterdir())) == len(materialized(ref))
    with torch.no_grad(), streamed(model, place):
        assert torch.equal(model(IDS).logits, ref(IDS).logits)
        ppl = gptq_perplexity(model, IDS.flatten(), seqlen=12, progress=False)
    assert ppl == gptq_perplexity(ref, IDS.flatten(), seqlen=12, progress=False)
    assert all(live == [i] for i, live in seen), seen[:3]
    assert folder_digest(ckpt) == before  # the source checkpoint is only read


def test_no_safetensors_is_an_error(tmp_path):
    ckpt = saved("llama", tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(QuantError, match="safetensors"):
        open_lazily(ckpt)


@pytest.mark.parametrize(("extra", "ignored"), [("mtp.fc.weight", True), ("model.layers.0.extra.weight", False)])
def test_tensors_from_pretrained_ignores_are_ignored_and_others_are_named(tmp_path, extra, ignored):
    """Qwen3-Next checkpoints carry multi-token-prediction tensors (`mtp.*`) that from_pretrained drops by its
    `_keys_to_ignore_on_load_unexpected`; so does the lazy model. A tensor the model does not have and
    transformers does not ignore is an error naming it."""
    from safetensors.torch import load_file, save_file

    ckpt = saved("qwen3_next", tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    save_file({**state, extra: torch.ones(4, 4)}, ckpt / "model.safetensors", metadata={"format": "pt"})
    if not ignored:
        with pytest.raises(QuantError, match=rf"has 1 tensors the model does not \(first: {re.escape(extra)}\)"):
            open_lazily(ckpt)
        return
    model, blocks = open_lazily(ckpt)
    with torch.no_grad(), streamed(model, DiskPlacement(tmp_path / "blocks", source=blocks)):
        assert torch.equal(model(IDS).logits, reference(ckpt)(IDS).logits)


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = saved("llama", tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(QuantError, match=r"lacks 1 .*model\.layers\.1\.mlp\.up_proj\.weight.*re-save") as err:
        open_lazily(ckpt)
    assert "in memory" not in str(err.value)  # loading it in memory is refused too (source_load._refuse_incomplete)


def test_unwritten_block_without_source_is_an_error(tmp_path):
    ckpt = saved("llama", tmp_path / "ckpt")
    model, _ = open_lazily(ckpt)
    with pytest.raises(QuantError, match="never written"), torch.no_grad(), \
            streamed(model, DiskPlacement(tmp_path / "blocks")):
        model(IDS)


def test_config_dtype_is_read(tmp_path):
    ckpt = saved("llama", tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg.get("dtype") == "float32"
    model, _ = open_lazily(ckpt)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_without_a_config_dtype_the_stored_dtype_is_used_as_from_pretrained_does(tmp_path):
    """A config.json naming no dtype: transformers loads the checkpoint in its tensors' dtype; streaming it
    in float32 instead made offloaded rows differ from in-memory ones (fp16 GPTQ W4: 751.92 vs 750.00)."""
    ckpt = saved("llama", tmp_path / "ckpt")
    ref = reference(ckpt).half()
    ref.save_pretrained(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.pop("dtype", None), cfg.pop("torch_dtype", None)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    ref = reference(ckpt)
    assert next(ref.parameters()).dtype == torch.float16  # what transformers does
    model, blocks = open_lazily(ckpt)
    assert {p.dtype for p in model.parameters() if p.device.type != "meta"} == {torch.float16}
    with torch.no_grad(), streamed(model, DiskPlacement(tmp_path / "blocks", source=blocks)):
        assert torch.equal(model(IDS).logits, ref(IDS).logits)


def _damage(ckpt: Path, how: str) -> None:
    """One tensor of a sharded checkpoint made wrong as real downloads and hand edits make it."""
    from safetensors.torch import load_file, save_file

    index = ckpt / "model.safetensors.index.json"
    where = json.loads(index.read_text())
    key = "model.layers.1.post_attention_layernorm.weight"
    shard = ckpt / where["weight_map"][key]
    if how == "missing shard":
        shard.unlink()
        return
    if how == "wrong shard":
        where["weight_map"][key] = next(f for f in sorted(set(where["weight_map"].values())) if f != shard.name)
        index.write_text(json.dumps(where))
        return
    state = load_file(shard)
    state[key] = state[key][:1].clone() if how == "shape" else state[key].to(torch.int8)
    save_file(state, shard, metadata={"format": "pt"})


@pytest.mark.parametrize(("how", "message"), [("shape", r"has shape \[1\], the model's .* \[64\]"),
                                              ("dtype", "stored as I8"), ("wrong shard", "lacks it"),
                                              ("missing shard", "which is missing")])
def test_a_damaged_sharded_checkpoint_is_refused_on_opening(tmp_path, how, message):
    """from_pretrained refuses a tensor of another shape before loading; the lazy loader opened it, and a norm
    of shape [1] then broadcast into rows no loaded model gives (a linear's: a traceback mid-run), an int8
    tensor or one the index misplaced failed at its block's read, a missing shard as a bare FileNotFoundError."""
    ckpt = saved("llama", tmp_path / "ckpt", max_shard_size="50KB")
    assert (ckpt / "model.safetensors.index.json").is_file()
    _damage(ckpt, how)
    with pytest.raises(QuantError, match=message):
        open_lazily(ckpt)


def test_a_single_file_beside_an_index_is_read_as_from_pretrained_reads_it(tmp_path):
    """`from_pretrained` reads model.safetensors before an index; save_pretrained re-saving a sharded folder
    unsharded leaves the old index there. Offload read the index: the old shards' model (other rows under the
    same model), or, the shards removed, a refusal of a folder transformers loads."""
    ckpt = saved("llama", tmp_path / "ckpt", max_shard_size="50KB")
    old = {f.name: f.read_bytes() for f in ckpt.glob("model-*.safetensors")}
    tiny_model("llama", seed=1).save_pretrained(ckpt)
    assert (ckpt / "model.safetensors.index.json").is_file() and (ckpt / "model.safetensors").is_file()
    for name, data in old.items():  # the old shards too, as a folder holding both layouts has them
        (ckpt / name).write_bytes(data)
    model, blocks = open_lazily(ckpt)
    with torch.no_grad(), streamed(model, DiskPlacement(tmp_path / "blocks", source=blocks)):
        assert torch.equal(model(IDS).logits, reference(ckpt)(IDS).logits)


def test_tied_names_stored_with_different_values_are_untied_as_from_pretrained_unties_them(tmp_path):
    """A config tying the head to the embeddings, with both stored and different (a model untied after saving
    its config, a converted export): from_pretrained keeps each (and warns); offload tied the head to the
    embeddings, other rows exit 0 (bf16 tiny Llama, GPTQ W4: ppl 351.05 offloaded vs 365.80 in memory)."""
    from safetensors.torch import load_file, save_file

    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    state = load_file(ckpt / "model.safetensors")
    head = state["model.embed_tokens.weight"] * 0.5
    save_file({**state, "lm_head.weight": head}, ckpt / "model.safetensors", metadata={"format": "pt"})
    lazy, blocks = open_lazily(ckpt)
    assert torch.equal(lazy.lm_head.weight, head)
    with torch.no_grad(), streamed(lazy, DiskPlacement(tmp_path / "blocks", source=blocks)):
        assert torch.equal(lazy(IDS).logits, reference(ckpt)(IDS).logits)


def test_an_expert_of_another_shape_is_refused_on_opening(tmp_path):
    """Mixtral stores one tensor per expert, which transformers' converter stacks: from_pretrained refuses an
    expert of another shape (one line through `ptq-bench run`); offload opened the folder and raised the
    converter's RuntimeError as a traceback when the block was first read."""
    from safetensors.torch import load_file, save_file

    ckpt = saved("mixtral", tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    key = "model.layers.1.block_sparse_moe.experts.2.w1.weight"
    state[key] = state[key][:-1].clone()
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(QuantError, match="experts.gate_up_proj cannot be converted as transformers converts"):
        open_lazily(ckpt)
