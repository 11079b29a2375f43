"""Damaged cache artefacts are detected on load and rebuilt identically; a damaged `source:` is one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from smoke_ref import cli, reference, workspace

from ptq_bench.cache import ensure, problem
from ptq_bench.data import PPL_FILES, TRAIN_FILES, data_file, resolve_data_dir, train_documents
from ptq_bench.errors import DataError
from ptq_bench.prepare import Context, get_model, get_tokenizer
from ptq_bench.recipe import load_recipe
from ptq_bench.results import read_rows
from ptq_bench.sweep import data_hashes
from ptq_bench.tokens import cached_array, encode_stream


def test_a_run_waiting_for_another_runs_build_says_so(tmp_path, capsys):
    """Two runs sharing a cache: the second waited, without a word, for the first to build an artefact
    (a tokenizer, a model's whole training): it looked hung."""
    import subprocess
    import sys

    path = tmp_path / "a.npy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock\n"
                               "with FileLock(sys.argv[1]): print('held', flush=True); time.sleep(1.5)",
                               str(path) + ".lock"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    ensure(path, lambda tmp: np.save(tmp, np.arange(3)), "token array")
    holder.wait()
    assert capsys.readouterr().out == f"[ptq-bench] cache: token array {path} is being built or checked by another run; waiting for it\n"
    assert problem(path) is None
    ensure(path, lambda tmp: None, "token array")  # free and built: no word
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError])
@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_build_stopped_midway_leaves_no_half_built_artefact(tmp_path, stop, kind):
    """A Ctrl-C or SIGTERM while a model or tokenizer was saved left its `.tmp-` folder in the cache; only a
    later build of the same artefact removed it (a model's: its size, kept for good once the recipe changed)."""
    def build(tmp):
        if kind == "folder":
            tmp.mkdir()
            (tmp / "weights.bin").write_bytes(b"part")
        else:
            tmp.write_bytes(b"part")
        raise stop

    with pytest.raises(stop):
        ensure(tmp_path / ("m" if kind == "folder" else "a.npy"), build, "model")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


@pytest.fixture(scope="session")
def ref(tmp_path_factory):
    return reference(tmp_path_factory.getbasetemp())


def _context(recipe: Path) -> Context:
    r = load_recipe(recipe)
    data_dir = resolve_data_dir(r.data_dir)
    return Context(r, data_dir, Path(r.cache_dir), "cpu", data_hashes(data_dir, r))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    """Same size, other bytes: invert 64 bytes in the middle (the tensor data, past the header)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))


def _alter_tokenizer(path: Path) -> None:
    """Valid JSON, one merge fewer: loads fine and tokenizes differently."""
    tok = json.loads(path.read_text(encoding="utf-8"))
    tok["model"]["merges"] = tok["model"]["merges"][:-1]
    path.write_text(json.dumps(tok), encoding="utf-8")


def test_ensure_writes_the_checksum_last_and_detects_damage(tmp_path):
    calls = []
    path = ensure(tmp_path / "a.npy", lambda tmp: (calls.append(tmp), np.save(tmp, np.arange(5))), "array")
    assert calls[0].name.endswith(".npy") and problem(path) is None
    path.with_name("a.npy.sha256").unlink()  # killed after the rename, before the checksum
    assert "no a.npy.sha256" in problem(path)
    ensure(path, lambda tmp: np.save(tmp, np.arange(5)), "array")
    _garble(path)
    assert problem(path) == "does not match a.npy.sha256"
    ensure(path, lambda tmp: np.save(tmp, np.arange(5)), "array")
    path.with_name("a.npy.sha256").write_bytes(b"\xff\xfe")  # not UTF-8: a rebuild, not a traceback
    assert problem(path) == "does not match a.npy.sha256"


@pytest.mark.parametrize("damage", [_truncate, _garble], ids=["truncated", "garbled_same_size"])
def test_damaged_model_is_rebuilt_identically(ref, tmp_path, capsys, damage):
    import torch

    from ptq_bench.eval.evaluator import Evaluator
    from ptq_bench.models.build import load_model

    recipe, _, cache = workspace(ref, tmp_path)
    (folder,) = cache.glob("models/fp16-*")
    damage(folder / "model" / "model.safetensors")
    ctx = _context(recipe)
    tok, tok_key = get_tokenizer(ctx)
    ev = Evaluator(dataclasses.replace(ctx.recipe.eval, tasks=[]), ctx.data_dir, cache, tok, tok_key)
    stream = lambda: cached_array(cache / "tokens" / tok_key / "train.npy",  # noqa: E731
                                  lambda: encode_stream(tok, train_documents(ctx.data_dir)),
                                  [data_file(ctx.data_dir, f) for f in TRAIN_FILES])
    model, kind, info = get_model(ctx, "fp16", tok_key, tok, stream, ev.perplexity)
    assert f"cache: model 'fp16' {folder} model/model.safetensors does not match its checksum; rebuilding it" \
        in capsys.readouterr().out
    reference_model, _ = load_model(ref.cache / "models" / folder.name / "model")
    want = reference_model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    ref_info = json.loads((ref.cache / "models" / folder.name / "train_info.json").read_text())
    assert info["untrained_metrics"] == ref_info["untrained_metrics"] and problem(folder) is None
    assert info["trained_on"] == {"device": "cpu", "autocast": None}  # a CUDA-trained one says bfloat16


def test_truncated_token_array_is_rebuilt_identically(ref, tmp_path, capsys):
    from ptq_bench.eval.evaluator import Evaluator

    recipe, _, cache = workspace(ref, tmp_path)
    (path,) = cache.glob("tokens/*/ppl_c4-*.npy")
    _truncate(path)
    ctx = _context(recipe)
    tok, tok_key = get_tokenizer(ctx)
    spec = dataclasses.replace(ctx.recipe.eval, tasks=[],
                               perplexity=dataclasses.replace(ctx.recipe.eval.perplexity, sets=["c4"]))
    ev = Evaluator(spec, ctx.data_dir, cache, tok, tok_key)
    assert f"cache: token array {path} does not match {path.name}.sha256; rebuilding it" in capsys.readouterr().out
    assert np.array_equal(ev.ppl_ids["c4"], np.load(ref.cache / path.relative_to(cache)))


def test_run_over_damaged_tokenizer_and_model_gives_identical_metrics(ref, tmp_path):
    recipe, out, cache = workspace(ref, tmp_path, models={"fp16": {"kind": "fp16"}}, quantize=[])
    (tok_json,) = cache.glob("tokenizers/*/tokenizer.json")
    _alter_tokenizer(tok_json)
    (weights,) = cache.glob("models/fp16-*/model/model.safetensors")
    _garble(weights)
    proc = cli("run", str(recipe))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cache: tokenizer" in proc.stdout and "tokenizer.json does not match its checksum; rebuilding" in proc.stdout
    assert "cache: model 'fp16'" in proc.stdout
    assert tok_json.read_bytes() == (ref.cache / tok_json.relative_to(cache)).read_bytes()
    (row,) = read_rows(out, strict=True)
    assert row["metrics"] == ref.metrics()[("fp16", "none")]


def test_damaged_source_checkpoint_is_one_line(ref, tmp_path):
    import shutil

    (hf,) = ref.cache.glob("models/fp16-*/hf")
    src = shutil.copytree(hf, tmp_path / "src")
    eval_ppl = {"perplexity": {"sets": ["wikitext2"], "seq_len": 64, "max_windows": 2}, "tasks": []}
    recipe, out, _ = workspace(ref, tmp_path, models={"ext": {"source": str(src)}}, quantize=[], eval=eval_ppl)
    first = cli("run", str(recipe))
    assert first.returncode == 0, first.stderr[-2000:]
    _garble(src / "model.safetensors")  # still loads: only the recorded digests can tell
    changed = cli("run", str(recipe))
    assert changed.returncode == 2
    line = changed.stderr.strip()
    assert "\n" not in line and f"models.ext.source: {src / 'model.safetensors'} changed" in line
    _truncate(src / "model.safetensors")
    shutil.rmtree(out)
    broken = cli("run", str(recipe))
    assert broken.returncode == 2 and "\n" not in broken.stderr.strip(), broken.stderr[-2000:]  # no traceback
    assert f"models.ext.source: {src / 'model.safetensors'}: cut short" in broken.stderr  # found by validate
    assert not out.exists()  # before anything is written


def test_scratch_folder_removes_what_a_dead_run_of_this_host_left(tmp_path):
    import os
    import socket
    import subprocess

    from ptq_bench.cache import scratch_folder

    host = socket.gethostname().replace("-", "_")
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is no longer alive (pids are not reused this fast)
    left = tmp_path / f"float-{host}-{dead.pid}-abc"
    mine = tmp_path / f"float-{host}-{os.getpid()}-def"
    other = tmp_path / f"float-otherhost-{dead.pid}-ghi"
    for d in (left, mine, other):
        (d / "blocks").mkdir(parents=True)
    new = scratch_folder(tmp_path, "float-")
    assert new.is_dir() and new.name.startswith(f"float-{host}-{os.getpid()}-")
    assert not left.exists() and mine.exists() and other.exists()


def test_an_edited_perplexity_file_is_tokenized_again(ref, tmp_path):
    """Token arrays are named by the digest of the data they come from: the manifest names the data file's
    sha256, so the numbers must come from that file, not from a cached array of its earlier text."""
    from ptq_bench.eval.evaluator import Evaluator

    recipe, _, cache = workspace(ref, tmp_path)
    ctx = _context(recipe)
    tok, tok_key = get_tokenizer(ctx)
    data = tmp_path / "data"
    (data / "wikitext2").mkdir(parents=True)
    lines = data_file(ctx.data_dir, PPL_FILES["wikitext2"]).read_text().splitlines(keepends=True)
    spec = dataclasses.replace(ctx.recipe.eval, tasks=[],
                               perplexity=dataclasses.replace(ctx.recipe.eval.perplexity, sets=["wikitext2"]))

    def ids(kept: list[str]) -> np.ndarray:
        (data / PPL_FILES["wikitext2"]).write_text("".join(kept))
        return Evaluator(spec, data, cache, tok, tok_key).ppl_ids["wikitext2"]

    whole, half = ids(lines), ids(lines[len(lines) // 2:])
    fresh = Evaluator(spec, data, tmp_path / "fresh-cache", tok, tok_key).ppl_ids["wikitext2"]
    assert len(half) < len(whole) and np.array_equal(half, fresh)

    (data / PPL_FILES["wikitext2"]).write_text('{"text": "a few words"}\n')
    with pytest.raises(DataError, match=r"wikitext2/test.jsonl holds \d+ tokens, not one window of seq_len 64"):
        Evaluator(spec, data, cache, tok, tok_key)  # a traceback from the window cutter before
    (data / PPL_FILES["wikitext2"]).write_text("".join(lines))
    many = dataclasses.replace(spec, perplexity=dataclasses.replace(spec.perplexity, max_windows=10**6))
    with pytest.raises(DataError, match=r"max_windows: 1000000 is more than the \d+ windows of 64 tokens in wikitext2"):
        Evaluator(many, data, cache, tok, tok_key)  # its rows were named first1000000win


def test_a_tokenizer_without_eos_is_one_line():
    """A `source:` tokenizer without an EOS token: a TypeError traceback at the first calibrated cell before."""
    from types import SimpleNamespace

    with pytest.raises(DataError, match="has no EOS token"):
        encode_stream(SimpleNamespace(eos_token_id=None), ["a", "b"])


def test_a_file_added_to_a_folder_artefact_is_damage(tmp_path):
    """A file the checksum list does not name (a stray model.safetensors beside pytorch_model.bin, which
    transformers would load instead) makes the folder damaged: it is rebuilt, not used as it is."""
    def build(tmp):
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")

    path = ensure(tmp_path / "model", build, "model")
    (path / "model.safetensors").write_bytes(b"other weights")
    assert problem(path) == "model.safetensors is not in its checksum list"
    ensure(path, build, "model")
    assert sorted(p.name for p in path.iterdir()) == ["checksums.json", "config.json"]
