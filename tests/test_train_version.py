"""A trained model's cache key names the training code's version: after a change to training, a re-run
retrains (and recomputes the model's cells) instead of reusing a model the old code made; version 1 keeps
the keys models had before the version existed."""

from __future__ import annotations

from pathlib import Path

from ptq_bench.prepare import Context, model_key
from ptq_bench.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
# recipes/smoke.yaml's keys with tokenizer key "tok", computed before TRAIN_VERSION existed
BEFORE = {"fp16": "bee40cca73162a37", "bitnet_b158": "0ac4b02740b3a6a6", "bitnet_b1": "00057a39a17eb8af"}


def _keys() -> dict[str, str]:
    r = load_recipe(ROOT / "recipes" / "smoke.yaml")
    ctx = Context(r, Path("."), Path("."), "cpu", {})
    return {name: model_key(ctx, name, "tok") for name in r.models}


def test_version_one_keeps_the_keys_models_had():
    assert _keys() == BEFORE


def test_a_bumped_training_version_is_a_new_model(monkeypatch):
    import ptq_bench.models.train as train

    monkeypatch.setattr(train, "TRAIN_VERSION", 2, raising=False)
    bumped = _keys()
    assert all(bumped[name] != BEFORE[name] for name in BEFORE), bumped
