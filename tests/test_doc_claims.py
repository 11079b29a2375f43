"""Claims that documentation outside README's tables makes, checked against their sources: a figure a recipe's
comment quotes from a document is in that document, and a method setting's comment names the values its
bound accepts (the comment is where a user reads them: `ptq-bench ls` shows only the defaults)."""

from __future__ import annotations

import re
from pathlib import Path

from ptq_bench.quant import configs

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"\((README|NOTES)\)|\b((?:[\w-]+/)*(?:README|NOTES)\.md)")
FIGURE = re.compile(r"\d+\.\d+")


def _cited(match: re.Match) -> Path:
    return ROOT / (match.group(2) or f"{match.group(1)}.md")


def test_a_figure_a_recipe_comment_quotes_from_a_document_is_in_it():
    wrong = []
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        for n, line in enumerate(recipe.read_text(encoding="utf-8").splitlines(), 1):
            comment = line.partition("#")[2]
            for cite in CITED.finditer(comment):
                text = _cited(cite).read_text(encoding="utf-8")
                wrong += [f"{recipe.name}:{n}: {fig} not in {_cited(cite).name}"
                          for fig in FIGURE.findall(comment) if fig not in text]
    assert not wrong, "\n".join(wrong)


def test_every_string_choice_of_a_method_setting_is_named_in_its_comment():
    source = (ROOT / "ptq_bench/quant/configs.py").read_text(encoding="utf-8")
    wrong = []
    for field, tuple_name, comment in re.findall(r"^\s+(\w+): str = bound\([^)]*choices=(\w+)\)(.*)$", source, re.M):
        wrong += [f"{field}: {choice!r} not in its comment {comment!r}"
                  for choice in getattr(configs, tuple_name) if choice not in comment]
    assert not wrong, "\n".join(wrong)
