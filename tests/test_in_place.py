"""`in_place: true` quantizes the base model itself (float blocks saved and restored after each cell), and
`offload: true` keeps a source model's blocks on disk (read from the checkpoint, quantized one block at a
time, evaluated streaming); both must write the same rows as the default copy per cell. What FloatBlocks
cannot restore is an error, and so is `offload` where there is no checkpoint to read blocks from."""

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


def _recipe(tmp_path: Path, src: Path, mode: str) -> Path:
    r = {"name": "inplace", "output_dir": str(tmp_path / f"out-{mode}"), "cache_dir": str(tmp_path / "cache"),
         "models": {"m": {"source": str(src)}}, "calibration": {"n_samples": 2, "seq_len": 32},
         "quantize": QUANTIZE, "in_place": mode == "in_place", "offload": mode == "offload",
         "eval": {"perplexity": {"sets": ["wikitext2"], "seq_len": 32, "max_windows": 3}, "tasks": ["piqa"],
                  "limit": 4, "batch_size": 4}}
    path = tmp_path / f"r-{mode}.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


@pytest.mark.parametrize(("mode", "family"), [("in_place", "llama"), ("offload", "llama"), ("offload", "mixtral")])
def test_in_place_writes_the_same_rows_as_copies(tmp_path, tokenizer_dir, mode, family):  # noqa: F811
    src = checkpoint(tmp_path, family, tokenizer_dir)
    rows = {}
    for m in ("copy", mode):
        assert main(["run", str(_recipe(tmp_path, src, m))]) == 0
        rows[m] = {(r.method, r.label): r for r in load_rows(tmp_path / f"out-{m}", strict=True)}
    assert len(rows[mode]) == 4 and rows[mode].keys() == rows["copy"].keys()
    for key, copy_row in rows["copy"].items():
        assert rows[mode][key].metrics == copy_row.metrics, key  # KLD columns included
        assert rows[mode][key].cell_id == copy_row.cell_id  # neither changes a result: not in the digest
        assert rows[mode][key].quant.get("n_linears") == copy_row.quant.get("n_linears"), key
        assert rows[mode][key].protocol == copy_row.protocol, key  # the same FastLM path
    assert not any((tmp_path / "cache" / "in_place").iterdir())  # the float / cell blocks are removed afterwards


def test_offload_needs_a_source_checkpoint(tmp_path, capsys):
    r = {"name": "off", "output_dir": str(tmp_path / "out"), "models": {"m": {"kind": "fp16"}}, "offload": True,
         "eval": {"perplexity": {"seq_len": 128}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "offload" in err and "source" in err, err


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


@pytest.mark.parametrize(("family", "method", "cfg"), [
    ("llama", "gptq", {"w_bits": 4, "group_size": 16}), ("gpt2", "smoothquant", {"w_bits": 8, "a_bits": 8}),
    ("opt", "absmax", {"w_bits": 4}), ("llama", "quip", {"w_bits": 2}),
])
def test_quantization_never_writes_into_the_loaded_storage(tmp_path, family, method, cfg):
    """`from_pretrained` leaves weights as views of the memory-mapped checkpoint; a write there makes
    private copies of the mapped pages that outlive the tensor, so in-place quantization must give each
    weight, norm and bias new memory instead (quant.linears.replace_weight)."""
    from quant_fixtures import calib_tokens
    from tiny_families import tiny_model
    from transformers import AutoModelForCausalLM

    from ptq_bench.quant import get_method

    tiny_model(family).save_pretrained(tmp_path / "ckpt")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    old = {n: (p.data, p.detach().clone()) for n, p in model.named_parameters()}  # the loaded storage, its values
    m = get_method(method)
    m.apply(model, m.config_cls(**cfg), calib_tokens(4, 32) if m.needs_calibration else None)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, old[n][1])]
    assert changed, "nothing was quantized"
    written = [n for n, (storage, values) in old.items() if not torch.equal(storage, values)]
    assert not written, f"written in place: {written[:3]}"
