"""`source:` models end to end: tiny checkpoints of other families through `ptq-bench run`.

A recipe whose models all come from `source:` trains no tokenizer; the fast backend runs on a
sliding-window family; each PTQ row differs from its baseline; the row's kind and native bits come
from what the checkpoint is; a BitNet checkpoint is refused as a PTQ target at `validate`; the model
key follows the checkpoint's content.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_families import save_tiny, tiny_config

from ptq_bench.cli import main
from ptq_bench.results import load_rows


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, data_dir) -> Path:
    from ptq_bench.data import train_documents
    from ptq_bench.tokenizer import save_tokenizer, train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(train_documents(data_dir), 384, 300_000), out)
    return out


def checkpoint(tmp_path: Path, model_type: str, tokenizer_dir: Path, seed: int = 0) -> Path:
    import shutil

    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    folder = save_tiny(model_type, tmp_path / f"{model_type}-{seed}", vocab_size=vocab, seed=seed)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def recipe(tmp_path: Path, models: dict, quantize: list) -> Path:
    r = {"name": "src", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "models": models,
         "calibration": {"n_samples": 4, "seq_len": 32}, "quantize": quantize,
         "eval": {"perplexity": {"sets": ["wikitext2"], "seq_len": 32, "max_windows": 4},
                  "tasks": ["hellaswag"], "limit": 4, "batch_size": 8}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


# block linears of the 2-block tiny checkpoints: falcon:rw has ALiBi, a bias and 4 linears per block; the
# mixtures of experts 4 experts of 2 linears each (Qwen2-MoE: and a shared expert of 3; GLM-4-MoE: the
# same, its first block dense; Granite MoE Shared: 2 shared linears under shared_mlp, the experts under
# block_sparse_moe; Cohere 2 MoE: a dense parallel block 0, then experts; DeepSeek-V3: latent attention's 5
# linears, a dense block 0, then experts and a shared one; Llama 4: a dense block 0, then the same under
# feed_forward; hybrids, block 0 of the other mixer: Qwen3-Next's Gated DeltaNet with 2 quantized linears (its
# b/a projection stays float), then attention, each with Qwen2-MoE's MLP; LFM2's short convolution, 2 linears;
# Granite 4.0-H's Mamba-2, 2 linears, then attention, each with Granite MoE Shared's MLP; Nemotron-H: a Mamba-2
# block of 2, an attention block of 4, a relu^2 MLP block of 2, a MoE block of 4 ungated experts and a shared MLP;
# Falcon-H1: Mamba-2's 2 and attention's 4 side by side, and a 3-linear MLP, in each block; Jamba: Mamba-1's 2
# (x_proj, dt_proj stay float) and a dense MLP, attention and experts, Mamba-1 and a dense MLP, Mamba-1 and experts;
# Kimi-Linear: Kimi Delta Attention's 6 (its forget gate and beta stay float) and a dense MLP, latent attention's 5
# with experts and a shared one, KDA with experts)
LINEARS = {"mistral": 14, "gpt2": 8, "falcon:rw": 8, "mixtral": 24, "qwen2_moe": 30, "glm4_moe": 22,
           "granitemoeshared": 28, "cohere2_moe": 19, "deepseek_v3": 24, "llama4_text": 22, "qwen3_next": 28,
           "lfm2": 12, "granitemoehybrid": 26, "nemotron_h": 18, "falcon_h1": 18, "jamba": 32,
           "kimi_linear": 42}


@pytest.mark.parametrize("model_type", list(LINEARS))
def test_source_models_run_end_to_end(tmp_path, tokenizer_dir, model_type):
    src = checkpoint(tmp_path, model_type, tokenizer_dir)
    path = recipe(tmp_path, {"m": {"source": str(src)}},
                  [{"method": "absmax", "w_bits": 2}, {"method": "gptq", "w_bits": 3, "group_size": 32}])
    assert main(["run", str(path)]) == 0
    rows = {r.label: r for r in load_rows(tmp_path / "out", strict=True)}
    assert set(rows) == {"none", "absmax W2A16", "gptq W3A16"}
    assert not (tmp_path / "cache" / "tokenizers").exists()  # every model from source: no BPE trained
    base = rows["none"]
    assert (base.model_kind, base.w_bits, base.a_bits) == ("fp16", 16, 16)
    assert base.protocol["path"].startswith("fast:")
    for label in ("absmax W2A16", "gptq W3A16"):
        assert rows[label].quant["n_linears"] == LINEARS[model_type]
        assert rows[label].metrics != base.metrics  # the PTQ row is not its baseline


def test_bitnet_checkpoint_is_not_a_ptq_target(tmp_path, tokenizer_dir, capsys):
    src = checkpoint(tmp_path, "bitnet", tokenizer_dir)
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["model_type"] == "bitnet"
    path = recipe(tmp_path, {"b": {"source": str(src)}}, [{"method": "absmax", "w_bits": 4, "models": ["b"]}])
    capsys.readouterr()  # the fixture's save progress
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "quantize[0].models" in err and "'b'" in err, err
    assert not (tmp_path / "out").exists()


def _edit_config(folder: Path, **values) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **values}))


@pytest.mark.parametrize("model_type, edit, method, message", [
    ("stablelm", {"use_parallel_residual": True}, "gptq", "'stablelm' with use_parallel_residual=True is not supported"),
    ("opt", {"do_layer_norm_before": False}, "absmax", "'opt' with do_layer_norm_before=False is not supported"),
    ("olmo2", {}, "smoothquant", "'olmo2': no norm feeds a linear"),
])
def test_ptq_the_family_cannot_do_is_refused_at_validate(tmp_path, tokenizer_dir, capsys, model_type, edit, method,
                                                         message):
    """Known from config.json alone, so refused before anything is written (not after the base row);
    the model itself may still be evaluated, and the family's other methods are allowed."""
    src = checkpoint(tmp_path, model_type, tokenizer_dir)
    _edit_config(src, **edit)
    capsys.readouterr()
    path = recipe(tmp_path, {"m": {"source": str(src)}}, [{"method": method, "w_bits": 4}])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"quantize[0]: {method} cannot quantize model 'm'" in err and message in err, err
    assert err.endswith("(list the models it applies to in quantize[0].models)"), err
    assert main(["run", str(path)]) == 2 and not (tmp_path / "out").exists()
    assert main(["validate", str(recipe(tmp_path, {"m": {"source": str(src)}}, []))]) == 0
    if not edit:
        assert main(["validate", str(recipe(tmp_path, {"m": {"source": str(src)}}, [{"method": "gptq"}]))]) == 0
    capsys.readouterr()
    path = recipe(tmp_path, {"m": {"source": str(src)}, "n": {"source": str(src)}},
                  [{"method": method, "w_bits": 4, "models": ["n"]}])
    assert main(["validate", str(path)]) == 2  # named explicitly: refused all the same, without the hint
    err = capsys.readouterr().err.strip()
    assert "cannot quantize model 'n': " in err and message in err and "list the models" not in err, err


def test_model_key_follows_checkpoint_content(tmp_path, tokenizer_dir):
    from ptq_bench.prepare import Context, model_key
    from ptq_bench.recipe import load_recipe

    src = checkpoint(tmp_path, "llama", tokenizer_dir)
    path = recipe(tmp_path, {"m": {"source": str(src)}}, [])

    def key() -> str:
        r = load_recipe(path)
        return model_key(Context(r, Path("."), Path(r.cache_dir), "cpu", {}), "m", "")

    before = key()
    replacement = checkpoint(tmp_path, "llama", tokenizer_dir, seed=1)
    (src / "model.safetensors").write_bytes((replacement / "model.safetensors").read_bytes())
    assert key() != before  # same path, other weights: another model


@pytest.mark.parametrize("edit, method, refused", [
    ({"use_parallel_residual": True}, "gptq", "'stablelm' with use_parallel_residual=True is not supported"),
    ({}, "gptq", None),
])
def test_an_uncached_hub_id_is_refused_when_loaded_before_its_base_row(tmp_path, tokenizer_dir, monkeypatch, capsys,
                                                                        edit, method, refused):
    """`validate` cannot read a hub id that is not in the local cache; the run checks the loaded model's
    config before its first cell. The hub load is stood in for by a local checkpoint (no network here)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ptq_bench.source_load as sources

    src = checkpoint(tmp_path, "stablelm", tokenizer_dir)
    _edit_config(src, **edit)

    def hub_load(info, device="cpu", **_kw):
        assert info.form == "hub" and info.model_type is None  # validate could not read it
        return AutoModelForCausalLM.from_pretrained(src).eval(), AutoTokenizer.from_pretrained(str(src)), "fp16"

    monkeypatch.setattr(sources, "load_source", hub_load)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # the stand-in is the download
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda repo_id, **_kw: None)  # as of .bin-only weights
    path = recipe(tmp_path, {"m": {"source": "org/not-cached"}}, [{"method": method, "w_bits": 4, "group_size": 32}])
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["run", str(path)]) == (2 if refused else 0)
    rows = load_rows(tmp_path / "out", strict=True) if (tmp_path / "out" / "results.jsonl").exists() else []
    if refused:
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("ptq-bench: error: models.m: gptq cannot quantize it: ") and refused in err, err
        assert rows == []  # no base row before the refusal
    else:
        assert [r.label for r in rows] == ["none", "gptq W4A16"]


def _replace_weights(src: Path, other: Path) -> None:
    import os

    weights = src / "model.safetensors"
    weights.write_bytes((other / "model.safetensors").read_bytes())
    st = weights.stat()  # a new mtime even where the clock is coarser than the test
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_replaced_checkpoint_behind_a_home_path_is_refused(tmp_path, tokenizer_dir, monkeypatch, capsys):
    """The run folder's record of a source is taken from the resolved checkpoint (`~`, a hub snapshot, a
    GGUF), not only from a folder path written as such: rows of two checkpoints never share a label."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    src = checkpoint(tmp_path / "home", "llama", tokenizer_dir)
    path = recipe(tmp_path, {"m": {"source": f"~/{src.name}"}}, [{"method": "absmax", "w_bits": 4}])
    assert main(["run", str(path)]) == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["sources"]["m"]
    _replace_weights(src, checkpoint(tmp_path, "llama", tokenizer_dir, seed=1))
    capsys.readouterr()
    assert main(["run", str(path)]) == 2
    assert "model.safetensors changed since this run folder's rows of 'm'" in capsys.readouterr().err
    assert len(load_rows(tmp_path / "out", strict=True)) == 2


def test_a_refused_first_run_does_not_block_the_mended_checkpoint(tmp_path, tokenizer_dir, capsys):
    """A checkpoint that lacks a tensor is refused before its base row (transformers would fill it with
    random values); once mended, the same run folder runs it: it holds no row of the damaged files."""
    import safetensors.torch as st

    src = checkpoint(tmp_path, "llama", tokenizer_dir)
    good = (src / "model.safetensors").read_bytes()
    sd = st.load_file(src / "model.safetensors")
    st.save_file({k: v for k, v in sd.items() if k != "lm_head.weight"}, src / "model.safetensors", metadata={"format": "pt"})
    path = recipe(tmp_path, {"m": {"source": str(src)}}, [{"method": "absmax", "w_bits": 4}])
    assert main(["run", str(path)]) == 2
    assert "lacks 1 of the model's tensors (first: lm_head.weight)" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.jsonl").exists() or not load_rows(tmp_path / "out", strict=True)
    (src / "model.safetensors").write_bytes(good)
    assert main(["run", str(path)]) == 0
    assert [r.label for r in load_rows(tmp_path / "out", strict=True)] == ["none", "absmax W4A16"]


def test_a_refused_run_leaves_the_manifest_as_it_was(tmp_path, tokenizer_dir, capsys):
    """The replaced-checkpoint refusal used to come after the manifest was rewritten with a new invocation."""
    src = checkpoint(tmp_path, "llama", tokenizer_dir)
    path = recipe(tmp_path, {"m": {"source": str(src)}}, [])
    assert main(["run", str(path)]) == 0
    manifest = (tmp_path / "out" / "manifest.json").read_bytes()
    _replace_weights(src, checkpoint(tmp_path, "llama", tokenizer_dir, seed=1))
    assert main(["run", str(path)]) == 2
    assert "changed since this run folder's rows" in capsys.readouterr().err
    assert (tmp_path / "out" / "manifest.json").read_bytes() == manifest


def test_a_multimodal_qwen3_5_checkpoint_runs_its_text_decoder_in_memory_and_offloaded(tmp_path, tokenizer_dir):
    """The hub's Qwen3.5 checkpoints are Qwen3_5ForConditionalGeneration (model_type qwen3_5, the decoder's
    values under text_config, a vision tower beside it). AutoModelForCausalLM builds the text decoder, and
    `validate` reads its context length from text_config; offloaded, the vision tower's tensors are dropped
    as from_pretrained drops them. Both modes write the same rows, 13 linears (a Gated DeltaNet block of 3 and
    an attention block of 4, each with a 3-linear MLP)."""
    import shutil

    import torch
    from transformers import AutoTokenizer, Qwen3_5Config, Qwen3_5ForConditionalGeneration

    from ptq_bench.sources import inspect_source

    text = tiny_config("qwen3_5_text", vocab_size=len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))).to_dict()
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision))
    src = tmp_path / "qwen3_5"
    model.save_pretrained(src)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, src / f.name)
    assert inspect_source(str(src)).context_length == text["max_position_embeddings"] == 256
    rows = {}
    for offload in (False, True):
        (tmp_path / str(offload)).mkdir()
        path = recipe(tmp_path / str(offload), {"m": {"source": str(src)}}, [{"method": "gptq", "w_bits": 3, "group_size": 32}])
        path.write_text(path.read_text() + f"offload: {str(offload).lower()}\n")
        assert main(["run", str(path)]) == 0
        rows[offload] = {r.label: (r.metrics, r.quant.get("n_linears")) for r in load_rows(tmp_path / str(offload) / "out", strict=True)}
    assert rows[True] == rows[False] and rows[False]["gptq W3A16"][1] == 13


def test_a_gemma3n_checkpoint_runs_its_text_blocks_and_without_timm_is_one_line(tmp_path, tokenizer_dir, capsys,
                                                                                 monkeypatch):
    """The hub's Gemma 3n checkpoints are Gemma3nForConditionalGeneration (model_type gemma3n): the text blocks under
    model.language_model, an audio tower, and a vision tower that transformers builds with timm (TimmWrapperModel).
    With the tower buildable (family_checks' float stand-in for timm's) the run quantizes gemma3n_text's 25 block
    linears, in memory and offloaded alike. Without timm (transformers' own check says it is missing) the run is
    refused in one line naming it, exit 2, no row written; it was a traceback. `validate` refuses it too, from
    config.json (it passed, and only `run` stopped)."""
    import shutil

    from family_checks import build_case, case_stand_ins, stand_ins
    from transformers import AutoTokenizer
    from transformers.utils import import_utils

    src = tmp_path / "gemma3n"
    with stand_ins(case_stand_ins("gemma3n")):
        build_case("gemma3n", len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))).save_pretrained(src)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, src / f.name)

    def run(folder: Path, offload: bool) -> int:
        folder.mkdir()
        path = recipe(folder, {"m": {"source": str(src)}}, [{"method": "gptq", "w_bits": 4, "group_size": 16}])
        path.write_text(path.read_text() + f"offload: {str(offload).lower()}\n")
        return main(["run", str(path)])

    import importlib.util

    timm = {"installed": False}  # what validate's check finds (timm is not installed here; the stand-in tower needs none)
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if timm["installed"] else None) if name == "timm" else find(name, *a))
    (tmp_path / "v").mkdir()
    capsys.readouterr()
    assert main(["validate", str(recipe(tmp_path / "v", {"m": {"source": str(src)}}, []))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "vision_config (gemma3n_vision) is built with the timm library, which is not installed" in err
    timm["installed"] = True  # past validate's check, transformers' own still finds it missing when loading
    with monkeypatch.context() as m:
        m.setitem(import_utils.BACKENDS_MAPPING, "timm", (lambda: False, import_utils.TIMM_IMPORT_ERROR))
        for offload in (False, True):
            capsys.readouterr()
            assert run(tmp_path / f"no_timm_{offload}", offload) == 2
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and "cannot load the checkpoint: TimmWrapperModel requires the timm library, which is not installed)" in err, err
            out = tmp_path / f"no_timm_{offload}" / "out"
            assert not (out / "results.jsonl").exists() or not load_rows(out, strict=True)
    rows = {}
    for offload in (False, True):
        with stand_ins(case_stand_ins("gemma3n")):
            assert run(tmp_path / str(offload), offload) == 0
        rows[offload] = {r.label: (r.metrics, r.quant.get("n_linears")) for r in load_rows(tmp_path / str(offload) / "out", strict=True)}
    assert rows[True] == rows[False] and rows[False]["gptq W4A16"][1] == 25


def test_a_config_naming_its_own_code_runs_transformers_class_and_says_so(tmp_path, tokenizer_dir, capsys):
    """config.json's `auto_map` under a model_type transformers knows: the repository's code is never run
    (it would exit here), transformers' class is measured, and validate, the log and curves/ say so."""
    src = checkpoint(tmp_path, "mistral", tokenizer_dir)
    _edit_config(src, auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (src / "modeling_x.py").write_text("raise SystemExit('the repository code ran')\n")
    path = recipe(tmp_path, {"m": {"source": str(src)}}, [])
    capsys.readouterr()
    assert main(["validate", str(path)]) == 0
    said = "auto_map names the repository's own code (modeling_x.XForCausalLM), which is never run"
    assert said in capsys.readouterr().out
    assert main(["run", str(path)]) == 0
    assert said in capsys.readouterr().out  # the log's "loading model 'm' from ..." line
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert said in manifest["invocations"][-1]["models"]["m"]["note"]
