"""`in_place: true` quantizes the base model itself (float blocks saved and restored after each cell) and
must write the same rows as the default copy per cell; what FloatBlocks cannot restore is an error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_source_pipeline import checkpoint, tokenizer_dir  # noqa: F401  (a fixture)

from ptq_bench.cli import main
from ptq_bench.errors import QuantError
from ptq_bench.results import load_rows

# several quantized cells in a row (SmoothQuant folds into the norms): a cell that saw a half-restored
# model shows it
QUANTIZE = [{"method": "smoothquant", "w_bits": 8, "a_bits": 8}, {"method": "gptq", "w_bits": 3, "group_size": 32},
            {"method": "absmax", "w_bits": 4, "a_bits": 8}]


def _recipe(tmp_path: Path, src: Path, in_place: bool) -> Path:
    r = {"name": "inplace", "output_dir": str(tmp_path / f"out-{in_place}"), "cache_dir": str(tmp_path / "cache"),
         "models": {"m": {"source": str(src)}}, "calibration": {"n_samples": 2, "seq_len": 32},
         "quantize": QUANTIZE, "in_place": in_place,
         "eval": {"perplexity": {"sets": ["wikitext2"], "seq_len": 32, "max_windows": 3}, "tasks": ["piqa"],
                  "limit": 4, "batch_size": 4}}
    path = tmp_path / f"r-{in_place}.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def test_in_place_writes_the_same_rows_as_copies(tmp_path, tokenizer_dir):  # noqa: F811
    src = checkpoint(tmp_path, "llama", tokenizer_dir)
    rows = {}
    for in_place in (False, True):
        assert main(["run", str(_recipe(tmp_path, src, in_place))]) == 0
        rows[in_place] = {(r.method, r.label): r for r in load_rows(tmp_path / f"out-{in_place}", strict=True)}
    assert len(rows[True]) == 4 and rows[True].keys() == rows[False].keys()
    for key, copy_row in rows[False].items():
        assert rows[True][key].metrics == copy_row.metrics, key  # KLD columns included
        assert rows[True][key].cell_id == copy_row.cell_id  # in_place changes no result: not in the digest
    assert not any((tmp_path / "cache" / "in_place").iterdir())  # the float blocks are removed afterwards


def test_restore_refuses_what_it_cannot_restore():
    from transformers import LlamaConfig, LlamaForCausalLM

    from ptq_bench.quant.apply import FloatBlocks

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        backup = FloatBlocks(model, tmp)
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight.mul_(0.5)  # inside a block: restored
        backup.restore(model)
        with torch.no_grad():
            model.model.norm.weight.add_(1.0)  # outside the blocks: not restorable
        with pytest.raises(QuantError, match="beyond what FloatBlocks restores"):
            backup.restore(model)
