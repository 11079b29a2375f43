"""Counts for issue 9's recipe campaign: N mutated recipes through `validate` (and refused ones through `run`).

    PTQ_BENCH_DATA=/work/shared/data .venv/bin/python benchmarks/recipe_fuzz.py [-n 400] [--run 60] [--seed 0]

Mutations and the independent oracle are tests/recipe_mutations.py (the same as the property test,
tests/test_recipe_fuzz.py). Prints: cases tried, exit codes, tracebacks, hangs (> 10 s), slow cases
(> 2 s), error lines over one line or 300 characters, accepted-but-invalid (validate exit 0 while the
oracle names a problem), and for `run`: refused cases that wrote anything or got past validation.
`run` goes into a scratch working directory with the sweep replaced by a tripwire, so nothing trains.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("PTQ_BENCH_DATA", str((ROOT.parent / "shared" / "data").resolve()))

from bench_args import checked, exit_with, folder, non_negative, positive  # noqa: E402


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def campaign(n: int, n_run: int, seed: int) -> dict:
    import yaml
    from hypothesis import HealthCheck, given, settings
    from recipe_mutations import looks_invalid, mutations, run_case

    import ptq_bench.sweep

    def tripwire(*a: object, **k: object) -> None:
        raise AssertionError("run reached the sweep")

    ptq_bench.sweep.run = tripwire
    c: dict = collections.defaultdict(int, codes=collections.Counter(), run_codes=collections.Counter(), examples=[])
    seen: set[bytes] = set()
    folder, back = Path(tempfile.mkdtemp(prefix="recipe_fuzz_")), os.getcwd()
    os.chdir(folder)
    signal.signal(signal.SIGALRM, _alarm)

    @settings(max_examples=n, deadline=None, database=None, derandomize=seed == 0,
              suppress_health_check=list(HealthCheck))
    @given(mutations())
    def case(m: tuple[str, bytes]) -> None:
        label, data = m
        c["cases"] += 1
        seen.add(data)
        signal.alarm(10)
        try:
            out = run_case(data, folder, "validate")
        except Hang:
            c["hangs"] += 1
            return
        finally:
            signal.alarm(0)
        c["codes"][out.code] += 1
        c["max_seconds"] = max(c["max_seconds"], out.seconds)
        c["slow"] += out.seconds > 2
        if out.code is None:
            c["tracebacks"] += 1
            c["examples"].append(f"traceback: {label}: {out.err.strip().splitlines()[-1][:200]}")
        elif out.code == 2:
            line = out.err.strip()
            c["max_error_chars"] = max(c["max_error_chars"], len(line))
            c["bad_error_lines"] += line.count("\n") > 0 or len(line) >= 300
        elif problems := looks_invalid(yaml.safe_load(data.decode())):
            c["accepted_invalid"] += 1
            c["examples"].insert(0, f"accepted but invalid: {label}: {problems[:3]}")
        elif os.environ.get("FUZZ_SHOW_ACCEPTED"):
            print("accepted:", label)
        if out.code == 2 and c["run_cases"] < n_run:
            before = {str(p) for p in folder.rglob("*")}
            ran = run_case(data, folder, "run")
            c["run_cases"] += 1
            c["run_codes"][ran.code] += 1
            c["run_wrote"] += {str(p) for p in folder.rglob("*")} != before

    try:
        case()
    finally:  # the cases' recipes and whatever a run wrote go with the folder
        os.chdir(back)
        shutil.rmtree(folder, ignore_errors=True)
    c["distinct"] = len(seen)
    return c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=positive, default=400, help="mutated recipes through validate")
    p.add_argument("--run", type=non_negative, default=60, help="of those refused, how many also go through run")
    p.add_argument("--seed", type=non_negative, default=0, help="0 = Hypothesis' fixed derandomized sequence, else random")
    args = p.parse_args()
    checked(p, folder, os.environ["PTQ_BENCH_DATA"], "$PTQ_BENCH_DATA")  # every case would be refused for it
    c = campaign(args.n, args.run, args.seed)
    codes = ", ".join(f"exit {k}: {v}" for k, v in sorted(c["codes"].items(), key=str))
    print(f"validate: {c['cases']} cases tried ({c['distinct']} distinct recipes); {codes}")
    print(f"  tracebacks {c['tracebacks']}, hangs (>10 s) {c['hangs']}, slow (>2 s) {c['slow']}, "
          f"slowest {c['max_seconds']:.2f} s")
    print(f"  error lines not one line < 300 chars: {c['bad_error_lines']} (longest {c['max_error_chars']} chars)")
    print(f"  accepted but invalid (oracle): {c['accepted_invalid']}")
    run_codes = ", ".join(f"exit {k}: {v}" for k, v in sorted(c["run_codes"].items(), key=str))
    print(f"run (refused by validate): {c['run_cases']} cases; {run_codes}; wrote something: {c['run_wrote']}")
    for line in c["examples"][:20]:
        print("  " + line)


if __name__ == "__main__":
    exit_with(main)
