"""What a long sweep keeps between its models: nothing of a finished `source:` model.

A source model has its own tokenizer, so its own Evaluator (tokenized requests, the lm-eval tasks, the
KLD references with their windows); kept in `Sweep.evaluators` to the run's end, a sweep over many
checkpoints grew by each one's (~9 MB per model on a 1024-token vocabulary, more with lm-eval's tasks).
"""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import yaml
from test_source_pipeline import checkpoint, tokenizer_dir  # noqa: F401  (a fixture)

from ptq_bench.cli import main
from ptq_bench.results import load_rows


def _recipe(tmp_path: Path, sources: dict[str, Path]) -> Path:
    r = {"name": "mem", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
         "models": {name: {"source": str(src)} for name, src in sources.items()},
         "quantize": [{"method": "absmax", "w_bits": 4}],
         "eval": {"perplexity": {"sets": ["wikitext2"], "seq_len": 32, "max_windows": 2},
                  "tasks": ["piqa"], "limit": 2, "batch_size": 4}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def test_a_source_models_evaluator_goes_with_its_cells(tmp_path, tokenizer_dir, monkeypatch):  # noqa: F811
    import ptq_bench.sweep as sweep
    from ptq_bench.eval.evaluator import Evaluator

    built: list[weakref.ref] = []
    alive: list[int] = []  # Evaluators still alive as each model starts
    real_init, real_run_model = Evaluator.__init__, sweep.run_model

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(weakref.ref(self))

    def run_model(sw, name):
        gc.collect()
        alive.append(sum(ref() is not None for ref in built))
        real_run_model(sw, name)

    monkeypatch.setattr(Evaluator, "__init__", init)
    monkeypatch.setattr(sweep, "run_model", run_model)
    sources = {f"m{i}": checkpoint(tmp_path, "mistral", tokenizer_dir, seed=i) for i in range(3)}
    assert main(["run", str(_recipe(tmp_path, sources))]) == 0
    assert len(built) == 3 and alive == [0, 0, 0]
    assert len(load_rows(tmp_path / "out", strict=True)) == 6
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["eval"]["by_tokenizer"]) == 3  # each model's task provenance is still recorded
