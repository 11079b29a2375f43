"""What `eval_speed.py` prints: agreement of two backends' responses and metrics, and their speed lines."""

from __future__ import annotations


def max_delta(a: dict, b: dict) -> tuple[float, int]:
    """Largest |Δ loglik| over all requests, and how many is_greedy flags differ. Both sides must hold the
    same tasks and as many responses per task (ValueError / KeyError): a figure over a subset is refused."""
    worst, flips = 0.0, 0
    if set(a) != set(b):
        raise KeyError(f"the two sides' tasks differ: {sorted(set(a) ^ set(b))}")
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            if isinstance(x, tuple):
                worst = max(worst, abs(x[0] - y[0]))
                flips += x[1] != y[1]
            else:
                worst = max(worst, abs(x - y))
    return worst, flips


def only(metrics: dict, task: str) -> dict:
    """The metrics of one task (keys are harness.metric_key's lm_eval/<task>/...)."""
    return {k: v for k, v in metrics.items() if k.split("/")[1] == task}


def max_dmetric(a: dict, b: dict) -> float:
    """Largest difference of an accuracy between two evaluations, in points (stderrs and perplexities left out)."""
    return max((100 * abs(a[k] - b[k]) for k in a if k.rsplit("/", 1)[-1] in ("acc", "acc_norm")), default=0.0)


HEAD = f"{'task':<15}{'requests':>9}{'max|Δll|':>11}{'greedy≠':>8}{'acc ==':>8}{'Δacc':>7}"


def row(label: str, runs: list[dict]) -> str:
    """Agreement of FastLM with HFLM (and, with --envelope, of HFLM bs1 with HFLM) over `runs` (per-task dicts)."""
    env = (f"{max(r['envelope'] for r in runs):>11.2e}{max(r['envelope_dacc'] for r in runs):>9.1f}"
           if "envelope" in runs[0] else "")
    return (f"{label:<15}{sum(r['requests'] for r in runs):>9}{max(r['max_abs_dloglik'] for r in runs):>11.2e}"
            f"{sum(r['greedy_flips'] for r in runs):>8}{str(all(r['metrics_equal'] for r in runs)):>8}"
            f"{max(r['dacc'] for r in runs):>7.1f}{env}")


def speed(label: str, res: dict) -> str:
    n, hflm_s, fast_s, bs1_s = res["requests"], res["hflm_s"], res["fast_s"], res["hflm_bs1_s"]
    fw = res["forwards"]
    line = (f"{label}: {n} requests in one evaluate() call, HFLM {n / hflm_s:.1f} req/s ({hflm_s:.1f} s, "
            f"{fw['hflm']} forwards), FastLM {n / fast_s:.1f} req/s ({fast_s:.1f} s, {fw['fast']} forwards), "
            f"ratio {hflm_s / fast_s:.2f}, work {res['work']:.2f}")
    if res["ceiling"] is not None:
        line += ", exact ceiling {:.2f} (one tree over all documents: {:.2f})".format(*res["ceiling"])
    if bs1_s is not None:
        line += f"; HFLM batch 1 (one run) {n / bs1_s:.1f} req/s, FastLM / it {bs1_s / fast_s:.2f}"
    for r in res["sweep"]:
        line += (f"\n  FastLM at {r['variant']}: {n / r['s']:.1f} req/s ({r['s']:.1f} s, {r['forwards']} "
                 f"forwards), ratio {hflm_s / r['s']:.2f}, work {r['work']:.2f}, max|Δll| {r['max_abs_dloglik']:.2e}")
    return line


EXACT_DLL = 1e-4  # the largest |Δ loglik| per request an exact model may have (issue 13's bar for float models)


def verdict(runs: list[dict], exact: bool) -> tuple[str, int]:
    """(the agreement line, the exit status) over `runs` (per-task dicts): an exact model (float weights and
    activations, or any model in float64) must give every request within EXACT_DLL and every accuracy equal
    (exit 1 otherwise); a model that rounds activations in float32 is not held to it (its numbers move with
    the batch as HFLM's own do: --envelope, --dtype float64)."""
    if not exact:
        return ("agreement: not checked (activations rounded in float32: see --envelope, or --dtype float64)", 0)
    worst, dacc = max(r["max_abs_dloglik"] for r in runs), max(r["dacc"] for r in runs)
    ok = worst <= EXACT_DLL and dacc == 0
    return (f"agreement: {'yes' if ok else 'NO'} (largest |Δ loglik| {worst:.2e}, bound {EXACT_DLL:g}; largest "
            f"accuracy difference {dacc:.1f} points, bound 0)", 0 if ok else 1)
