"""`source: org/name` read from a local Hugging Face hub cache laid out as huggingface_hub lays it out
(`models--org--name/{blobs, snapshots/<commit>, refs/main}`), offline: what is refused before anything is
written, and what a run records of the snapshot it used."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants, snapshot_download
from tiny_families import save_tiny

from ptq_bench.errors import RecipeError
from ptq_bench.sources import inspect_source, refuse_offline


def cache_snapshot(cache: Path, repo: str, folder: Path, commit: str) -> Path:
    """Put `folder`'s files into `cache` as snapshot `commit` of `repo` (blobs + symlinks), refs/main -> commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    (root / "refs").mkdir(exist_ok=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        os.symlink(f"../../blobs/{blob}", snap / f.name)
    (root / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, offline."""
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def tiny_repo(tmp_path: Path, seed: int = 0, drop: tuple[str, ...] = (), shard: str | None = None) -> Path:
    folder = tmp_path / f"llama-{seed}"
    if shard:
        from tiny_families import tiny_model

        tiny_model("llama", 512, seed).save_pretrained(folder, max_shard_size=shard)
    else:
        save_tiny("llama", folder, seed=seed)
    (folder / "tokenizer.json").write_text("{}")  # inspection reads only that a tokenizer is there
    for name in drop:
        (folder / name).unlink()
    return folder


def test_a_cached_snapshot_is_a_valid_cache_and_resolves_offline(hub, tmp_path):
    snap = cache_snapshot(hub, "org/tiny", tiny_repo(tmp_path), "a" * 40)
    assert snapshot_download("org/tiny", local_files_only=True, cache_dir=str(hub)) == str(snap)
    info = inspect_source("org/tiny")
    assert (info.form, info.path, info.model_type) == ("hub", str(snap), "llama")


def test_an_uncached_hub_id_is_described_by_inspection(hub, monkeypatch):
    info = inspect_source("org/absent")
    assert (info.form, info.path, info.content_hash) == ("hub", None, None)
    assert "downloaded at run time" in info.note


def hub_recipe(tmp_path: Path, source: str, data_dir: Path, monkeypatch) -> Path:
    import yaml

    r = {"name": "hub", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
         "models": {"m": {"source": source}}, "quantize": [{"method": "absmax", "w_bits": 8, "a_bits": 16}],
         "eval": {"perplexity": {"sets": ["wikitext2"], "seq_len": 32, "max_windows": 2}, "tasks": [], "limit": 2}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    monkeypatch.setenv("PTQ_BENCH_DATA", str(data_dir))
    return tmp_path / "r.yaml"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_uncached_hub_id_offline_is_one_line_and_writes_nothing(hub, tmp_path, data_dir, monkeypatch, capsys,
                                                                    command):
    """Offline, nothing can download it: validate said OK ("downloaded at run time") and run wrote the run
    folder's manifest.json before its load failed."""
    from ptq_bench.cli import main

    path = hub_recipe(tmp_path, "org/absent", data_dir, monkeypatch)
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ptq-bench: error: models.m.source: hub id 'org/absent' is not in the local hub cache ({hub}) and "
                   "HF_HUB_OFFLINE is set; download it first (hf download org/absent) or unset HF_HUB_OFFLINE")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # where it could be downloaded, validate leaves it to the run
    if command == "validate":
        assert main([command, str(path)]) == 0


@pytest.mark.parametrize("sharded", [False, True])
def test_a_snapshot_without_all_its_weights_is_not_taken_for_the_checkpoint(hub, tmp_path, monkeypatch, sharded):
    """What AutoConfig / AutoTokenizer cache (config and tokenizer only), or a sharded download cut short: the
    snapshot was loaded as the checkpoint, so a run failed at the load even with a network, never downloading
    the rest (and offline, validate said OK and run wrote its run folder first)."""
    folder = tiny_repo(tmp_path, shard="30KB" if sharded else None)
    shards = sorted(f.name for f in folder.glob("model-*.safetensors"))
    assert len(shards) > 2 if sharded else shards == []
    snap = cache_snapshot(hub, "org/part", folder, "b" * 40)
    (snap / (shards[1] if sharded else "model.safetensors")).unlink()
    lacks = f"1 of the {len(shards)} shards model.safetensors.index.json names" if sharded else "its weights"
    with pytest.raises(RecipeError, match=rf"hub id 'org/part' is not whole in the local hub cache \(snapshot "
                                          rf"bbbbbbbbbbbb lacks {lacks}.* HF_HUB_OFFLINE is set"):
        refuse_offline(inspect_source("org/part"), "models.m.source")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    info = inspect_source("org/part")
    assert (info.form, info.path) == ("hub", None) and "downloaded at run time" in info.note  # left to the download


def test_a_whole_sharded_snapshot_resolves(hub, tmp_path):
    snap = cache_snapshot(hub, "org/shards", tiny_repo(tmp_path, shard="30KB"), "c" * 40)
    assert inspect_source("org/shards").path == str(snap)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, data_dir) -> Path:
    from ptq_bench.data import train_documents
    from ptq_bench.tokenizer import save_tokenizer, train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(train_documents(data_dir), 384, 300_000), out)
    return out


def test_a_run_records_the_snapshot_and_refuses_another_one_of_the_same_id(hub, tmp_path, tokenizer_dir, data_dir,
                                                                           monkeypatch, capsys):
    """The manifest named the id and the files' digests, never which revision (commit) the rows came from;
    when refs/main moved to another snapshot, the refusal blamed an edited file of the new snapshot."""
    import json

    from transformers import AutoTokenizer

    from ptq_bench.cli import main
    from ptq_bench.results import load_rows

    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    for seed in (0, 1):
        folder = save_tiny("llama", tmp_path / f"m{seed}", vocab_size=vocab, seed=seed)
        for f in tokenizer_dir.iterdir():
            shutil.copy(f, folder / f.name)
    cache_snapshot(hub, "org/tiny", tmp_path / "m0", "a" * 40)
    path = hub_recipe(tmp_path, "org/tiny", data_dir, monkeypatch)
    assert main(["run", str(path)]) == 0
    out = tmp_path / "out"
    assert json.loads((out / "manifest.json").read_text())["source_snapshots"] == {"m": "a" * 40}
    before = {f: (out / f).read_bytes() for f in ("manifest.json", "results.jsonl")}
    cache_snapshot(hub, "org/tiny", tmp_path / "m1", "b" * 40)  # a second snapshot of the id: refs/main moves to it
    capsys.readouterr()
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "ptq-bench: error: models.m.source: hub id 'org/tiny' now reads snapshot bbbbbbbbbbbb from the local hub cache, "
        "but this run folder's rows of 'm' came from snapshot aaaaaaaaaaaa; set a different output_dir")
    assert {f: (out / f).read_bytes() for f in before} == before
    assert [r.label for r in load_rows(out, strict=True)] == ["none", "absmax W8A16"]
    (hub / "models--org--tiny" / "refs" / "main").write_text("a" * 40)  # back to the first snapshot: its rows resume
    assert main(["run", str(path)]) == 0


def test_a_hub_id_downloaded_at_run_time_is_keyed_and_recorded_by_its_snapshot(hub, tmp_path, tokenizer_dir, data_dir,
                                                                                monkeypatch, capsys):
    """Loaded as transformers downloaded it, an uncached hub id was keyed by the id alone: its rows (and cached
    KLD references) stood for any revision, the manifest recorded no files or commit, and the next run, reading
    the now cached snapshot under its content key, computed every cell again beside the old rows. The download
    is a stand-in here (no network): it writes the snapshot into the hub cache as huggingface_hub does."""
    import json

    import huggingface_hub
    from transformers import AutoTokenizer

    from ptq_bench.cli import main
    from ptq_bench.results import load_rows

    folder = save_tiny("llama", tmp_path / "m", vocab_size=len(AutoTokenizer.from_pretrained(str(tokenizer_dir))))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    path = hub_recipe(tmp_path, "org/later", data_dir, monkeypatch)

    def unreachable(repo_id, **_kw):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    capsys.readouterr()
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == ("ptq-bench: error: models.m.source: cannot download hub id 'org/later': "
                                               "[Errno -2] Name or service not known")
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **_kw: str(cache_snapshot(hub, repo_id, folder, "d" * 40)))
    assert main(["run", str(path)]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source_snapshots"] == {"m": "d" * 40} and "model.safetensors" in manifest["sources"]["m"]
    assert main(["run", str(path)]) == 0  # now read from the cache: nothing to compute again
    assert [r.label for r in load_rows(tmp_path / "out", strict=True)] == ["none", "absmax W8A16"]


def test_a_bin_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    """transformers reads .bin weights with torch.load(weights_only=True), which refuses the pickle; its message,
    cut to one line, ended advising `weights_only` set to False."""
    import pickle

    from ptq_bench.source_load import load_source

    folder = tiny_repo(tmp_path, drop=("model.safetensors",))
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": Planted()}))
    with pytest.raises(RecipeError) as e:
        load_source(inspect_source(str(folder)), tokenizer=False)
    assert str(e.value) == (f"source '{folder}': its .bin weights hold pickled objects other than tensors, which are "
                            "never unpickled (weights_only=True); use a safetensors checkpoint")
    assert not marker.exists()
