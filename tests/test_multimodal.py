"""Multimodal wrappers (transformers' *ForConditionalGeneration, the text decoder under model.language_model):
what a row says of the model and how it is evaluated are its text decoder's, as for the text-only class."""

from __future__ import annotations

import pytest
import torch
from family_checks import build_case, case_config

CASES = ("gemma3", "gemma4", "gemma3n")  # AutoModelForCausalLM builds these whole, towers and all
TEXT_CLASS = {"gemma3": "Gemma3ForCausalLM", "gemma4": "Gemma4ForCausalLM", "gemma3n": "Gemma3nForCausalLM"}


def text_only(case: str, wrapper: torch.nn.Module) -> torch.nn.Module:
    """The text-only class of a wrapper's text config, with the wrapper's text weights."""
    import transformers

    text = getattr(transformers, TEXT_CLASS[case])(case_config(case).get_text_config()).eval()
    text.model.load_state_dict(wrapper.model.language_model.state_dict())
    text.lm_head.load_state_dict(wrapper.lm_head.state_dict())
    return text


@pytest.mark.parametrize("case", CASES)
def test_a_wrappers_size_is_its_text_decoders(case):
    """n_params and weight_bytes of a row (models.build) count the text decoder and the LM head, as the same
    weights in the text-only class: not the vision / audio towers, which no cell quantizes or runs (they were
    counted: 1.51M parameters for the tiny Gemma 4 wrapper's 0.82M text weights, while a Qwen3.5 wrapper, whose text
    decoder AutoModelForCausalLM builds alone, counted none)."""
    from ptq_bench.models.build import parameter_count, weight_bytes

    wrapper = build_case(case)
    text = text_only(case, wrapper)
    assert parameter_count(wrapper) == parameter_count(text) < sum(p.numel() for p in wrapper.parameters())
    assert weight_bytes(wrapper) == weight_bytes(text)


def test_a_tower_of_unknown_modules_leaves_the_fast_path_to_the_text_decoder():
    """FastLM picks its path from the modules a forward runs: a Gemma 3n wrapper whose vision tower is of classes
    it does not know (timm's on the hub; family_checks' stand-in here) takes gemma3n_text's exact plain path (KV
    sharing), with HFLM's scores; the tower's classes sent it to HFLM's own batching ("fast:hflm"), the slow path,
    although a text-only forward never calls the tower."""
    from test_eval_harness import DATA, compare, make_tokenizer

    from ptq_bench.eval.harness import TaskSuite

    if not (DATA / "hellaswag").is_dir():
        pytest.skip(f"no data folder at {DATA}")
    torch.set_num_threads(1)
    tok = make_tokenizer(add_bos=False)
    model = build_case("gemma3n", len(tok))
    suites = {b: TaskSuite(["hellaswag"], DATA, tok, limit=4, backend=b, batch_size=8) for b in ("hflm", "fast")}
    acc = {b: s.evaluate(model, progress=False) for b, s in suites.items()}
    worst, flips = compare(suites["hflm"].last_responses, suites["fast"].last_responses)
    assert suites["fast"].last_path == "fast:plain"
    assert worst <= 1e-4 and flips == 0 and acc["hflm"] == acc["fast"]


@pytest.mark.parametrize("case", [*CASES, "qwen3_5"])
def test_a_wrappers_text_values_missing_from_config_json_are_its_text_configs_defaults(tmp_path, case, monkeypatch):
    """The hub's Gemma 3 config.json (google/gemma-3-4b-it) writes only the text_config values that differ from
    their defaults: no max_position_embeddings. `validate` reads the context length transformers builds the text
    decoder with (the text config class's default, 131072 for Gemma 3); it read the wrapper config class's
    defaults, which hold no text values, so the context was None and no window was checked against it."""
    import json

    from transformers import AutoConfig

    from ptq_bench import source_checks
    from ptq_bench.sources import inspect_source

    monkeypatch.setattr(source_checks, "TOWER_PACKAGES", {})  # Gemma 3n's vision tower needs timm: not this test's subject
    case_config(case).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["text_config"]["max_position_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    built = AutoConfig.from_pretrained(tmp_path).get_text_config().max_position_embeddings
    assert built > 256 and inspect_source(str(tmp_path)).context_length == built


@pytest.mark.parametrize("case", CASES)
def test_a_wrappers_work_sizes_are_its_text_decoders(case):
    """`eval.work.model_sizes` (estimate's zero-shot projection, benchmarks/eval_speed.py) weighs a block position
    by the parameters a token passes through: a wrapper's are its text decoder's, as in the text-only class; its
    towers were counted in (the tiny Gemma 4's body 1.48M for 0.80M)."""
    from ptq_bench.eval.work import model_sizes

    wrapper = build_case(case)
    assert model_sizes(wrapper) == model_sizes(text_only(case, wrapper))
