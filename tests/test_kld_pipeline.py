"""KLD in the pipeline: every quantized cell carries its distance to the unquantized base model, the
base reference is built once per (model, set), and the report shows the columns and kld_vs_bits.png."""

from __future__ import annotations

from pathlib import Path

import yaml
from report_rows import md_cells
from test_source_pipeline import checkpoint, tokenizer_dir  # noqa: F401  (a fixture)

from ptq_bench.cli import main
from ptq_bench.results import load_rows

SETS = ["wikitext2", "c4"]


def _recipe(tmp_path: Path, src: Path, kld: bool = True) -> Path:
    r = {"name": "kld", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
         "models": {"m": {"source": str(src)}}, "calibration": {"n_samples": 4, "seq_len": 32},
         "quantize": [{"method": "absmax", "w_bits": 2}, {"method": "gptq", "w_bits": 3, "group_size": 32}],
         "eval": {"perplexity": {"sets": SETS, "seq_len": 32, "max_windows": 3}, "batch_size": 2, "kld": kld}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def _count_builds(monkeypatch, pause: float = 0.0) -> list[str]:
    import time

    import ptq_bench.eval.kld as kld

    calls, real = [], kld.build_reference

    def counting(model, ids, set_name, *args, **kw):
        calls.append(set_name)
        time.sleep(pause)  # a reference that takes visible time (whose row is charged with it)
        return real(model, ids, set_name, *args, **kw)

    monkeypatch.setattr(kld, "build_reference", counting)
    return calls


def test_quantized_rows_carry_kld_against_the_base(tmp_path, tokenizer_dir, monkeypatch):  # noqa: F811
    calls = _count_builds(monkeypatch)
    src = checkpoint(tmp_path, "mistral", tokenizer_dir)
    assert main(["run", str(_recipe(tmp_path, src))]) == 0
    assert sorted(calls) == sorted(SETS)  # once per set for the model, not once per cell
    rows = {r.label: r for r in load_rows(tmp_path / "out", strict=True)}
    base = rows.pop("none")
    assert not any(k.startswith(("kld/", "top1_agree/", "dppl/")) for k in base.metrics)
    for row in rows.values():
        for s in SETS:
            tail = f"{s}/seq32/first3win"
            kl, agree = row.metrics[f"kld/{tail}/mean"], row.metrics[f"top1_agree/{tail}"]
            assert 0 < kl <= row.metrics[f"kld/{tail}/p99"] * 10 and 0 <= agree < 100, (row.label, kl, agree)
            # ΔPPL is against this recipe's base row: the reference is the unquantized model's
            dppl = row.metrics[f"ppl_gptq/{tail}"] - base.metrics[f"ppl_gptq/{tail}"]
            assert abs(row.metrics[f"dppl/{tail}"] - dppl) <= 1e-9 * abs(dppl) + 1e-12
    table = (tmp_path / "out" / "table.md").read_text().splitlines()
    head = md_cells(table[2])  # title, blank, header
    col, agree_col = head.index("kld/wikitext2/seq32/first3win/mean"), head.index("top1_agree/wikitext2/seq32/first3win")
    for line in table[4:7]:
        cells = md_cells(line)
        assert (cells[col] == "–") == (cells[1] == "none") and (cells[agree_col] == "–") == (cells[1] == "none")
    assert "top1_agree/wikitext2/seq32/first3win" in (tmp_path / "out" / "table.csv").read_text().splitlines()[0]
    assert (tmp_path / "out" / "kld_vs_bits.png").stat().st_size > 0
    # another run folder on the same cache reopens the stored references (checked, not recomputed)
    stored = sorted((tmp_path / "cache" / "kld").rglob("*.npy"))
    assert len(stored) == 2 * len(SETS)  # log-probs + top-1 per set
    stamps = [p.stat().st_mtime_ns for p in stored]
    r = yaml.safe_load((tmp_path / "r.yaml").read_text())
    r["output_dir"] = str(tmp_path / "out2")
    (tmp_path / "r2.yaml").write_text(yaml.safe_dump(r))
    assert main(["run", str(tmp_path / "r2.yaml")]) == 0
    assert [p.stat().st_mtime_ns for p in stored] == stamps
    again = {x.label: x for x in load_rows(tmp_path / "out2", strict=True)}
    assert again["absmax W2A16"].metrics == rows["absmax W2A16"].metrics

def test_kld_off_keeps_plain_perplexity(tmp_path, tokenizer_dir, monkeypatch):  # noqa: F811
    """Without KLD every row gets a perplexity pass; with it the base row reads its perplexity from the
    references (no second pass over the windows), and the numbers are the same to the last bit."""
    import ptq_bench.eval.evaluator as ev

    calls = _count_builds(monkeypatch, pause=0.5)
    passes = []
    real = ev.Evaluator.perplexity
    monkeypatch.setattr(ev.Evaluator, "perplexity", lambda self, model: passes.append(1) or real(self, model))
    src = checkpoint(tmp_path, "gpt2", tokenizer_dir)
    rows = {}
    for kld in (False, True):
        path = _recipe(tmp_path, src, kld=kld)
        r = yaml.safe_load(path.read_text())
        r["output_dir"] = str(tmp_path / f"out-{kld}")
        path.write_text(yaml.safe_dump(r))
        passes.clear()
        assert main(["run", str(path)]) == 0
        rows[kld] = {x.label: x for x in load_rows(tmp_path / f"out-{kld}", strict=True)}
        assert len(passes) == (0 if kld else 3), kld  # kld: the base row reuses its references
    assert sorted(calls) == sorted(SETS)  # only the kld run built references
    for row in rows[False].values():
        assert all(k.startswith("ppl_gptq/") for k in row.metrics), row.metrics
    assert not (tmp_path / "out-False" / "kld_vs_bits.png").exists()
    for label, row in rows[False].items():
        for name, value in row.metrics.items():
            assert rows[True][label].metrics[name] == value, (label, name)
    # the base row's perplexity was computed in the references, before any cell: its time is the row's
    assert rows[True]["none"].eval_seconds >= 0.5 * len(SETS), rows[True]["none"].eval_seconds
    # ... and no other row's: a quantized row's time is its own evaluation, not the references' as well
    quantized = [row.eval_seconds for label, row in rows[True].items() if label != "none"]
    assert sum(quantized) < 0.5 * len(SETS), quantized
