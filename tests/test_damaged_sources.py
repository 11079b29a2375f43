"""Damaged or odd `source:` checkpoints are one line naming the file and what is wrong, before any row: a
config.json size that is not a positive integer (at validate), a safetensors header naming an integer dtype
for a float tensor, a tokenizer with more tokens than the embedding or with neither eos nor bos."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from tiny_families import save_tiny

from ptq_bench.errors import RecipeError
from ptq_bench.source_load import load_source
from ptq_bench.sources import inspect_source


def _edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(("key", "value"), [("num_hidden_layers", 0), ("hidden_size", "64"), ("vocab_size", -1)])
def test_config_sizes_that_are_not_positive_integers_are_refused_at_validate(tmp_path, key, value):
    folder = save_tiny("mistral", tmp_path / "m")
    _edit_config(folder, **{key: value})
    with pytest.raises(RecipeError, match=f"config.json: {key} is {value!r}, not a positive integer"):
        inspect_source(str(folder))


def test_a_float_tensor_declared_integer_in_the_header_is_refused(tmp_path):
    folder = save_tiny("mistral", tmp_path / "m")
    _lie(folder / "model.safetensors", "model.layers.0.self_attn.q_proj.weight", dtype="I32")
    with pytest.raises(RecipeError, match="model.safetensors: tensor model.layers.0.self_attn.q_proj.weight is stored "
                                          "as I32"):
        load_source(inspect_source(str(folder)), tokenizer=False)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, data_dir) -> Path:
    from ptq_bench.data import train_documents
    from ptq_bench.tokenizer import save_tokenizer, train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(train_documents(data_dir), 384, 300_000), out)
    return out


def _with_tokenizer(tmp_path: Path, tokenizer_dir: Path, vocab_size: int) -> Path:
    folder = save_tiny("mistral", tmp_path / "m", vocab_size=vocab_size)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path, tokenizer_dir):
    folder = _with_tokenizer(tmp_path, tokenizer_dir, 300)  # the tokenizer has 384 tokens
    with pytest.raises(RecipeError, match="its tokenizer has 384 tokens, the model's embedding 300 rows"):
        load_source(inspect_source(str(folder)))


def test_a_tokenizer_with_neither_eos_nor_bos_is_refused(tmp_path, tokenizer_dir):
    folder = _with_tokenizer(tmp_path, tokenizer_dir, 384)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    for key in ("eos_token", "bos_token"):
        config.pop(key, None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(RecipeError, match="its tokenizer names neither an eos nor a bos token"):
        load_source(inspect_source(str(folder)))


def test_a_tensor_stored_in_two_shards_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(str(save_tiny("mistral", tmp_path / "m"))).save_pretrained(
        folder, max_shard_size="200KB")
    first, second = sorted(folder.glob("model-*.safetensors"))[:2]
    one, two = load_file(first), load_file(second)
    key = next(iter(one))
    two[key] = one[key] * 0 + 7  # a stale copy: from_pretrained read this one, not the one the index names
    save_file(two, second, metadata={"format": "pt"})
    with pytest.raises(RecipeError, match=f"tensor {key} is stored in both {first.name} and {second.name}"):
        load_source(inspect_source(str(folder)), tokenizer=False)


@pytest.mark.parametrize(("keep", "says"), [(0.5, "cut short: tensor "), (2000, "cut short inside its header")])
def test_a_gguf_cut_short_is_refused_at_validate(tmp_path, tokenizer_dir, keep, says):
    from gguf_writer import gguf_model, write_gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    file = write_gguf(gguf_model("llama", len(tok)), tok, tmp_path / "m.gguf", "llama")
    data = file.read_bytes()
    file.write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(RecipeError, match=f"cannot read GGUF metadata of {file}: {says}"):
        inspect_source(str(file))


def _cut(file: Path, size: int) -> None:
    file.write_bytes(file.read_bytes()[:size])


def _lie(file: Path, tensor: str, **fields) -> None:
    data = file.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header[tensor].update(fields)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


@pytest.mark.parametrize(("damage", "says"), [
    (lambda f: _cut(f, 300_000), "model.safetensors: cut short: tensor "),
    (lambda f: _cut(f, 0), "model.safetensors: cut short inside its header"),
    (lambda f: _lie(f, "model.norm.weight", data_offsets=[0, 10**6]), "tensor model.norm.weight's header says F32"),
])
def test_a_damaged_safetensors_file_is_refused_at_validate(tmp_path, damage, says):
    folder = save_tiny("mistral", tmp_path / "m")
    damage(folder / "model.safetensors")
    with pytest.raises(RecipeError, match=says):
        inspect_source(str(folder))


def test_an_index_naming_a_missing_shard_is_refused_at_validate(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(str(save_tiny("mistral", tmp_path / "m"))).save_pretrained(
        folder, max_shard_size="200KB")
    last = sorted(folder.glob("model-*.safetensors"))[-1]
    last.unlink()
    with pytest.raises(RecipeError, match=f"names 1 shard\\(s\\) not in the folder \\({last.name}\\)"):
        inspect_source(str(folder))


def test_a_tokenizer_file_that_is_not_json_is_named(tmp_path, tokenizer_dir):
    folder = _with_tokenizer(tmp_path, tokenizer_dir, 384)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(RecipeError, match="its tokenizer file .*tokenizer.json is not JSON"):
        load_source(inspect_source(str(folder)))
