"""A run folder takes another wording of its recipe (`meaning.folder_recipe`) and still refuses another recipe.

The recipe hash is taken over the recipe as written: a written-out method default, `8.0` for `8`, quantize
entries split or reordered gave "holds results of another recipe" though every cell was the same.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml
from smoke_ref import ROOT, SMOKE, cli, reference, workspace, write_recipe

from ptq_bench.recipe import load_recipe
from ptq_bench.results import MANIFEST, RESULTS

OLD_LR_STABILITY = ROOT / "tests" / "fixtures" / "lr_stability_6c6f693"  # results/lr_stability until 2026-12-07

ABSMAX = {"method": "absmax", "a_bits": 16}
# the smoke recipe's cells (absmax W8/W4/W2/W1 A16 on every model), worded otherwise
REWORDINGS = {
    "a written-out method default": {"quantize": [{**ABSMAX, "w_bits": [8, 4, 2, 1], "group_size": 128,
                                                   "w_granularity": "channel"}]},
    "8.0 for 8": {"quantize": [{**ABSMAX, "w_bits": [8.0, 4, 2, 1.0]}]},
    "entries split and reordered": {"quantize": [{**ABSMAX, "w_bits": [2, 1]}, {"method": "absmax", "w_bits": [4, 8]}]},
    "every model listed": {"quantize": [{**ABSMAX, "w_bits": [8, 4, 2, 1], "models": ["fp16"]}]},
    "every task listed": {"quantize": [{**ABSMAX, "w_bits": [8, 4, 2, 1],
                                        "tasks": ["piqa", "hellaswag", "winogrande", "arc_easy"]}]},
    "the recipe's seed as calibration seed": {"calibration": {"n_samples": 8, "seq_len": 64, "seeds": [0]}},
    "a model's architecture written out": {"models": {"fp16": {"kind": "fp16", "arch": {"hidden_size": 64}},
                                                      "bitnet_b158": {"kind": "bitnet_b158"},
                                                      "bitnet_b1": {"kind": "bitnet_b1"}}},
    "the kind's peak LR written out": {"models": {"fp16": {"kind": "fp16", "lr": 2.5e-3, "weight_decay": 0.1},
                                                  "bitnet_b158": {"kind": "bitnet_b158"}, "bitnet_b1": {"kind": "bitnet_b1"}}},
}
# a real difference: another cell, model, protocol or training
CHANGES = {
    "a bits setting fewer": {"quantize": [{**ABSMAX, "w_bits": [8, 4, 2]}]},
    "another group size": {"quantize": [{**ABSMAX, "w_bits": [8, 4, 2, 1], "w_granularity": "group", "group_size": 64}]},
    "a task fewer": {"quantize": [{**ABSMAX, "w_bits": [8, 4, 2, 1], "tasks": ["piqa"]}]},
    "another seed": {"seed": 1},
    "another window count": {"eval": {"perplexity": {"sets": ["wikitext2", "c4"], "seq_len": 64, "max_windows": 4},
                                      "tasks": ["hellaswag", "arc_easy", "piqa", "winogrande"], "limit": 8,
                                      "batch_size": 16}},
    "another dtype": {"dtype": "bfloat16"},
    "another architecture": {"models": {"fp16": {"kind": "fp16", "arch": {"hidden_size": 32}},
                                        "bitnet_b158": {"kind": "bitnet_b158"}, "bitnet_b1": {"kind": "bitnet_b1"}}},
    "a peak LR written": {"models": {"fp16": {"kind": "fp16", "lr": 0.5}, "bitnet_b158": {"kind": "bitnet_b158"},
                                     "bitnet_b1": {"kind": "bitnet_b1"}}},
}


def smoke(tmp_path: Path, name: str = "r.yaml", **changes) -> Path:
    raw = {**yaml.safe_load(SMOKE.read_text()), "output_dir": str(tmp_path / "out"), **copy.deepcopy(changes)}
    return write_recipe(tmp_path / name, raw)


@pytest.mark.parametrize("what", REWORDINGS)
def test_a_rewording_keeps_the_meaning(tmp_path, what):
    from ptq_bench.meaning import meaning

    base, other = load_recipe(smoke(tmp_path)), load_recipe(smoke(tmp_path, "o.yaml", **REWORDINGS[what]))
    assert meaning(other) == meaning(base)


@pytest.mark.parametrize("what", CHANGES)
def test_a_real_change_changes_the_meaning(tmp_path, what):
    from ptq_bench.meaning import meaning

    base, other = load_recipe(smoke(tmp_path)), load_recipe(smoke(tmp_path, "o.yaml", **CHANGES[what]))
    assert other.digest() != base.digest() and meaning(other) != meaning(base)


def quickstart(tmp_path: Path, **changes) -> Path:
    raw = {**yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text()), "output_dir": str(tmp_path / "qs"),
           **changes}
    return write_recipe(tmp_path / "qs.yaml", raw)


def test_a_committed_folder_takes_a_rewording_of_its_recipe(tmp_path):
    """results/quickstart (written before this change) keeps its hash and takes another wording of its recipe."""
    from ptq_bench.meaning import folder_recipe

    shutil.copytree(ROOT / "results" / "quickstart", tmp_path / "qs")
    committed = json.loads((tmp_path / "qs" / MANIFEST).read_text())["recipe_hash"]
    raw = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    entries = list(reversed(raw["quantize"])) + [{"method": "gptq", "models": ["fp16"], "w_bits": 4.0, "damp": 0.01}]
    reworded = load_recipe(quickstart(tmp_path, quantize=entries, description="edited"))
    assert reworded.digest() != committed
    as_run, note = folder_recipe(reworded)
    assert as_run.digest() == committed and note == {"reworded_recipe_hash": reworded.digest()}
    assert as_run.description == "edited" and as_run.out_dir == tmp_path / "qs"  # this run's names and folders
    changed = load_recipe(quickstart(tmp_path, quantize=raw["quantize"][:-1]))
    assert folder_recipe(changed) == (changed, {})  # open_run refuses it, as before


def test_a_stored_recipe_that_is_not_the_folders_is_not_compared(tmp_path):
    """A manifest whose recipe does not hash to its recipe_hash (an older ptq-bench's, or edited) decides nothing."""
    from ptq_bench.meaning import folder_recipe, stored_recipe

    shutil.copytree(ROOT / "results" / "quickstart", tmp_path / "qs")
    manifest = json.loads((tmp_path / "qs" / MANIFEST).read_text())
    manifest["recipe"]["seed"] = 1
    (tmp_path / "qs" / MANIFEST).write_text(json.dumps(manifest))
    assert stored_recipe(tmp_path / "qs") is None
    reworded = load_recipe(quickstart(tmp_path, seed=1))
    assert folder_recipe(reworded) == (reworded, {})
    assert stored_recipe(OLD_LR_STABILITY) is None  # its recipe predates fields added since


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference(tmp_path_factory.getbasetemp())


def _run(recipe: Path) -> str:
    proc = cli("run", str(recipe))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_a_run_folder_resumes_under_another_wording(ref, tmp_path):
    recipe, out, _ = workspace(ref, tmp_path, copy_out=True)
    raw, rows, folder_hash = yaml.safe_load(recipe.read_text()), (out / RESULTS).read_bytes(), load_recipe(recipe).digest()
    for i, what in enumerate(["entries split and reordered", "a written-out method default"]):
        reworded = write_recipe(tmp_path / f"reworded{i}.yaml", {**raw, **REWORDINGS[what]})
        assert "7 already done, 0 to run" in _run(reworded)
        manifest = json.loads((out / MANIFEST).read_text())
        assert manifest["recipe_hash"] == folder_hash and (out / RESULTS).read_bytes() == rows
        assert manifest["invocations"][-1]["reworded_recipe_hash"] == load_recipe(reworded).digest()
    assert "7 already done, 0 to run" in _run(recipe)
    assert "reworded_recipe_hash" not in json.loads((out / MANIFEST).read_text())["invocations"][-1]
    before = (out / MANIFEST).read_bytes()
    changed = write_recipe(tmp_path / "changed.yaml", {**raw, **CHANGES["a bits setting fewer"]})
    proc = cli("run", str(changed))
    assert proc.returncode == 2 and "holds results of another recipe" in proc.stderr, proc.stderr[-2000:]
    assert (out / MANIFEST).read_bytes() == before and (out / RESULTS).read_bytes() == rows
    assert cli("report", str(out)).returncode == 0


def test_another_calibration_seed_changes_the_meaning(tmp_path):
    """Seeds leave the digest fields for the cells' calibration seeds: a recipe asking for seed 1 must not
    resume a folder of seed 0 as a rewording (its rows would be seed 0's, named as the run of seed 1)."""
    from ptq_bench.meaning import meaning

    gptq = {"quantize": [{"method": "gptq", "w_bits": 4, "a_bits": 16}]}
    runs = [load_recipe(smoke(tmp_path, f"s{s}.yaml", calibration={"n_samples": 8, "seq_len": 64, "seeds": [s]},
                              **gptq)) for s in (0, 1)]
    assert meaning(runs[0]) != meaning(runs[1])


def _old_lr_stability(tmp_path: Path, **changes) -> Path:
    """A copy of the old results/lr_stability (its rows and manifest) in tmp_path/lr_stability, and its recipe
    (from the manifest's text) writing into that copy."""
    out = tmp_path / "lr_stability"
    shutil.copytree(OLD_LR_STABILITY, out)
    raw = yaml.safe_load(json.loads((out / MANIFEST).read_text())["recipe_text"])
    return write_recipe(tmp_path / "lr_stability.yaml", {**raw, "output_dir": str(out), **changes})


def test_a_folder_of_this_recipe_from_an_older_ptq_bench_is_not_called_another_recipes(tmp_path):
    """results/lr_stability as committed until 2026-12-07 (6c6f693, schema-0 rows) was written by its own recipe, under the hash of a recipe
    schema without the fields added since: `run` called it "results of another recipe" and advised removing
    it. It is refused as an older ptq-bench's folder, untouched; a recipe that does differ is still another's."""
    from ptq_bench.meaning import folder_recipe

    recipe = _old_lr_stability(tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "lr_stability").iterdir() if p.is_file()}
    proc = cli("run", str(recipe))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "holds this recipe's results from an older ptq-bench (git 6c6f693ad812)" in proc.stderr
    assert "another recipe" not in proc.stderr and "ptq-bench report" in proc.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "lr_stability").iterdir() if p.is_file() and p.name in before} == before
    other = load_recipe(_old_lr_stability(tmp_path / "o", seed=1))
    assert folder_recipe(other) == (other, {})  # left to open_run's "another recipe"
