"""The part of a run that `estimate` projects before any cell: fitting the recipe's BPE tokenizer (timed
whole, as `run` fits it) and, once per tokenizer, encoding the texts `run` encodes and caches: the whole
training corpus when a model is trained here (whatever `train.tokens`), the perplexity sets, and the
calibration text when a method calibrates. Each text is timed on its first `SHARE` of characters and
projected to all of them, but the perplexity sets (a few MB) are encoded whole, as `run` encodes them:
their id counts give the windows a run evaluates (`estimate_sets`). A cache that already holds them makes
the run skip this part."""

from __future__ import annotations

import time
from typing import Any

from ptq_bench.prepare import train_recipe_tokenizer
from ptq_bench.recipe import Recipe, expand_cells

SHARE = 0.05  # the share of each text's characters encoded to time it


def head(texts: list[str], share: float) -> list[str]:
    """The first `share` of `texts`' characters, in order (the last document cut to fit; at least one)."""
    need, part = max(1, int(share * sum(len(t) for t in texts))), []
    for text in texts:
        part.append(text[:need])
        need -= len(part[-1])
        if need <= 0:
            break
    return part


def encode_s(tokenizer: Any, texts: list[str], share: float = SHARE, special: bool = False) -> tuple[float, float]:
    """(projected seconds to encode all of `texts` (one id list per document, as `run` does), projected ids;
    `special`: with the tokenizer's special tokens, as `run` encodes a perplexity set)."""
    part = head(texts, share)
    t0 = time.perf_counter()
    ids = tokenizer(part, add_special_tokens=special)["input_ids"]
    took = time.perf_counter() - t0
    scale = sum(len(t) for t in texts) / max(1, sum(len(t) for t in part))
    return took * scale, sum(len(i) for i in ids) * scale


class Prep:
    """The projected seconds of the run's preparation, by what it does (see the module docstring)."""

    def __init__(self, recipe: Recipe, data_dir: Any) -> None:
        self.recipe, self.data_dir = recipe, data_dir
        self.seconds: dict[str, float] = {}
        self._bpe: Any = None
        self._counted: list[tuple[Any, dict[str, float]]] = []  # (tokenizer, text -> projected ids)

    def add(self, what: str, seconds: float) -> None:
        self.seconds[what] = self.seconds.get(what, 0.0) + seconds

    def tokenizer(self, own: Any) -> Any:
        """The model's own tokenizer, or the recipe's BPE fitted in memory (once, timed) as `run` fits it."""
        if own is not None:
            return own
        if self._bpe is None:
            t0 = time.perf_counter()
            self._bpe = train_recipe_tokenizer(self.recipe, self.data_dir)
            self.add("tokenizer training", time.perf_counter() - t0)
        return self._bpe

    def trained_vocab(self) -> int | None:
        """The vocabulary of a model trained here: the fitted BPE's size, as `run` builds the model (None
        without a data folder to fit it on)."""
        return None if self.data_dir is None else len(self.tokenizer(None))

    def count(self, own: Any) -> None:
        """Project encoding the texts `run` encodes with this model's tokenizer (the first time it is met)."""
        tok = self.tokenizer(own)
        if self.data_dir is None or any(t is tok for t, _ in self._counted):
            return
        ids: dict[str, float] = {}
        self._counted.append((tok, ids))  # the tokenizer is kept: an id() could be reused after it is freed
        for what, name, texts in self._texts(trained=own is None):
            whole = name in self.recipe.eval.perplexity.sets  # small, and their window counts matter
            seconds, ids[name] = encode_s(tok, texts, 1.0 if whole else SHARE, special=whole)
            self.add(what, seconds)

    def projected_ids(self, own: Any) -> dict[str, float]:
        """Text -> its projected id count under this model's tokenizer: each perplexity set by its name,
        "train", "calibration" (those `run` encodes; empty before `count` or without a data folder)."""
        tok = self.tokenizer(own)
        return next((ids for t, ids in self._counted if t is tok), {})

    def _texts(self, trained: bool) -> list[tuple[str, str, list[str]]]:
        from ptq_bench.data import calibration_documents, perplexity_text, train_documents
        from ptq_bench.quant import get_method

        d, out = self.data_dir, []
        if trained:
            out.append(("tokenizing the training corpus", "train", train_documents(d)))
        out.extend(("tokenizing the perplexity sets", s, [perplexity_text(s, d)]) for s in self.recipe.eval.perplexity.sets)
        if any(c.method != "none" and get_method(c.method).needs_calibration for c in expand_cells(self.recipe)):
            out.append(("tokenizing the calibration text", "calibration", calibration_documents(d)))
        return out

    def total(self) -> float:
        return sum(self.seconds.values())
