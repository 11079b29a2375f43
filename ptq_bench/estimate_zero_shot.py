"""`ptq-bench estimate`'s zero-shot part (when the recipe has tasks): every model is evaluated on the first
`SAMPLE_DOCS` and 3 x `SAMPLE_DOCS` documents of each task with the recipe's backend and batch size, each
sample timed as the best of `SAMPLE_REPEATS` calls after a warm-up call of its own (the slope of two short
timings magnifies one slow call); the line through the two gives its fixed cost per evaluate call and its
seconds per unit of request work (`eval.work`: prefix-tree positions for FastLM, HFLM's own, weighted by the
model's block and head sizes). Each task's work at the recipe's `limit` is counted from its tokenized
requests under the model's tokenizer (the recipe's, trained in memory, or the source's own), so a cell's
projection follows the tasks it runs. The tasks are built once per tokenizer, the samples too: building
them at the recipe's limit is timed as a part of the preparation, as `run` builds them once. Weight-only
cells are projected at their base model's rate, activation-quantized ones at their activation setting's
(`estimate_act`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from ptq_bench.estimate_prep import Prep
from ptq_bench.recipe import Recipe

SAMPLE_DOCS = 4  # documents per task evaluated to time a model's zero-shot rate
SAMPLE_REPEATS = 2  # timed calls per sample, after its warm-up call (the best counts)


@dataclass
class Built:
    """One tokenizer's tasks: each task's positions at the recipe's limit, and the two timing samples (a
    suite and its positions each)."""

    work: dict[str, tuple[int, int]]
    samples: list[tuple[Any, dict[str, tuple[int, int]]]]


class ZeroShot:
    """The zero-shot projection's counting and timing (see the module docstring)."""

    def __init__(self, recipe: Recipe, data_dir: Any, prep: Prep | None = None) -> None:
        self.recipe, self.data_dir = recipe, data_dir
        self.prep = prep or Prep(recipe, data_dir)  # fits the recipe's BPE (once)
        self._built: list[tuple[Any, Built]] = []  # (tokenizer, its tasks): kept, as an id() could be reused

    def _suite(self, tok: Any, limit: int | None) -> Any:
        from ptq_bench.eval.harness import TaskSuite

        return TaskSuite.of(self.recipe.eval, self.data_dir, tok, limit=limit)

    def _positions(self, suite: Any) -> dict[str, tuple[int, int]]:
        """Per task, (block positions, head positions) of its requests under the recipe's backend."""
        from ptq_bench.eval.work import exact_work, hflm_positions

        count = exact_work if self.recipe.eval.backend == "fast" else hflm_positions
        return {name: count(requests) for name, requests in suite.tokenized().items()}

    def seconds(self, model: Any, own_tok: Any, evaluating: Any = contextlib.nullcontext) -> tuple[float, dict[str, float]]:
        """(seconds of one evaluate call's fixed cost, per task the model's projected seconds of work at the
        recipe's limit): a line through two timed samples (SAMPLE_DOCS and 3 x SAMPLE_DOCS documents per
        task; one at a limit <= SAMPLE_DOCS), each the best of SAMPLE_REPEATS calls after its own warm-up call
        (a first call's new shapes or one slow call would otherwise set the slope), so lm-eval's per-call cost
        is not scaled up with the work. `evaluating()`: the context a forward runs in (an offloaded model's blocks streamed)."""
        from ptq_bench.eval.work import model_sizes, weighted

        tok = self.prep.tokenizer(own_tok)  # the model's own, or the recipe's BPE (fitted once)
        built, sizes, points = self._tasks(tok), model_sizes(model), []
        for suite, positions in built.samples:
            with evaluating():
                suite.evaluate(model, progress=False)  # warm-up: this sample's shapes
                best = min(_evaluate_s(suite, model) for _ in range(SAMPLE_REPEATS))
            points.append((sum(weighted(p, sizes) for p in positions.values()), best))
        (w1, t1), (w2, t2) = points[0], points[-1]  # one sample (limit <= SAMPLE_DOCS): no fixed part
        rate = (t2 - t1) / (w2 - w1) if w2 > w1 and t2 > t1 else t2 / max(1, w2)  # noise: no fixed part
        fixed = max(0.0, t2 - rate * w2)
        return fixed, {t: weighted(p, sizes) * rate for t, p in built.work.items()}

    def _tasks(self, tok: Any) -> Built:
        """This tokenizer's tasks, built the first time it is met (at the recipe's limit timed: `run` builds
        and tokenizes them once per tokenizer)."""
        built = next((b for t, b in self._built if t is tok), None)
        if built is None:
            limit, t0 = self.recipe.eval.limit, time.perf_counter()
            work = self._positions(self._suite(tok, limit))
            self.prep.add("building the tasks", time.perf_counter() - t0)
            samples = [self._suite(tok, docs) for docs in sample_docs(limit)]
            built = Built(work, [(suite, self._positions(suite)) for suite in samples])
            self._built.append((tok, built))
        return built


def sample_docs(limit: int | None) -> tuple[int, ...]:
    """Documents per task of the timed samples: SAMPLE_DOCS and 3 x SAMPLE_DOCS, never more than the run
    evaluates (at a limit <= SAMPLE_DOCS one sample, the run's own documents, whose time is the run's)."""
    small, large = SAMPLE_DOCS, 3 * SAMPLE_DOCS
    return (small, large) if limit is None else tuple(dict.fromkeys((min(small, limit), min(large, limit))))


def _evaluate_s(suite: Any, model: Any) -> float:
    suite.evaluate(model, progress=False)
    return suite.last_seconds
