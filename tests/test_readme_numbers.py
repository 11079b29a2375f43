"""The README's SmolLM2 results table quotes the committed results: every number in it is found, to the
digits shown, in results/smollm2_ptq/table_seeds.csv (written by `ptq-bench report`)."""

from __future__ import annotations

import csv
from pathlib import Path

from report_rows import md_cells

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"FP16": "none", "Absmax": "absmax", "SmoothQuant": "smoothquant", "GPTQ": "gptq", "QuIP": "quip"}
COLUMNS = {"PPL (WikiText-2)": "ppl_gptq/wikitext2/seq512/first12win", "C4 PPL": "ppl_gptq/c4/seq512/first12win",
           "KLD (nats)": "kld/wikitext2/seq512/first12win/mean", "top-1 agree %": "top1_agree/wikitext2/seq512/first12win"}


def _readme_table() -> list[dict[str, str]]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| WBits") and "top-1 agree %" in ln)
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    head, _, *body = [md_cells(ln) for ln in lines[start:end]]
    return [dict(zip(head, cells)) for cells in body]


def _stored() -> dict[tuple[str, str, str, str], dict[str, str]]:
    with open(ROOT / "results/smollm2_ptq/table_seeds.csv", encoding="utf-8") as fh:
        return {(r["method"], r["W"], r["A"], r["setting"]): r for r in csv.DictReader(fh)}


def _close(shown: str, value: float) -> bool:
    """`shown` is `value` to the digits shown ("1.37e4", "0.502", "5260")."""
    mant, _, exp = shown.partition("e")
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    return abs(float(shown) - value) <= 0.5001 * 10 ** (-decimals) * 10 ** int(exp or 0)


def test_every_number_of_the_readme_smollm2_table_is_in_the_committed_results():
    stored, wrong = _stored(), []
    rows = _readme_table()
    assert len(rows) == 16
    for r in rows:
        method = METHODS[r["Method"].split(" (")[0]]
        key = (method, r["WBits"], r["ABits"], r["Setting"] if method != "none" else "")
        got = stored[key]
        for col, metric in COLUMNS.items():
            cell = r[col]
            if cell == "–":
                assert got[metric] == "", (key, col)
                continue
            mean, _, std = (s.strip() for s in cell.partition("±"))
            if not _close(mean, float(got[metric])):
                wrong.append(f"{key} {col}: {cell} vs {got[metric]}")
            if got[f"{metric}_std"] and not std:
                wrong.append(f"{key} {col}: {cell} is a mean over {got['n']} seeds shown without its ±")
            if std and not _close(std, float(got[f"{metric}_std"])):
                wrong.append(f"{key} {col}: {cell} vs ± {got[metric + '_std']}")
    assert not wrong, "\n".join(wrong)
