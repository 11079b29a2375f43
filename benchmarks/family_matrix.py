"""Print the model family x PTQ method matrix: each invariant of tests/test_families.py, PASS or FAIL.

    PYTHONPATH=$PWD python benchmarks/family_matrix.py [MODEL_TYPE ...]

Per family: block replay (max |runner's block output - real forward's|, bound 1e-5), smoothing alone
(SmoothQuant alpha 0.5 W16A16, max |delta logit|, bound 1e-4), linears in the blocks (counted module by
module) vs the registry's prediction. Per family x method: the method runs, quantizes exactly the
predicted number of linears, and every stored weight lies on its grid; BitNet must be refused, and so
must SmoothQuant on a family with no norm feeding a linear (OLMo 2/3).
Tiny random checkpoints (tests/tiny_families.py), 4 calibration windows of 32 tokens, CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_args import exit_with  # noqa: E402
from family_checks import (  # noqa: E402  (tests/ on the path first)
    FAMILY_TYPES,
    METHOD_PARAMS,
    calib_tokens,
    case_family,
    count_block_linears,
    lively_model,
    n_on_grid,
    predicted_linears,
    quantize,
    replay_delta,
    smoothing_only_delta,
)

from ptq_bench.errors import PtqBenchError, QuantError  # noqa: E402
from ptq_bench.quant.configs import CATALOG  # noqa: E402


def method_cell(model, method: str, calib, refusal: str) -> str:
    """'PASS n=14' / 'FAIL ...' / 'refused' for one family x method (`refusal`: the error it must raise)."""
    try:
        q, rep = quantize(model, method, calib, **METHOD_PARAMS[method])
    except QuantError as exc:
        return "refused" if refusal and refusal in str(exc) else f"FAIL {exc}"
    except PtqBenchError as exc:
        return f"FAIL {exc}"
    if refusal:
        return "FAIL not refused"
    expected = predicted_linears(model)
    gridded, on = n_on_grid(q)
    ok = rep.n_linears == gridded == on == expected
    return f"{'PASS' if ok else 'FAIL'} n={rep.n_linears}" + ("" if ok else f" grid={gridded} on={on}")


def family_row(model_type: str, calib, tokens) -> list[str]:
    model = lively_model(model_type)
    family = case_family(model_type)
    replay = replay_delta(model, calib)
    cells = [f"{'PASS' if replay <= 1e-5 else 'FAIL'} {replay:.1e}"]
    if family.low_bit or not family.smooth:
        cells.append("-")
    else:
        delta, _ = smoothing_only_delta(model, calib, tokens)
        cells.append(f"{'PASS' if delta <= 1e-4 else 'FAIL'} {delta:.1e}")
    counted, predicted = count_block_linears(model), predicted_linears(model)
    cells.append(f"{'PASS' if counted == predicted else 'FAIL'} {counted}/{predicted}")
    return cells + [method_cell(model, m, calib, expected_refusal(model_type, m)) for m in sorted(METHOD_PARAMS)]


def expected_refusal(model_type: str, method: str) -> str:
    """What the error of a family x method that must be refused says ('' when it must run)."""
    if case_family(model_type).low_bit:
        return "PTQ refused"
    return "no smoothing pairs" if CATALOG[method].needs_smoothing and not case_family(model_type).smooth else ""


def cases(wanted: list[str]) -> list[str]:
    """The tiny cases of the model types (or `type:layout` cases) asked for; every case when none are."""
    chosen = [c for c in FAMILY_TYPES if not wanted or c in wanted or c.split(":")[0] in wanted]
    return chosen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("types", nargs="*", metavar="MODEL_TYPE", help="model types or type:layout cases (default: all)")
    wanted = p.parse_args().types
    unknown = [w for w in wanted if not cases([w])]
    if unknown:
        p.error(f"no tiny case for {', '.join(unknown)} (tests/tiny_families.py)")
    chosen = cases(wanted)
    calib, tokens = calib_tokens(4, 32), calib_tokens(2, 32, seed=7)
    header = ["family", "replay", "smooth W16A16", "linears", *sorted(METHOD_PARAMS)]
    rows, t0 = [], time.perf_counter()
    for model_type in chosen:
        rows.append([model_type, *family_row(model_type, calib, tokens)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    failed = sum("FAIL" in c for r in rows for c in r)
    n_types = len({case.split(":")[0] for case in chosen})
    print(f"\n{len(rows)} layouts of {n_types} families x {len(METHOD_PARAMS)} methods, {failed} FAIL, {time.perf_counter() - t0:.1f} s; "
          f"methods: {', '.join(f'{m} {p}' for m, p in sorted(METHOD_PARAMS.items()))}")
    return 1 if failed else 0


if __name__ == "__main__":
    exit_with(main)
