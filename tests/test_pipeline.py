"""End to end on the smoke recipe: run, resume, kill -9 at each stage, report."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from smoke_ref import ROOT, Ref, cli, reference, workspace

from ptq_bench.results import load_rows, read_rows


@pytest.fixture(scope="session")
def ref(tmp_path_factory) -> Ref:
    return reference(tmp_path_factory.getbasetemp())


@pytest.fixture
def smoke_run(ref) -> tuple[Path, Path]:
    return ref.recipe, ref.out


def test_smoke_pipeline_runs_and_reports(smoke_run):
    recipe, out = smoke_run
    rows = read_rows(out)
    labels = {(r["model"], r["label"]) for r in rows}
    assert {("fp16", "none"), ("bitnet_b158", "none"), ("bitnet_b1", "none")} <= labels
    assert {("fp16", f"absmax W{b}A16") for b in (8, 4, 2, 1)} <= labels
    for r in rows:
        assert any(k.startswith("ppl_gptq/wikitext2/") for k in r["metrics"])
        assert any(k.startswith("ppl_gptq/c4/") for k in r["metrics"])
        assert sum(k.startswith("lm_eval/") for k in r["metrics"]) >= 4
    for name in ("table.md", "table.csv", "ppl_vs_bits.png", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("recipe_hash", "seed", "data_sha256", "invocations"):
        assert key in manifest
    assert manifest["invocations"][-1]["versions"]["torch"]
    assert (out / "curves" / "bitnet_b158.json").is_file()
    assert {r["recipe_hash"] for r in rows} == {manifest["recipe_hash"]}
    assert {r["eval_version"] for r in rows} == {manifest["eval"]["eval_version"]}
    assert {r["method_version"] for r in rows if r["method"] == "absmax"} == {2}
    (prov,) = manifest["eval"]["by_tokenizer"].values()
    assert set(prov["tasks"]["task_versions"]) == {"hellaswag", "arc_easy", "piqa", "winogrande"}


def test_rerun_skips_finished_cells(smoke_run):
    recipe, out = smoke_run
    before = len(read_rows(out))
    proc = cli("run", str(recipe))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 to run" in proc.stdout
    assert len(read_rows(out)) == before


def _tmp_model_folder(cache: Path) -> bool:
    return any(p.is_dir() for p in (cache / "models").glob(".tmp-*"))


# (stage, when to kill: predicate over (log text, results folder, cache folder), extra delay in s)
KILL_POINTS: list[tuple[str, Callable[[str, Path, Path], bool], float]] = [
    ("tokenizer training", lambda log, out, cache: "BPE tokenizer" in log, 1.0),
    ("model training", lambda log, out, cache: "training 'bitnet_b1'" in log, 1.0),
    ("model saving", lambda log, out, cache: _tmp_model_folder(cache), 0.0),
    ("between cells", lambda log, out, cache: len(load_rows(out)) >= 2, 0.0),
    ("during a cell", lambda log, out, cache: len(load_rows(out)) >= 4, 0.3),
]


def _default_sigint() -> None:
    """The run's SIGINT as a terminal gives it: a suite started in the background (`make test &` from a script)
    ignores SIGINT, and Python keeps an ignored SIGINT ignored (no KeyboardInterrupt: the run went on to its end)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_when(recipe: Path, when: Callable[[str], bool], sig: signal.Signals, log: Path,
               delay: float = 0.0) -> tuple[int, str]:
    """Start a run, send `sig` `delay` s after `when(its output so far)` holds (the run must not have
    finished by then); (exit status, last output line)."""
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "ptq_bench.cli", "run", str(recipe)], cwd=ROOT,
                                stdout=fh, stderr=subprocess.STDOUT, preexec_fn=_default_sigint)
    deadline = time.time() + 600
    while not when(log.read_text(errors="replace")):
        assert proc.poll() is None and time.time() < deadline, f"{log.name}: {log.read_text()[-1500:]}"
        time.sleep(0.005)
    time.sleep(delay)
    assert proc.poll() is None, f"{log.name}: the run ended before the signal: {log.read_text()[-1500:]}"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    lines = log.read_text(errors="replace").strip().splitlines()  # none: killed before its first line (a kill
    return proc.returncode, lines[-1] if lines else ""  # point met at once, as a previous kill's temp folder is)


@pytest.mark.slow
def test_kill_9_at_each_stage_resumes_with_identical_rows(ref, tmp_path):
    """A fresh cache and folder; kill -9 during tokenizer training, model training, model saving,
    between cells and during a cell; then a run to the end gives the reference rows, once each."""
    recipe, out, cache = workspace(ref, tmp_path)
    shutil.rmtree(cache)
    for i, (stage, when, delay) in enumerate(KILL_POINTS):
        log = tmp_path / f"kill{i}-{stage.replace(' ', '-')}.log"  # named by stage in the failure messages
        _stop_when(recipe, lambda text, w=when: w(text, out, cache), signal.SIGKILL, log, delay)
        if stage == "model training":  # the corpus is tokenized (a long wait) before, not inside, training's line
            text = log.read_text(errors="replace")
            assert text.index("tokenizing the training corpus") < text.index("training '"), text[-1500:]
    final = cli("run", str(recipe))
    assert final.returncode == 0, final.stderr[-2000:]
    rows = load_rows(out, strict=True)
    assert len(rows) == len(ref.rows) and len({r.cell_id for r in rows}) == len(rows)
    assert {(r.model, r.label): r.metrics for r in rows} == ref.metrics()


def test_report_command_and_missing_folder(smoke_run, tmp_path):
    _, out = smoke_run
    (out / "table.md").unlink()
    proc = cli("report", str(out))
    assert proc.returncode == 0 and (out / "table.md").is_file()
    bad = cli("report", str(tmp_path / "nothing"))
    assert bad.returncode == 2 and "no results found" in bad.stderr


def test_other_recipe_in_same_folder_is_refused(ref, tmp_path):
    other, out, _ = workspace(ref, tmp_path, copy_out=True, seed=1)
    before = (out / "results.jsonl").read_bytes()
    proc = cli("run", str(other))
    assert proc.returncode == 2 and "another recipe" in proc.stderr
    assert (out / "results.jsonl").read_bytes() == before


@pytest.mark.slow
def test_sigterm_and_ctrl_c_stop_a_run_with_its_record_and_a_resume_line(ref, tmp_path):
    """SIGTERM (timeout, Slurm, docker) ended a run with no message and an open invocation; Ctrl-C's line
    did not say what was stored and a progress bar could be redrawn after it."""
    recipe, out, _cache = workspace(ref, tmp_path)
    total, before = len(ref.rows), 0
    for i, (sig, status) in enumerate(((signal.SIGTERM, 143), (signal.SIGINT, 130))):
        code, last = _stop_when(recipe, lambda _, n=before + 1: len(load_rows(out)) >= n, sig, tmp_path / f"stop{i}.log")
        stored = len(load_rows(out))
        assert code == status and last == (f"ptq-bench: interrupted: {stored} of {total} cells are stored in {out} "
                                           f"({stored - before} by this run); run the same command again to resume"), last
        inv = json.loads((out / "manifest.json").read_text())["invocations"][-1]
        assert inv["interrupted"] is True and inv["cells_run"] == stored - before and "wall_s" in inv
        before = stored
    final = cli("run", str(recipe))
    assert final.returncode == 0, final.stderr[-2000:]
    assert {(r.model, r.label): r.metrics for r in load_rows(out, strict=True)} == ref.metrics()
    assert "(2 interrupted)" in (out / "table.md").read_text(encoding="utf-8")


def _sigterm_after_each_write(monkeypatch) -> None:
    """SIGTERM (what `timeout` or Slurm sends) arrives right after each row is written."""
    import ptq_bench.sweep as sweep

    write = sweep.append_row

    def write_then_signal(run_dir, row):
        write(run_dir, row)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(sweep, "append_row", write_then_signal)


def _assert_stopped_after_one_row(ref: Ref, out: Path, code: int, err: str) -> None:
    assert code == 143 and len(load_rows(out)) == 1
    assert err.strip().splitlines()[-1] == (
        f"ptq-bench: interrupted: 1 of {len(ref.rows)} cells are stored in {out} (1 by this run); "
        "run the same command again to resume")
    last = json.loads((out / "manifest.json").read_text())["invocations"][-1]
    assert last["interrupted"] is True and last["cells_run"] == 1


def test_a_signal_just_after_a_row_is_written_counts_that_row(ref, tmp_path, monkeypatch, capsys):
    """SIGTERM between a row's write and its count (met once under load) made the last line and the
    manifest's cells_run say one cell fewer than the run had stored."""
    from ptq_bench.cli import main

    recipe, out, _cache = workspace(ref, tmp_path)
    _sigterm_after_each_write(monkeypatch)
    _assert_stopped_after_one_row(ref, out, main(["run", str(recipe)]), capsys.readouterr().err)


def test_a_second_signal_while_the_stop_is_recorded_is_dropped(ref, tmp_path, monkeypatch, capsys):
    """Ctrl-C pressed twice: the second, arriving as the first's stop was written to the manifest, left
    the invocation open and the last line bare."""
    import ptq_bench.sweep as sweep
    from ptq_bench.cli import main

    recipe, out, _cache = workspace(ref, tmp_path)
    _sigterm_after_each_write(monkeypatch)
    close = sweep.close_run

    def close_after_a_second_signal(*args, **kw):
        if kw.get("interrupted"):
            signal.raise_signal(signal.SIGINT)
        return close(*args, **kw)

    monkeypatch.setattr(sweep, "close_run", close_after_a_second_signal)
    _assert_stopped_after_one_row(ref, out, main(["run", str(recipe)]), capsys.readouterr().err)


def test_a_damaged_or_missing_curve_file_is_written_again_from_the_model_cache(ref, tmp_path):
    """A hand-truncated curves/<model>.json was skipped by every later table (with a note) although the
    model cache holds the curve; a finished folder's next run now writes it again."""
    recipe, out, _cache = workspace(ref, tmp_path, copy_out=True)
    names = sorted(p.name for p in (ref.out / "curves").glob("*.json"))
    assert len(names) >= 2
    torn, gone = out / "curves" / names[0], out / "curves" / names[1]
    torn.write_text(torn.read_text()[:40])
    gone.unlink()
    proc = cli("run", str(recipe))
    assert proc.returncode == 0 and "0 to run" in proc.stdout, proc.stderr[-2000:]
    assert f"{torn} was unreadable; written again" in proc.stdout and f"{gone} was missing; written again" in proc.stdout
    for name in names:
        assert json.loads((out / "curves" / name).read_text()) == json.loads((ref.out / "curves" / name).read_text())
    assert "unreadable" not in (out / "table.md").read_text(encoding="utf-8")


def test_a_curve_is_not_written_again_from_a_damaged_model_cache(ref, tmp_path):
    """mend_curves reads a model's train_info.json only from a cache folder that passes its checksums: an
    edited one (its losses halved here) would put a curve no run measured into curves/<model>.json."""
    recipe, out, cache = workspace(ref, tmp_path, copy_out=True)
    for info in (cache / "models").glob("*/train_info.json"):
        data = json.loads(info.read_text())
        data["curve"] = [{**point, "loss": point["loss"] / 2} for point in data["curve"]]
        info.write_text(json.dumps(data))
    name = sorted(p.name for p in (ref.out / "curves").glob("*.json"))[0]
    (out / "curves" / name).unlink()
    proc = cli("run", str(recipe))
    assert proc.returncode == 0 and "0 to run" in proc.stdout, proc.stderr[-2000:]
    assert not (out / "curves" / name).exists() and "written again" not in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
def test_ctrl_c_during_tokenizer_training_closes_the_invocation(ref, tmp_path):
    """Before the cells' loop (the tokenizer trains first) a Ctrl-C left the invocation with no end."""
    recipe, out, cache = workspace(ref, tmp_path)
    shutil.rmtree(cache)
    code, last = _stop_when(recipe, lambda log: "BPE tokenizer" in log, signal.SIGINT, tmp_path / "stop.log")
    assert code == 130 and last == (f"ptq-bench: interrupted: 0 of {len(ref.rows)} cells are stored in {out} "
                                    "(0 by this run); run the same command again to resume"), last
    inv = json.loads((out / "manifest.json").read_text())["invocations"][-1]
    assert inv["interrupted"] is True and inv["cells_run"] == 0


@pytest.mark.parametrize("step", ["mend_curves", "close_run"])
def test_a_signal_after_the_last_cell_closes_the_invocation(ref, tmp_path, monkeypatch, capsys, step):
    """SIGTERM after the cells' loop (curves mended, the invocation being closed) left the invocation
    without its end or cells_run, or finished but not interrupted, and printed a bare `ptq-bench: interrupted`."""
    import ptq_bench.sweep as sweep
    from ptq_bench.cli import main

    recipe, out, _cache = workspace(ref, tmp_path, copy_out=True)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:-1]))  # one cell left to run
    real = getattr(sweep, step)

    def then_signal(*args, **kw):
        real(*args, **kw)
        if not kw.get("interrupted"):
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(sweep, step, then_signal)
    assert main(["run", str(recipe)]) == 143
    total = len(ref.rows)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"ptq-bench: interrupted: {total} of {total} cells are stored in {out} (1 by this run); "
        "run the same command again to resume")
    inv = json.loads((out / "manifest.json").read_text())["invocations"][-1]
    assert inv["interrupted"] is True and inv["cells_run"] == 1 and "finished" in inv


def test_the_cache_folders_kept_apart_from_output_dirs_are_every_folder_a_run_fills(ref):
    """`paths.CACHE_FOLDERS` (an output_dir inside one is refused) names each folder the smoke run's cache holds."""
    from ptq_bench.paths import CACHE_FOLDERS

    assert {p.name for p in ref.cache.iterdir() if p.is_dir()} <= set(CACHE_FOLDERS)


def test_a_signal_while_the_tables_are_written_says_the_run_is_stored(ref, tmp_path, monkeypatch, capsys):
    """A SIGTERM during the tables of a finished run printed a bare `ptq-bench: interrupted`."""
    import ptq_bench.report as report
    from ptq_bench.cli import main

    recipe, out, _cache = workspace(ref, tmp_path, copy_out=True)

    def stopped(run_dir):
        signal.raise_signal(signal.SIGTERM)
        yield run_dir

    monkeypatch.setattr(report, "render", stopped)
    assert main(["run", str(recipe)]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"ptq-bench: interrupted while writing the tables; every cell is stored in {out}: "
        f"`ptq-bench report {out}` writes them")
    assert json.loads((out / "manifest.json").read_text())["invocations"][-1]["cells_run"] == 0


def test_a_base_row_carries_its_kinds_native_bits_and_its_models_divergence(ref):
    """make_row: an unquantized row's bits are its kind's native bits (BitNet b1.58 is W1.58A8, not 16/16: the
    tables' bits columns and the plots' x axes read them), a diverged model's rows say so (the tables mark them),
    and only the base row carries the model's untrained metrics."""
    from types import SimpleNamespace

    import torch

    import ptq_bench.sweep as sweep
    from ptq_bench.recipe import expand_cells, load_recipe

    recipe = load_recipe(ref.recipe)
    sw = SimpleNamespace(ctx=SimpleNamespace(recipe=recipe, device="cpu"), keys=dict.fromkeys(recipe.models, "k"))
    stored = {(r["model"], r["label"]): r for r in ref.rows}
    made = {}
    for cell in expand_cells(recipe):
        for diverged in (False, True):
            info = {"diverged": diverged, "untrained_metrics": {"ppl_gptq/wikitext2/seq64/first8win": 500.0}}
            base = SimpleNamespace(kind=recipe.models[cell.model].kind, info=info, model=torch.nn.Linear(2, 2))
            row = sweep.make_row(sw, cell, base, {}, {}, {}, 0.0)
            want = stored[cell.model, cell.label]
            assert (row.w_bits, row.a_bits, row.diverged) == (want["w_bits"], want["a_bits"], diverged), cell
            assert (row.untrained_metrics is not None) == (cell.method == "none"), cell  # the base row's only
            made[cell.model, cell.method] = (row.w_bits, row.a_bits)
    assert made["bitnet_b158", "none"] == (1.58, 8) and made["fp16", "none"] == (16, 16)
