"""Zero-shot tasks through lm-eval's own task code, on the local data folder, for in-memory models.

Each task is lm-eval's installed YAML, `include:`d by a small generated config that only points the
dataset at a local JSON Lines file (`dataset_path: json`, `data_files`, split names) — so
`process_docs`, `doc_to_*`, the metrics and their aggregation are lm-eval's, unchanged.

A `TaskSuite` loads the tasks and builds every request once; `evaluate(model)` then runs one model
through `lm_eval.evaluator.evaluate` with either backend:

* "hflm": stock `lm_eval.models.huggingface.HFLM` (the reference);
* "fast": `ptq_bench.eval.fast_lm.FastLM` (same tokens and numbers, shared prefixes run once).

Metric keys are named by protocol: ``lm_eval/{task}/{n}shot/{metric}``.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptq_bench.data import data_file, file_sha256
from ptq_bench.errors import DataError

if TYPE_CHECKING:
    import torch
    from lm_eval.api.model import LM
    from transformers import PreTrainedTokenizerBase

BACKENDS = ("fast", "hflm")


@dataclass(frozen=True)
class TaskSpec:
    lm_eval_task: str  # the generated config's `task:` (the installed YAML's own, or a new name for a variant
    # of a task listed already: lm-eval keeps one task per name, so two entries may not share one)
    yaml: str  # the installed YAML, relative to lm_eval/tasks/
    data_files: dict[str, str]  # lm-eval split name -> file relative to the data folder
    metrics: tuple[str, ...]  # metrics lm-eval defines for the task, reported in this order
    label: str  # short column label for tables (BitNet papers' abbreviations)
    notes: str = ""  # how our protocol differs from the paper's; a footnote under every table showing the task
    paper: bool = True  # one of the BitNet papers' zero-shot tasks (PAPER_TASKS: few-shot tests, eval_speed)
    splits: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        unknown = set(self.data_files) - {"train", "validation", "test"}
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)} for {self.lm_eval_task}")
        object.__setattr__(self, "splits", tuple(self.data_files))


def compile_templates_once() -> None:
    """Make lm-eval compile each distinct Jinja template source once per process.

    lm-eval renders `doc_to_text` / `doc_to_choice` / `doc_to_target` through `utils.apply_template`,
    which compiles the template source on every call (~1 ms: 2.3 s of a quickstart cell's 16 s of
    zero-shot, in `process_results`). The replacement renders the same compiled Template the same way,
    so every string is lm-eval's; it is installed once and applies to both backends."""
    from lm_eval import utils

    if getattr(utils.apply_template, "compiles_once", False):
        return
    compiled = functools.lru_cache(maxsize=None)(utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compiled(template).render(**doc)

    apply_template.compiles_once = True  # type: ignore[attr-defined]
    utils.apply_template = apply_template


_MC = ("acc", "acc_norm")
TASKS: dict[str, TaskSpec] = {
    "hellaswag": TaskSpec("hellaswag", "hellaswag/hellaswag.yaml", {"validation": "hellaswag/validation.jsonl.gz"}, _MC, "HS"),
    "winogrande": TaskSpec("winogrande", "winogrande/default.yaml", {"validation": "winogrande/validation.jsonl"}, ("acc",), "WGe",
                           "winogrande_xl dev; partial scoring"),
    "arc_easy": TaskSpec("arc_easy", "arc/arc_easy.yaml", {"test": "arc_easy/test.jsonl"}, _MC, "ARCe"),
    "arc_challenge": TaskSpec("arc_challenge", "arc/arc_challenge.yaml", {"test": "arc_challenge/test.jsonl"}, _MC, "ARCc"),
    "piqa": TaskSpec("piqa", "piqa/piqa.yaml", {"validation": "piqa/validation.jsonl"}, _MC, "PQ"),
    "boolq": TaskSpec("boolq", "super_glue/boolq/default.yaml", {"validation": "boolq/validation.jsonl"}, ("acc",), "BQ"),
    "openbookqa": TaskSpec("openbookqa", "openbookqa/openbookqa.yaml", {"test": "openbookqa/test.jsonl"}, _MC, "OQ"),
    "storycloze": TaskSpec("storycloze_2016", "storycloze/storycloze_2016.yaml",
                           {"validation": "storycloze/2016_validation.jsonl", "test": "storycloze/2016_test.jsonl"},
                           ("acc",), "SC", "StoryCloze 2016; lm-eval scores the test split"),
    "wsc273": TaskSpec("wsc273", "wsc273/default.yaml", {"test": "wsc273/test.jsonl"}, ("acc",), "WG",
                       "partial scoring"),
    "wikitext": TaskSpec("wikitext", "wikitext/wikitext.yaml", {"test": "wikitext2/test_document_level.jsonl"},
                         ("word_perplexity", "byte_perplexity", "bits_per_byte"), "WT2",
                         "document-level rolling loglikelihood; not the GPTQ-protocol perplexity", paper=False),
}


def check_distinct(tasks: dict[str, TaskSpec]) -> None:
    """Two entries with one `lm_eval_task`: lm-eval loads one ("Duplicate task name ... Skipping") and both
    entries' rows would carry its numbers."""
    seen: dict[str, str] = {}
    for name, spec in tasks.items():
        if spec.lm_eval_task in seen:
            raise ValueError(f"tasks {seen[spec.lm_eval_task]!r} and {name!r} share lm_eval_task "
                             f"{spec.lm_eval_task!r}: give the variant a task name of its own")
        seen[spec.lm_eval_task] = name


check_distinct(TASKS)
PAPER_TASKS = tuple(k for k, spec in TASKS.items() if spec.paper)
# The fields of a task file's rows that lm-eval's process_docs / doc_to_* read, with their type in the HF dataset's
# schema (/work/shared/data/README.md): a row without one is a KeyError inside lm-eval, after a run's training,
# and one of another type is worse: a label "1" where the schema has 1 is looked up among the choices' texts,
# so lm-eval scores every document wrong (a warning per document, no error).
_S = str
_MC_ARC = {"question": _S, "choices": dict, "answerKey": _S}
_SC = {**dict.fromkeys(("input_sentence_1", "input_sentence_2", "input_sentence_3", "input_sentence_4",
                        "sentence_quiz1", "sentence_quiz2"), _S), "answer_right_ending": int}
FILE_FIELDS: dict[str, dict[str, type]] = {
    "hellaswag/validation.jsonl.gz": {"activity_label": _S, "ctx_a": _S, "ctx_b": _S, "endings": list, "label": _S},
    "winogrande/validation.jsonl": {"sentence": _S, "option1": _S, "option2": _S, "answer": _S},
    "arc_easy/test.jsonl": _MC_ARC,
    "arc_challenge/test.jsonl": _MC_ARC,
    "piqa/validation.jsonl": {"goal": _S, "sol1": _S, "sol2": _S, "label": int},
    "boolq/validation.jsonl": {"passage": _S, "question": _S, "label": int},
    "openbookqa/test.jsonl": {"question_stem": _S, "choices": dict, "answerKey": _S},
    "storycloze/2016_validation.jsonl": _SC,
    "storycloze/2016_test.jsonl": _SC,
    "wsc273/test.jsonl": {"text": _S, "pronoun": _S, "pronoun_loc": int, "options": list, "label": int},
    "wikitext2/test_document_level.jsonl": {"page": _S},
}



def _arc_key(row: dict, key: str) -> bool:
    """`key` is one of the row's choice labels, and every label has its text (doc_to_target `label.index(key)`)."""
    choices = row["choices"]
    labels, texts = choices.get("label"), choices.get("text")
    return isinstance(labels, list) and isinstance(texts, list) and len(labels) == len(texts) and key in labels


# Each task file's gold answer is one of its row's choices (as its lm-eval doc_to_target reads it): lm-eval scores
# an index past the choices wrong with only a warning (piqa label 2), and a key not among them is a ValueError.
_BINARY = ("piqa/validation.jsonl", "boolq/validation.jsonl")
FILE_ANSWERS: dict[str, Callable[[dict], bool]] = {
    "hellaswag/validation.jsonl.gz": lambda r: r["label"] in [str(i) for i in range(len(r["endings"]))],
    "winogrande/validation.jsonl": lambda r: r["answer"] in ("1", "2"),
    "arc_easy/test.jsonl": lambda r: _arc_key(r, r["answerKey"]),
    "arc_challenge/test.jsonl": lambda r: _arc_key(r, r["answerKey"]),
    "openbookqa/test.jsonl": lambda r: _arc_key(r, r["answerKey"].lstrip()),
    **dict.fromkeys(_BINARY, lambda r: r["label"] in (0, 1)),
    **dict.fromkeys(("storycloze/2016_validation.jsonl", "storycloze/2016_test.jsonl"),
                    lambda r: r["answer_right_ending"] in (1, 2)),
    "wsc273/test.jsonl": lambda r: r["label"] in (0, 1) and len(r["options"]) == 2,
}

# lm-eval's stderr: bootstrap_iters=0 gives none ("N/A"); with > 0 a mean metric (acc, acc_norm) gets the
# closed form sample_stddev / sqrt(n) (lm_eval.api.metrics.mean_stderr, no resampling), and only metrics on
# lm-eval's bootstrappable list (perplexity, bleu, ...) are resampled this many times.
STDERR_ITERS = 1000


def metric_key(task: str, num_fewshot: int, metric: str) -> str:
    return f"lm_eval/{task}/{num_fewshot}shot/{metric}"


def _offline() -> None:
    """No hub: local JSON files only (set before lm-eval / datasets are imported)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def lm_eval_tasks_dir() -> Path:
    _offline()
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def task_config(name: str, data_dir: Path) -> dict:
    """The generated lm-eval config of one task: include the installed YAML, point it at local files."""
    spec = TASKS[name]
    files = {split: str(data_file(data_dir, rel)) for split, rel in spec.data_files.items()}
    split_keys = {"train": "training_split", "validation": "validation_split", "test": "test_split"}
    cfg = {
        "include": str(lm_eval_tasks_dir() / spec.yaml),
        "task": spec.lm_eval_task,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files, "cache_dir": _datasets_cache(files)},
    }
    cfg.update({key: (split if split in files else None) for split, key in split_keys.items()})
    if set(files) == {"test"}:
        # Few-shot examples then come from the test split itself, and lm-eval drops a document from its own
        # examples only when fewshot_split == test_split: without naming it, a document (answer included)
        # could be its own example. (A validation-only task passes lm-eval's check as None == None.)
        cfg["fewshot_split"] = "test"
    return cfg


def _datasets_cache(files: dict[str, str]) -> str:
    """datasets' cache folder for these files, named by their bytes: datasets keys its cache of a local file
    by path and mtime only, so a file changed with its mtime kept (cp -p, rsync -t, an archive of fixed mtimes)
    was scored as its old content. Read uncached (`file_digest` keys on size and mtime too); the files are small."""
    import hashlib

    import datasets.config

    digest = hashlib.sha256("".join(file_sha256(Path(f)) for f in files.values()).encode()).hexdigest()[:16]
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "ptq-bench" / digest)


def _clear_datasets_caches(names: list[str], data_dir: Path, exc: Exception) -> None:
    """A task's datasets cache (arrow files datasets wrote from the data files) that cannot be read: a zero-byte or
    cut arrow file was a pyarrow traceback mid-run. Removed, so that loading again rebuilds it from the data files
    (which `validate` checked); a second failure is raised as it is."""
    import shutil

    from ptq_bench.console import log

    for name in names:
        folder = Path(task_config(name, data_dir)["dataset_kwargs"]["cache_dir"])
        if folder.is_dir():
            log(f"cache: datasets cache {folder} could not be read ({type(exc).__name__}: {str(exc)[:80]}); rebuilding it")
            shutil.rmtree(folder)


def write_task_configs(names: list[str], data_dir: Path, out_dir: Path) -> list[Path]:
    """Write the generated YAMLs (usable with `lm_eval --include_path out_dir --tasks ...` too)."""
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = out_dir / f"ptq_bench_{name}.yaml"
        path.write_text(yaml.safe_dump(task_config(name, data_dir), sort_keys=False))
        paths.append(path)
    return paths


def _freeze_requests(task: Any) -> None:
    """Make later `build_all_requests` calls (one per evaluate) reuse the instances built once."""

    def reuse(**_kwargs) -> None:
        for inst in task.instances:
            inst.resps = []
            inst.filtered_resps = {}

    task.build_all_requests = reuse


class TaskSuite:
    """lm-eval tasks on local data, built once and evaluated for many models."""

    def __init__(
        self,
        tasks: list[str],
        data_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        limit: int | None = None,
        num_fewshot: int = 0,
        backend: str = "fast",
        batch_size: int = 16,
        fast_mode: str = "auto",
    ) -> None:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise DataError(f"unknown task(s) {unknown} (known: {', '.join(TASKS)})")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
        self.names = list(dict.fromkeys(tasks))
        self.data_dir = Path(data_dir)
        self.tokenizer = tokenizer
        self.limit, self.num_fewshot, self.backend, self.batch_size = limit, num_fewshot, backend, batch_size
        self.fast_mode = fast_mode  # FastLM path: "auto" (float model: shared, else hflm), or one of fast_lm.MODES
        from ptq_bench.eval.fast_lm import MODES

        if fast_mode not in MODES:
            raise ValueError(f"unknown fast_mode '{fast_mode}' (known: {', '.join(MODES)})")
        compile_templates_once()
        self._tasks = self._load_tasks()  # our name -> lm-eval Task, requests built
        self.encoder = None
        if backend == "fast":
            from ptq_bench.eval.encoder import RequestEncoder

            self.encoder = RequestEncoder(tokenizer)
            self.encoder.encode_instances([i for t in self._tasks.values() for i in t.instances])
        self.last_responses: dict[str, list] = {}  # task -> per-request responses of the last evaluate
        self.last_seconds: float = 0.0
        self.last_path: str = backend  # backend (and FastLM path) of the last evaluate

    def _load_tasks(self) -> dict:
        _offline()
        from lm_eval.tasks import TaskManager

        with tempfile.TemporaryDirectory(prefix="ptq_bench_tasks_") as tmp:
            write_task_configs(self.names, self.data_dir, Path(tmp))
            manager = TaskManager(include_path=tmp, include_defaults=False)
            try:
                loaded = manager.load([TASKS[n].lm_eval_task for n in self.names])["tasks"]
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                _clear_datasets_caches(self.names, self.data_dir, exc)
                loaded = manager.load([TASKS[n].lm_eval_task for n in self.names])["tasks"]
        tasks = {}
        for name in self.names:
            task = loaded[TASKS[name].lm_eval_task]
            task.set_config(key="num_fewshot", value=self.num_fewshot)
            task.set_fewshot_seed(seed=1234)  # lm-eval's simple_evaluate default
            task.build_all_requests(limit=self.limit, rank=0, world_size=1)
            _freeze_requests(task)
            tasks[name] = task
        return tasks

    @classmethod
    def of(cls, spec: Any, data_dir: Path, tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> TaskSuite:
        """The suite of a recipe's `eval` section (`recipe.EvalSpec`); `overrides` replace its keys (limit=...)."""
        keys = {"limit": spec.limit, "num_fewshot": spec.num_fewshot, "backend": spec.backend,
                "batch_size": spec.batch_size, **overrides}
        return cls(spec.tasks, data_dir, tokenizer, **keys)

    @property
    def n_requests(self) -> int:
        return sum(len(t.instances) for t in self._tasks.values())

    def tokenized(self) -> dict[str, list[tuple[tuple[str, Any], list[int], list[int]]]]:
        """Per task, its requests as ((task, doc_id), context tokens, continuation tokens), tokenized as HFLM
        tokenizes them (the request shape `eval.work` counts)."""
        from ptq_bench.eval.encoder import RequestEncoder

        encoder = self.encoder or RequestEncoder(self.tokenizer)
        out = {}
        for name, task in self._tasks.items():
            pairs = encoder.pairs([inst.args for inst in task.instances])
            out[name] = [((name, inst.doc_id), ctx, cont) for inst, (ctx, cont) in zip(task.instances, pairs)]
        return out

    def provenance(self) -> dict:
        import lm_eval

        return {
            "lm_eval_version": lm_eval.__version__,
            "task_versions": {n: t.VERSION if hasattr(t, "VERSION") else t.config.metadata.get("version")
                              for n, t in self._tasks.items()},
            "n_docs": {n: len({i.doc_id for i in t.instances}) for n, t in self._tasks.items()},
            "num_fewshot": self.num_fewshot,
            "limit": self.limit,
            "backend": self.backend,
        }  # not the FastLM path: it is a cell's (each row's `protocol.path`), and the last cell's misnamed the run

    def make_lm(self, model: torch.nn.Module, progress: bool = True) -> LM:
        if self.backend == "hflm":
            from lm_eval.models.huggingface import HFLM

            return HFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=self.batch_size)
        from ptq_bench.eval.fast_lm import FastLM

        return FastLM(model, self.tokenizer, batch_size=self.batch_size, encoder=self.encoder, progress=progress,
                      mode=self.fast_mode)

    def evaluate(self, model: torch.nn.Module, progress: bool = True,
                 only: tuple[str, ...] | None = None) -> dict[str, float]:
        """Run `model` on every task (or those in `only`); lm-eval's own filters, process_results and aggregation."""
        from lm_eval.evaluator import evaluate

        names = [n for n in self.names if only is None or n in only]
        lm = self.make_lm(model, progress=progress)
        task_dict = {"tasks": {TASKS[n].lm_eval_task: self._tasks[n] for n in names}, "groups": {}}
        start = time.perf_counter()
        out = evaluate(lm, task_dict, limit=self.limit, bootstrap_iters=STDERR_ITERS, log_samples=False)
        self.last_seconds = time.perf_counter() - start
        self.last_path = self.backend if self.backend == "hflm" else f"fast:{lm.mode}"
        self.last_responses = {n: [inst.resps[0] for inst in self._tasks[n].instances] for n in names}
        metrics = {}
        for name in names:
            row = out["results"][TASKS[name].lm_eval_task]
            undefined = not _finite(self._tasks[name].instances)  # lm-eval's argmax over NaN picks choice 0
            for metric in TASKS[name].metrics:
                value = math.nan if undefined else float(row[f"{metric},none"])
                metrics[metric_key(name, self.num_fewshot, metric)] = value
                stderr = row.get(f"{metric}_stderr,none")  # "N/A" when lm-eval has none (a single document)
                if isinstance(stderr, (int, float)) and not undefined:
                    metrics[metric_key(name, self.num_fewshot, f"{metric}_stderr")] = float(stderr)
        return metrics


def _finite(instances: list[Any]) -> bool:
    """No log-likelihood of a task's responses ((ll, is_greedy) or a rolling float) is NaN, and no document's
    choices are all -inf: a model with NaN logits (diverged, or an overflowing quantization), or float16 / bf16
    log-likelihoods summed past the dtype's range, has no accuracy, only lm-eval's pick of choice 0 (a -inf
    log-likelihood beside a finite one still orders the choices)."""
    best: dict[Any, float] = {}
    for inst in instances:
        r = inst.resps[0]
        ll = float(r[0] if isinstance(r, (tuple, list)) else r)
        if math.isnan(ll):
            return False
        if isinstance(r, (tuple, list)):
            best[inst.doc_id] = max(best.get(inst.doc_id, -math.inf), ll)
    return -math.inf not in best.values()
