"""Every metric of a cell: GPTQ-protocol perplexity on each set, then the lm-eval tasks.

A quantized cell (with `eval.kld`, the default) gets its perplexity from `kld.compare` against the
base model's reference on the same windows, which adds its KL divergence, p99, top-1 agreement and
ΔPPL (eval/kld.py). The references are built once per base model and set (`set_base`, then lazily on
the first quantized cell) and cached on disk under <cache>/kld/<model key>/, checksummed.

EVAL_VERSION is part of every cell id and row: bump it whenever a change here, in perplexity.py,
harness.py or fast_lm.py can change a stored number (windowing, scoring, task configs, request
building), so a re-run recomputes every row instead of keeping rows made by the old protocol. It also
names what evaluation caches (perplexity token arrays, KLD references): a recomputed row must not read
its perplexity or its base from an artefact the old protocol built.
"""

from __future__ import annotations

import hashlib
import weakref
from pathlib import Path
from typing import Any

import numpy as np

# 2: FastLM's auto path shares prefixes for token-local rounding models too (per-token activation
#    quantization, BitNet): their zero-shot numbers move within HFLM's own batch-size spread (fast_lm.py)
# 3: FastLM cuts its forwards by least padded work (eval/batching.py): other batch mates, so float
#    summation order (and, for token-local rounding models, a rounding step now and then) changes
# 4: perplexity text is tokenized as GPTQ's datautils tokenizes it, with the tokenizer's own special
#    tokens (a BOS-adding tokenizer, Llama's or Gemma's, starts the stream with BOS: every window moves by
#    one token); tokenizers that add none (the toolkit's BPE, SmolLM2's) give the same ids as before
# 5: a model with per-tensor activation scales (`model_traits.mixes_tokens`) is scored one window per forward
#    (`perplexity.window_batch`): batched windows shared one scale, so its perplexity and KLD moved with batch_size;
#    and top1_agree is NaN where either model's logits are NaN or inf (kld.compare): a diverged model had "100"
# 6: a task's metrics are NaN where a log-likelihood of its responses is NaN (harness._finite): lm-eval's argmax
#    picked the first choice, so a diverged model "scored" the share of documents whose answer is first (PIQA 25.00);
#    and (the same bump) per-token KL renormalizes both float32 log-probs in float64 (kld.token_kl): unnormalized,
#    a near-lossless cell's mean KLD could be negative (-1.3e-9 nats, Cohere 2 Absmax W8A8); KLD moves by ~1e-7
EVAL_VERSION = 6


class Evaluator:
    """Perplexity token ids and lm-eval requests, built once per tokenizer and reused by every cell.

    `spec` is the recipe's EvalSpec; perplexity token ids are cached under <cache>/tokens/<tok_key>/.
    """

    def __init__(self, spec: Any, data_dir: Path, cache: Path, tokenizer: Any, tok_key: str):
        from ptq_bench.data import PPL_FILES, data_file, perplexity_text
        from ptq_bench.eval.harness import TaskSuite
        from ptq_bench.tokens import cached_array

        self.spec = spec
        self.cache = cache
        self.base: tuple[Any, str] | None = None  # (base model, its cache key) of the cells being evaluated
        self.refs: dict[str, Any] = {}  # set name -> kld.BaseReference of `base`
        self.ppl_ids: dict[str, np.ndarray] = {}
        for name in spec.perplexity.sets:
            file = data_file(data_dir, PPL_FILES[name])
            self.ppl_ids[name] = cached_array(
                cache / "tokens" / tok_key / f"ppl_{name}-eval{EVAL_VERSION}.npy",  # built by this protocol
                lambda n=name: np.asarray(tokenizer(perplexity_text(n, data_dir))["input_ids"], np.int32),
                [file])
            _check_windows(spec.perplexity, name, len(self.ppl_ids[name]), file)
        self.suite = TaskSuite.of(spec, data_dir, tokenizer) if spec.tasks else None

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
                out = gptq_perplexity(model, _long(ids), p.seq_len, p.max_windows,
                                      batch_size=self.spec.batch_size)
                metrics[protocol_name(name, p.seq_len, p.max_windows)] = out["ppl"]
        return metrics

    def base_perplexity(self, model: Any) -> dict[str, float]:
        """`perplexity`, read from the KLD references when `model` is their base and they are built (the
        same windows, batches and arithmetic: `kld.build_reference` keeps the base NLL), else a pass."""
        if self.base is not None and self.base[0]() is model and set(self.refs) == set(self.ppl_ids):
            return {ref.names["ppl"]: ref.ppl for ref in self.refs.values()}
        return self.perplexity(model)

    def set_base(self, model: Any, key: str, device: str) -> None:
        """The unquantized model later cells are compared with. `key` (its cache key) names the references,
        with the model's dtype and the device when they are not float32 on the CPU (the references stored
        before the recipe's dtype existed), so a bf16 or CUDA run never reads another run's base."""
        from ptq_bench.models.build import dtype_name

        where = (dtype_name(model), device.split(":")[0])
        key = key if where == ("float32", "cpu") else f"{key}-{'-'.join(where)}"
        self.base, self.refs = (weakref.ref(model), key), {}  # weak: the model goes when its cells are done

    def references(self) -> dict[str, Any]:
        """set name -> the base model's reference on that set: built (or reopened from the cache) once."""
        from ptq_bench.eval.kld import build_reference

        if self.base is None:
            raise RuntimeError("Evaluator.set_base must be called before evaluating a quantized model")
        model, key = self.base[0](), self.base[1]
        p = self.spec.perplexity
        for name, ids in self.ppl_ids.items():
            if name not in self.refs:
                tail = f"{name}-seq{p.seq_len}" + ("" if p.max_windows is None else f"-first{p.max_windows}win")
                # this protocol's NLL and log-probs, on these tokens: an edited data file is another reference
                # (one name for both rebuilt it each time a run alternated between them)
                tail += f"-eval{EVAL_VERSION}-{hashlib.sha256(ids.tobytes()).hexdigest()[:12]}"
                self.refs[name] = build_reference(
                    model, _long(ids), name, p.seq_len, p.max_windows, path=self.cache / "kld" / key / f"{tail}.npy",
                    key=key, batch_size=self.spec.batch_size)
        return self.refs

    def distances(self, model: Any) -> dict[str, float]:
        """Per set: the quantized model's perplexity (as `perplexity` computes it) and its distance to the base."""
        from ptq_bench.eval.kld import compare

        metrics: dict[str, float] = {}
        for ref in self.references().values():
            out = compare(ref, model, batch_size=self.spec.batch_size)
            ppl = ref.names["ppl"]
            metrics.update({ppl: out.pop(ppl), **out})
        return metrics

    def __call__(self, model: Any, quantized: bool = False, tasks: tuple[str, ...] | None = None) -> dict[str, float]:
        """Perplexity (and KLD for a quantized model), then the lm-eval tasks (`tasks`: a subset; None = all)."""
        import torch

        metrics = self.distances(model) if quantized and self.spec.kld else self.base_perplexity(model)
        if self.suite is not None and tasks != ():
            with torch.no_grad():
                metrics.update(self.suite.evaluate(model, only=tasks))
        return metrics


def _check_windows(p: Any, name: str, n_tokens: int, file: Path) -> None:
    """The set holds at least one window, and as many as `max_windows` names (`first<K>win` would
    otherwise name a subset that is the whole set)."""
    from ptq_bench.errors import DataError

    n = n_tokens // p.seq_len
    if n == 0:  # a short or mostly empty file
        raise DataError(f"eval.perplexity: {file} holds {n_tokens} tokens, not one window of seq_len {p.seq_len}")
    if p.max_windows is not None and p.max_windows > n:
        raise DataError(f"eval.perplexity.max_windows: {p.max_windows} is more than the {n} windows of {p.seq_len} "
                        f"tokens in {name}; leave it unset for the whole set")


def _long(ids: np.ndarray) -> Any:
    """A stored int32 token stream as the 1-D LongTensor the perplexity windows are cut from."""
    import torch

    return torch.from_numpy(ids.astype(np.int64))
