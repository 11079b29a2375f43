"""GGUF files of other architectures than llama (tests/gguf_writer.py writes them as llama.cpp does):
`inspect_source` names the family transformers loads them as, and `load_source` gives that family's
plain model with the original logits, whichever of transformers' two GGUF loaders reads the file."""

from __future__ import annotations

import pytest
import torch
import yaml
from gguf_writer import ARCHS, gguf_config, gguf_model, write_gguf
from test_sources import TEXT, _tiny_tokenizer

from ptq_bench.cli import main
from ptq_bench.source_load import load_source
from ptq_bench.sources import inspect_source

# transformers 5.25 with gguf 0.19 cannot load a llama-architecture file named "mistral" (gguf-py has no
# "mistral" tensor map): its limit, not ptq-bench's
LOADED = [arch for arch in ARCHS if arch != "mistral"]
CONTEXT = {"gpt2": 1024, "bloom": None, "mamba": None}  # GPT-2: transformers builds n_positions' default


@pytest.fixture(scope="module")
def tok():
    return _tiny_tokenizer()


def _logits(model, tok):
    with torch.inference_mode():
        return model(torch.tensor([tok(TEXT).input_ids])).logits


@pytest.mark.parametrize("arch", LOADED)
def test_a_gguf_of_each_architecture_loads_as_its_family(arch, tok, tmp_path):
    model = gguf_model(arch, len(tok))
    info = inspect_source(str(write_gguf(model, tok, tmp_path / f"{arch}.gguf", arch)))
    assert (info.form, info.model_type, info.kind, info.has_tokenizer) == ("gguf", model.config.model_type, "fp16", True)
    assert info.context_length == CONTEXT.get(arch, 256)
    loaded, loaded_tok, kind = load_source(info)
    assert type(loaded) is type(model) and getattr(loaded.config, "quantization_config", None) is None
    torch.testing.assert_close(_logits(loaded, tok), _logits(model, tok), rtol=0, atol=1e-5)
    assert loaded_tok(TEXT).input_ids == tok(TEXT).input_ids


def test_a_quantized_gguf_is_dequantized_where_transformers_could_keep_it_packed(tok, tmp_path, monkeypatch):
    """transformers' newer GGUF loader (LFM2, Qwen3.5) keeps quantized weights as uint8 blocks in GgufLinear
    wherever it finds a GGUF matmul kernel (fetched from the hub); the rebuilt plain model needs float ones."""
    import transformers.quantizers.quantizer_gguf as quantizer

    class Kernel:  # a published kernel, as on a machine that can fetch one
        def supports(self, ggml_type):
            return True

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    monkeypatch.setattr(quantizer, "get_gguf_kernel", Kernel)
    model = gguf_model("lfm2", len(tok))
    loaded, _, _ = load_source(inspect_source(str(write_gguf(model, tok, tmp_path / "q.gguf", "lfm2", "Q8_0"))))
    assert {p.dtype for p in loaded.state_dict().values()} == {torch.float32}
    torch.testing.assert_close(_logits(loaded, tok), _logits(model, tok), rtol=0, atol=0.05)  # Q8_0's rounding


# the architectures transformers' newer GGUF loader reads, and the model_type its config rebuild names
NEWER_LOADER = {"lfm2": "lfm2", "qwen35": "qwen3_5_text", "qwen35moe": "qwen3_5_moe_text"}


@pytest.mark.parametrize("arch", sorted(NEWER_LOADER))
def test_the_newer_gguf_loaders_architectures_are_named_as_transformers_names_them(arch, tmp_path):
    """A header is enough to name the family (validate reads no tensor); Qwen3.5's GGUF architectures are
    spelt without the model_type's underscores."""
    import gguf
    from transformers.integrations.gguf import GGUF_CONFIG_ARCHS

    assert set(GGUF_CONFIG_ARCHS) <= set(NEWER_LOADER), "transformers reads a new GGUF architecture: map it"
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), arch)
    w.add_context_length(256)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = inspect_source(str(tmp_path / "m.gguf"))
    assert (info.model_type, info.context_length) == (NEWER_LOADER[arch], 256)


@pytest.mark.parametrize("offload", [False, True])
def test_a_gguf_transformers_cannot_load_is_one_line_at_estimate_as_at_run(tok, tmp_path, capsys, data_dir, offload):
    """transformers' GGUF loader reads no head_dim for Qwen3 (it builds the class default, 128), so a
    Qwen3 of head_dim 16 is refused with a RuntimeError: `run` says so in one line, and `estimate` did
    not (a traceback)."""
    from tiny_families import tiny_model

    (tmp_path / "g").mkdir()
    file = write_gguf(tiny_model("qwen3", len(tok)), tok, tmp_path / "g" / "m.gguf", "qwen3")
    recipe = {"name": "e", "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
              "models": {"m": {"source": str(file)}}, "offload": offload, "quantize": [{"method": "absmax", "w_bits": 8}],
              "calibration": {"n_samples": 4, "seq_len": 32}, "eval": {"perplexity": {"seq_len": 32, "max_windows": 4}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    for command in ("run", "estimate"):
        capsys.readouterr()
        assert main([command, str(tmp_path / "r.yaml")]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"ptq-bench: error: models.m.source: cannot load {file} (RuntimeError: "), (command, err)


def test_a_parallel_residual_stablelm_gguf_is_refused_at_validate(tok, tmp_path, capsys):
    """transformers tells a StableLM GGUF's layout by its tensors (no ffn_norm: use_parallel_residual), which
    ptq-bench's registry does not describe; a folder of it was refused at validate, a GGUF only when `run`
    loaded it (after other models' cells). The header reader now lists the tensor names."""
    from transformers import AutoModelForCausalLM

    config = gguf_config("stablelm", len(tok))
    config.use_parallel_residual = True
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(config).float().eval()
    file = write_gguf(model, tok, tmp_path / "p.gguf", "stablelm")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    assert load_gguf_checkpoint(str(file))["config"]["use_parallel_residual"]  # as transformers reads the file
    assert "use_parallel_residual=True is not supported" in inspect_source(str(file)).layout_problem
    recipe = {"name": "p", "output_dir": str(tmp_path / "out"), "models": {"m": {"source": str(file)}},
              "quantize": [{"method": "absmax", "w_bits": 8}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "use_parallel_residual=True is not supported" in err, err


def test_a_llama_gguf_is_read_as_mistral_only_where_transformers_reads_it_so(tok, tmp_path):
    """transformers builds a llama GGUF as Mistral only when general.name is exactly "mistral"; one named
    "Mistral 7B" is a LlamaForCausalLM, and its rows must say llama (ptq-bench said mistral)."""
    import gguf

    file = write_gguf(gguf_model("llama", len(tok)), tok, tmp_path / "m.gguf", "llama", general_name="Mistral 7B Instruct")
    assert gguf.GGUFReader(file).fields["general.name"].contents() == "Mistral 7B Instruct"
    info = inspect_source(str(file))
    assert info.model_type == "llama" == load_source(info)[0].config.model_type
