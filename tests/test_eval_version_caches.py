"""A bumped EVAL_VERSION recomputes every row from artefacts of the new protocol: the perplexity token
arrays and the KLD references it caches are named by it, so a resumed run gives the rows a run from
scratch gives (before, the base row kept the old references' perplexity and every dppl mixed both).
References are also named by the tokens they score, so two versions of a data file keep one each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_source_pipeline import checkpoint, tokenizer_dir  # noqa: F401  (a fixture)

from ptq_bench.cli import main
from ptq_bench.results import load_rows


def _recipe(tmp_path: Path, src: Path, out: str, cache: str) -> Path:
    r = {"name": "ev", "output_dir": str(tmp_path / out), "cache_dir": str(tmp_path / cache),
         "models": {"m": {"source": str(src)}}, "quantize": [{"method": "absmax", "w_bits": 4}],
         "eval": {"perplexity": {"sets": ["wikitext2"], "seq_len": 32, "max_windows": 3}, "batch_size": 2}}
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def _next_protocol(monkeypatch, change: str) -> None:
    """The code as a later EVAL_VERSION: one number-changing fix to tokenization or to the NLL."""
    import ptq_bench.data as data
    import ptq_bench.eval.evaluator as ev
    import ptq_bench.eval.kld as kld
    import ptq_bench.sweep as sweep

    monkeypatch.setattr(ev, "EVAL_VERSION", ev.EVAL_VERSION + 1)
    monkeypatch.setattr(sweep, "EVAL_VERSION", ev.EVAL_VERSION)
    if change == "tokens":
        text = data.perplexity_text
        monkeypatch.setattr(data, "perplexity_text", lambda name, folder: text(name, folder)[500:])
    else:
        nll = kld._nll_sum
        monkeypatch.setattr(kld, "_nll_sum", lambda logits, batch: (lambda t, c: (t + 0.01 * c, c))(*nll(logits, batch)))


@pytest.mark.parametrize("change", ["tokens", "nll"])
def test_a_bumped_protocol_does_not_read_the_old_protocols_caches(tmp_path, tokenizer_dir, monkeypatch,  # noqa: F811
                                                                  change):
    src = checkpoint(tmp_path, "mistral", tokenizer_dir)
    assert main(["run", str(_recipe(tmp_path, src, "out", "cache"))]) == 0
    _next_protocol(monkeypatch, change)
    assert main(["run", str(_recipe(tmp_path, src, "out", "cache"))]) == 0  # every cell again: a new version
    assert main(["run", str(_recipe(tmp_path, src, "fresh", "cache2"))]) == 0  # the new code from scratch
    import ptq_bench.eval.evaluator as ev

    resumed = {r.label: r.metrics for r in load_rows(tmp_path / "out", strict=True) if r.eval_version == ev.EVAL_VERSION}
    fresh = {r.label: r.metrics for r in load_rows(tmp_path / "fresh", strict=True)}
    assert resumed == fresh


def test_an_edited_data_file_keeps_the_other_files_reference(tmp_path, tokenizer_dir, data_dir, monkeypatch):  # noqa: F811
    """References are named by the tokens they score: a run on an edited copy of the data builds its own,
    and a run on the original reopens the first (one name for both rebuilt it on every alternation)."""
    import json
    import shutil

    import ptq_bench.eval.kld as kld

    edited = shutil.copytree(data_dir, tmp_path / "data")
    test = edited / "wikitext2" / "test.jsonl"
    rows = [json.loads(line) for line in test.read_text(encoding="utf-8").splitlines()]
    rows[0]["text"] = "Edited. " + rows[0]["text"]  # in the first window
    test.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    built, compute = [], kld._compute
    monkeypatch.setattr(kld, "_compute", lambda *a, **kw: built.append(a[2]) or compute(*a, **kw))
    src = checkpoint(tmp_path, "mistral", tokenizer_dir)
    for i, folder in enumerate((data_dir, edited, data_dir)):
        monkeypatch.setenv("PTQ_BENCH_DATA", str(folder))
        assert main(["run", str(_recipe(tmp_path, src, f"out{i}", "cache"))]) == 0
    assert built == ["wikitext2", "wikitext2"]  # the third run reopened the first run's reference
    first, third = ({r.label: r.metrics for r in load_rows(tmp_path / f"out{i}", strict=True)} for i in (0, 2))
    assert first == third
