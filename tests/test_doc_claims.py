"""Claims that documentation outside README's tables makes, checked against their sources: a figure a recipe's
comment quotes from a document is in that document."""

from __future__ import annotations

import re
from pathlib import Path

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

