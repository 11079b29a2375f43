"""Every metric of a cell: GPTQ-protocol perplexity on each set, then the lm-eval tasks.

EVAL_VERSION is part of every cell id and row: bump it whenever a change here, in perplexity.py,
harness.py or fast_lm.py can change a stored number (windowing, scoring, task configs, request
building), so a re-run recomputes every row instead of keeping rows made by the old protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

EVAL_VERSION = 1


class Evaluator:
    """Perplexity token ids and lm-eval requests, built once per tokenizer and reused by every cell.

    `spec` is the recipe's EvalSpec; perplexity token ids are cached under <cache>/tokens/<tok_key>/.
    """

    def __init__(self, spec: Any, data_dir: Path, cache: Path, tokenizer: Any, tok_key: str):
        from ptq_bench.data import perplexity_text
        from ptq_bench.eval.harness import TaskSuite
        from ptq_bench.tokens import cached_array

        self.spec = spec
        self.ppl_ids: dict[str, np.ndarray] = {}
        for name in spec.perplexity.sets:
            self.ppl_ids[name] = cached_array(
                cache / "tokens" / tok_key / f"ppl_{name}.npy",
                lambda n=name: np.asarray(tokenizer(perplexity_text(n, data_dir), add_special_tokens=False)
                                          ["input_ids"], np.int32))
        self.suite = (TaskSuite(spec.tasks, data_dir, tokenizer, limit=spec.limit, num_fewshot=spec.num_fewshot,
                                backend=spec.backend, batch_size=spec.batch_size) if spec.tasks else None)

    def provenance(self) -> dict[str, Any]:
        """What the manifest keeps about this evaluation: its version and the tasks' own versions."""
        return {"eval_version": EVAL_VERSION, "tasks": self.suite.provenance() if self.suite is not None else None}

    def perplexity(self, model: Any) -> dict[str, float]:
        """GPTQ-protocol perplexity on every set of the recipe, keyed by protocol name."""
        import torch

        from ptq_bench.eval.perplexity import gptq_perplexity, protocol_name

        p = self.spec.perplexity
        metrics: dict[str, float] = {}
        with torch.no_grad():
            for name, ids in self.ppl_ids.items():
                out = gptq_perplexity(model, torch.from_numpy(ids.astype(np.int64)), p.seq_len, p.max_windows,
                                      batch_size=self.spec.batch_size)
                metrics[protocol_name(name, p.seq_len, p.max_windows)] = out["ppl"]
        return metrics

    def __call__(self, model: Any) -> dict[str, float]:
        import torch

        metrics = self.perplexity(model)
        if self.suite is not None:
            with torch.no_grad():
                metrics.update(self.suite.evaluate(model))
        return metrics
