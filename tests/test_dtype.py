"""The recipe's `dtype`: models quantized and evaluated in float32 / bfloat16 / float16 after loading.

`auto` (the default) keeps every id and hash that existed before the key: the committed quickstart run's
recipe hash still matches its recipe, and cell ids are unchanged; a cast changes both, is recorded in each
row's protocol (with the device), and is refused with `offload` (blocks stream in the checkpoint's dtype).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_recipe import assert_refused
from test_source_pipeline import checkpoint, recipe, tokenizer_dir  # noqa: F401  (a fixture)

from ptq_bench.cli import main
from ptq_bench.recipe import expand_cells, load_recipe
from ptq_bench.results import load_rows

ROOT = Path(__file__).resolve().parents[1]


def test_auto_keeps_the_committed_recipe_hash():
    committed = json.loads((ROOT / "results" / "quickstart" / "manifest.json").read_text())["recipe_hash"]
    assert load_recipe(ROOT / "recipes" / "quickstart.yaml").digest() == committed


def test_a_cast_changes_the_recipe_hash_and_the_cell_ids(tmp_path):
    from ptq_bench.sweep import cell_id

    raw = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    digests, ids = {}, {}
    for dtype in (None, "auto", "bfloat16", "float16"):
        path = tmp_path / f"{dtype}.yaml"
        path.write_text(yaml.safe_dump(raw if dtype is None else {**raw, "dtype": dtype}))
        r = load_recipe(path)
        digests[dtype] = r.digest()
        ids[dtype] = [cell_id(c, "k", r.dtype) for c in expand_cells(r)]
    assert digests[None] == digests["auto"] and ids[None] == ids["auto"]
    assert len({digests[None], digests["bfloat16"], digests["float16"]}) == 3
    assert not set(ids["auto"]) & set(ids["bfloat16"]) and not set(ids["bfloat16"]) & set(ids["float16"])


def test_bfloat16_rows_are_cast_and_say_so(tmp_path, tokenizer_dir):  # noqa: F811
    src = checkpoint(tmp_path, "llama", tokenizer_dir)
    rows = {}
    for dtype in ("auto", "bfloat16"):
        (tmp_path / dtype).mkdir()
        path = recipe(tmp_path / dtype, {"m": {"source": str(src)}}, [{"method": "gptq", "w_bits": 4, "group_size": 32}])
        shared = str(tmp_path / "cache")  # one cache: the bf16 run must not read the float32 run's KLD base
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "dtype": dtype, "cache_dir": shared}))
        assert main(["run", str(path)]) == 0
        rows[dtype] = {r.label: r for r in load_rows(tmp_path / dtype / "out", strict=True)}
        manifest = json.loads((tmp_path / dtype / "out" / "manifest.json").read_text())
        resolved = "float32" if dtype == "auto" else dtype  # the manifest's recipe says `auto`; it resolved to
        assert manifest["invocations"][-1]["models"] == {"m": {"device": "cpu", "dtype": resolved}}
    for label in ("none", "gptq W4A16"):
        fp32, bf16 = rows["auto"][label], rows["bfloat16"][label]
        assert (fp32.protocol["dtype"], bf16.protocol["dtype"]) == ("float32", "bfloat16")
        assert fp32.protocol["device"] == bf16.protocol["device"] == "cpu"
        ppl = "ppl_gptq/wikitext2/seq32/first4win"
        assert bf16.metrics[ppl] != fp32.metrics[ppl]  # the cast happened (the base row's ppl is read from the KLD base) ...
        assert bf16.metrics[ppl] == pytest.approx(fp32.metrics[ppl], rel=0.02)  # ... and changes little
    assert main(["run", str(path)]) == 0  # the bf16 folder resumed: its rows are found under their bf16 cell ids
    assert len(load_rows(tmp_path / "bfloat16" / "out", strict=True)) == 2  # (under the float32 ids, stored again)
    bf16_recipe = tmp_path / "bfloat16" / "r.yaml"
    bf16_recipe.write_text(bf16_recipe.read_text().replace("dtype: bfloat16", "dtype: auto"))
    assert main(["run", str(bf16_recipe)]) == 2  # the bf16 folder is not resumed as float32 (another recipe hash)


def test_a_cast_with_offload_is_refused(tmp_path, capsys, tokenizer_dir):  # noqa: F811
    src = checkpoint(tmp_path, "llama", tokenizer_dir)
    path = recipe(tmp_path, {"m": {"source": str(src)}}, [{"method": "absmax", "w_bits": 4}])
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "dtype": "bfloat16", "offload": True}))
    capsys.readouterr()  # the checkpoint's own progress output
    assert_refused(path, capsys, "dtype: bfloat16 casts models in memory, but offload: true streams")


# families whose model classes keep some tensors in float32 under bf16 (`_keep_in_fp32_modules_strict`): the
# routers and routing biases of DeepSeek-V3's kind, Kimi-Linear's and Bailing's KDA dt_bias / A_log; Llama: none
KEEPS_FP32 = ["deepseek_v3", "kimi_linear", "bailing_hybrid", "nemotron_h", "llama"]


@pytest.mark.parametrize("family", KEEPS_FP32)
def test_a_cast_keeps_in_float32_what_from_pretrained_keeps(family, tmp_path):
    """`cast_model(model, bfloat16)` gives the tensors, dtypes and values, of transformers' own
    `from_pretrained(dtype=torch.bfloat16)` of the same float32 checkpoint."""
    import torch
    from tiny_families import tiny_model
    from transformers import AutoModelForCausalLM

    from ptq_bench.models.build import cast_model

    model = tiny_model(family)
    model.save_pretrained(tmp_path / "ckpt")
    want = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16).state_dict()
    got = cast_model(model, torch.bfloat16).state_dict()
    assert list(got) == list(want)
    assert {n: t.dtype for n, t in got.items()} == {n: t.dtype for n, t in want.items()}
    assert all(torch.equal(got[n], want[n]) for n in want)
    assert (family == "llama") == all(t.dtype != torch.float32 for t in want.values() if t.is_floating_point())


def test_a_cast_that_overflows_a_weight_is_refused(tmp_path, capsys, tokenizer_dir):  # noqa: F811
    """A float32 weight beyond float16's range would be cast to inf (NaN rows, then a refusal that blames the
    checkpoint): the cast is refused, one line naming the tensor and the dtype, before any row is written."""
    import shutil

    from tiny_families import save_tiny
    from transformers import AutoTokenizer

    src = save_tiny("llama", tmp_path / "big", vocab_size=len(AutoTokenizer.from_pretrained(str(tokenizer_dir))))
    from safetensors.torch import load_file, save_file
    state = load_file(src / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"][0, 0] = 1e5  # finite in float32, inf in float16
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, src / f.name)
    path = recipe(tmp_path, {"m": {"source": str(src)}}, [{"method": "absmax", "w_bits": 4}])
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "dtype": "float16"}))
    capsys.readouterr()
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the loader's progress bar
    assert err.startswith("ptq-bench: error: dtype: float16") and "model.layers.0.mlp.up_proj.weight" in err, err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_the_untrained_note_says_float32_under_rows_of_another_dtype():
    """A trained model's perplexity before training is scored in float32 whatever the recipe's `dtype`
    (`prepare._train_into`, before the cast): under a table whose rows say bfloat16 its note says float32."""
    from ptq_bench.report.tables import untrained_notes

    init = {"ppl_gptq/wikitext2/seq64/first4win": 525.91}
    rows = [{"model": m, "method": "none", "untrained_metrics": init, "protocol": {"device": "cpu", "dtype": d}}
            for m, d in (("a", "bfloat16"), ("b", "float32"))]
    bf16, fp32 = untrained_notes(rows)
    assert "before training (same init seed; scored in float32, not the rows' bfloat16)" in bf16, bf16
    assert "before training (same init seed):" in fp32  # float32 rows: the note committed tables carry
