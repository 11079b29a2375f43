"""A path of the wrong kind given to a command: one line naming what it is and what the command takes."""

from __future__ import annotations

import pytest

from ptq_bench.cli import main


@pytest.mark.parametrize("command", ["validate", "run", "estimate"])
def test_folder_given_as_recipe(tmp_path, capsys, command):
    run_dir = tmp_path / "runs" / "smoke"
    run_dir.mkdir(parents=True)
    (run_dir / "results.jsonl").write_text("")
    assert main([command, str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a recipe file" in err and f"ptq-bench report {run_dir}" in err
    assert "not found" not in err and len(err.strip().splitlines()) == 1
    assert main([command, str(tmp_path)]) == 2  # a plain folder (`recipes/`): no report hint
    err = capsys.readouterr().err
    assert "is a folder, not a recipe file" in err and "report" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.jsonl"]


def test_report_of_a_file_or_a_folder_of_runs(tmp_path, capsys):
    recipe = tmp_path / "smoke.yaml"
    recipe.write_text("name: smoke\n")
    assert main(["report", str(recipe)]) == 2  # a recipe given to report
    err = capsys.readouterr().err
    assert f"{recipe} is a file, not a results folder" in err and "smoke.yaml/results.jsonl" not in err
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "results.jsonl").write_text("")
    assert main(["report", str(runs / "a" / "results.jsonl")]) == 2  # the store file, not its folder
    assert f"its folder is `ptq-bench report {runs / 'a'}`" in capsys.readouterr().err
    assert main(["report", str(runs)]) == 2  # the parent of the run folders
    assert f"results folders inside it: {runs / 'a'}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "results.jsonl", "runs", "smoke.yaml"]


def test_empty_output_dir_is_refused(tmp_path, capsys, monkeypatch):
    """`--output-dir "$OUT"` with OUT unset: not silently the recipe's output_dir (another run's folder)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("name: r\nmodels: {m: {kind: fp16}}\neval: {perplexity: {seq_len: 64}}\n")
    with pytest.raises(SystemExit) as exc:
        main(["run", "r.yaml", "--output-dir", ""])
    assert exc.value.code == 2
    assert "argument --output-dir: empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_a_foreign_folder_holding_a_report_name_is_refused(tmp_path, capsys):
    """`--output-dir docs/`: the user's table.md would be overwritten and paper_table.md removed by the report."""
    from pathlib import Path

    from ptq_bench.paths import check_paths
    from ptq_bench.recipe import load_recipe

    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml")
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("notes.txt", "table.md", "paper_table.md"):
        (mine / name).write_text(f"my {name}\n")
    assert main(["run", recipe, "--output-dir", str(mine), "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert "is not a results folder but holds table.md, paper_table.md" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_text() for p in mine.iterdir()} == {n: f"my {n}\n" for n in
                                                               ("notes.txt", "table.md", "paper_table.md")}
    logs = tmp_path / "logs"  # `... --output-dir runs/x | tee runs/x/run.log`: the shell made run.log first
    logs.mkdir()
    (logs / "run.log").write_text("")
    import dataclasses

    check_paths(dataclasses.replace(load_recipe(recipe), output_dir=str(logs), cache_dir=str(tmp_path / "c")), None)


def test_help_says_what_each_command_does_and_takes():
    """The README's Commands section: estimate projects zero-shot and quantization too, ls lists layouts."""
    from ptq_bench.cli import build_parser

    parser = build_parser()
    top = " ".join(parser.format_help().split())
    assert "training, perplexity, zero-shot and quantization time" in top
    assert "perplexity sets, layouts, model kinds" in top
    subs = parser._subparsers._group_actions[0].choices
    for name in ("run", "validate", "estimate"):
        assert "recipe YAML file" in subs[name].format_help()
    assert "the results folder a run wrote" in " ".join(subs["report"].format_help().split())


def test_a_bad_data_folder_names_where_it_came_from(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodels: {m: {kind: fp16}}\neval: {perplexity: {seq_len: 64}}\n"
                      "calibration: {seq_len: 64}\n")
    monkeypatch.setenv("PTQ_BENCH_DATA", str(recipe))  # a file
    assert main(["validate", str(recipe)]) == 2
    assert f"data folder is a file, not a folder: {recipe} (from $PTQ_BENCH_DATA)" in capsys.readouterr().err
    recipe.write_text(recipe.read_text() + f"data_dir: {tmp_path / 'nope'}\n")
    assert main(["validate", str(recipe)]) == 2
    assert f"data folder not found: {tmp_path / 'nope'} (from the recipe's data_dir)" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tokens", "models", "kld"])
def test_a_cache_folder_that_is_a_file_is_refused_before_writing(tmp_path, capsys, name):
    """`<cache>/tokens` a file (a stray `> tokens`): a NotADirectoryError traceback after the manifest was written."""
    from pathlib import Path

    cache, out, recipe = tmp_path / "cache", tmp_path / "out", tmp_path / "smoke.yaml"
    smoke = (Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml").read_text()
    recipe.write_text(smoke + f"cache_dir: {cache}\n")
    cache.mkdir()
    (cache / name).write_text("x\n")
    assert main(["run", str(recipe), "--output-dir", str(out), "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert f"cache_dir: {name} in " in err and " is not a folder" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in cache.iterdir()) == [name]


def test_a_write_failure_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    """A full disk while `report` writes its tables: a traceback before; the old tables stay whole."""
    import errno
    import os
    import shutil
    from pathlib import Path

    run_dir = tmp_path / "quickstart"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results" / "quickstart", run_dir)
    before = (run_dir / "table.md").read_bytes()
    real = os.replace

    def full(src, dst, *args, **kwargs):
        if Path(dst).name == "table.md":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    assert main(["report", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err == f"ptq-bench: error: No space left on device ({run_dir / 'table.md'})\n"
    assert (run_dir / "table.md").read_bytes() == before


def test_a_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    """`write_atomic` (tables, manifests' sidecars, curves) and the plots' `_save`: the temp file of a failed
    rename (a full disk, a read-only folder) stayed beside the file for good."""
    import errno
    import os

    import matplotlib.pyplot as plt

    from ptq_bench.cache import write_atomic
    from ptq_bench.report.plots import _save

    (tmp_path / "a.md").write_text("old\n")

    def failing(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "a.md", "new\n")
    with pytest.raises(OSError):
        _save(plt.figure(), tmp_path / "a.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md"] and (tmp_path / "a.md").read_text() == "old\n"


def test_a_folder_name_too_long_says_so(tmp_path):
    """A 260-byte folder name (130 x 'é'): "cannot use '…' (OSError)" said neither what nor why."""
    from ptq_bench.errors import RecipeError
    from ptq_bench.paths import check_folder

    with pytest.raises(RecipeError, match=r"output_dir: cannot use .* \(File name too long\)"):
        check_folder(str(tmp_path / ("é" * 130)), "output_dir", None)


def test_a_write_cut_short_names_its_file(tmp_path):
    """`ulimit -f` or a full disk fails a write() through a file object: an OSError with no path, so a run ended in
    "ptq-bench: error: File too large" (no file named)."""
    import errno

    from ptq_bench.cache import naming

    with pytest.raises(OSError) as got, naming(tmp_path / "table.md"):
        raise OSError(errno.EFBIG, "File too large")
    assert got.value.filename == str(tmp_path / "table.md") and got.value.errno == errno.EFBIG


VALID = "name: r\nmodels: {m: {kind: fp16}}\neval: {perplexity: {seq_len: 64}}\ncalibration: {seq_len: 64}\n"


@pytest.mark.parametrize("key", ["output_dir", "cache_dir", "data_dir", "executor.address"])
@pytest.mark.parametrize("value", ['""', '" "'])
def test_an_empty_folder_or_address_in_the_recipe_is_refused(tmp_path, capsys, monkeypatch, key, value):
    """`cache_dir: ""` put the cache (models/, tokenizers/, tokens/, kld/) in the current folder, `output_dir: ""`
    wrote runs/<name>, `data_dir: ""` read $PTQ_BENCH_DATA, `address: ""` was taken for $RAY_ADDRESS: exit 0."""
    monkeypatch.chdir(tmp_path)
    section, _, leaf = key.rpartition(".")
    entry = f"{section}: {{kind: ray, {leaf}: {value}}}" if section else f"{key}: {value}"
    (tmp_path / "r.yaml").write_text(VALID + entry + "\n")
    for command in ("validate", "run"):
        assert main([command, "r.yaml"]) == 2
        err = capsys.readouterr().err
        assert f"error: {key}: empty" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_an_empty_address_flag_is_refused(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(VALID)
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "r.yaml"), "--executor", "ray", "--address", ""])
    assert exc.value.code == 2 and "argument --address: empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_the_recipes_ray_address_with_executor_ray_flag_is_not_refused(tmp_path, capsys):
    """`executor: {address: ...}` (kind left local) run with `--executor ray` was refused as "the local executor
    would ignore it": the recipe's section was checked before the flag replaced its kind."""
    (tmp_path / "r.yaml").write_text(VALID + "executor: {address: '127.0.0.1:1'}\n")
    assert main(["run", str(tmp_path / "r.yaml"), "--executor", "ray", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err  # the address was taken: connecting to it is what failed
    assert "nothing answers at 127.0.0.1:1" in err and "ignore" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]
    assert main(["run", str(tmp_path / "r.yaml")]) == 2  # still refused where the run is local
    assert "executor.address: '127.0.0.1:1' is for kind ray" in capsys.readouterr().err


def test_a_folder_through_dotdot_makes_no_stray_folder(tmp_path, monkeypatch):
    """`--output-dir w/../x` made an empty `w` beside `x` (mkdir makes each parent of the path as written), and
    `cache_dir: c/../d` a `c`; a `..` after a link still goes where the OS takes it (the link's parent)."""
    from ptq_bench.lock import run_lock
    from ptq_bench.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("name: r\noutput_dir: w/../x\ncache_dir: c/../d\nmodels: {m: {kind: fp16}}\neval: {perplexity: {seq_len: 64}}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    with run_lock(recipe.out_dir):
        recipe.cache_path.mkdir(parents=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "r.yaml", "x"]
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "ln").symlink_to(tmp_path / "real" / "sub")
    (tmp_path / "r.yaml").write_text("name: r\noutput_dir: ln/../y\nmodels: {m: {kind: fp16}}\neval: {perplexity: {seq_len: 64}}\n")
    assert load_recipe(tmp_path / "r.yaml").out_dir == (tmp_path / "real" / "y").resolve()
