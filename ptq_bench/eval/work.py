"""Model work of loglikelihood requests, counted from their tokens alone (no model run, no padding).

A request is (document key, context tokens, continuation tokens); its input is context + continuation[:-1]
and its scored positions are the last len(continuation) input positions. Two backends' work:

* `exact_work`: what any exact backend that only skips work must still compute: the blocks once per
  node of a prefix tree of each document's inputs, the LM head once per distinct scored position
  (FastLM's shared path approaches it);
* `hflm_positions`: lm-eval's HFLM, one forward per distinct input (blocks and LM head at every input
  position): its logits cache groups requests by context + continuation[:-1], whatever the continuation's
  length, and runs one forward per group.

`weighted` turns (block positions, head positions) into multiply-adds with the model's own sizes.
`benchmarks/eval_speed.py` (its exact ceiling) and `ptq_bench.estimate` (zero-shot projection) count with it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from typing import Any

Request = tuple[Hashable, list[int], list[int]]  # (document key, context tokens, continuation tokens)


def tree_nodes(inputs: Iterable[list[int]]) -> int:
    """Distinct prefixes of `inputs` (the nodes of their prefix tree)."""
    root: dict = {}
    nodes = 0
    for seq in inputs:
        node = root
        for t in seq:
            if t not in node:
                node[t] = {}
                nodes += 1
            node = node[t]
    return nodes


def exact_work(requests: Iterable[Request], one_tree: bool = False) -> tuple[int, int]:
    """(block positions, head positions): one prefix tree per document (one_tree: over every document)."""
    docs: dict[Hashable, list[list[int]]] = defaultdict(list)
    scored: set = set()
    for doc, ctx, cont in requests:
        seq = ctx + cont[:-1]
        key = None if one_tree else doc
        docs[key].append(seq)
        scored.update((key, tuple(seq[:j + 1])) for j in range(len(ctx) - 1, len(seq)))  # a logit = its prefix
    return sum(tree_nodes(v) for v in docs.values()), len(scored)


def hflm_positions(requests: Iterable[Request]) -> tuple[int, int]:
    """(block positions, head positions) of HFLM over the same requests (every input position, both), one
    forward per distinct input across every document, as lm-eval's `Collator` groups them."""
    seen: set[tuple[int, ...]] = set()
    total = 0
    for _doc, ctx, cont in requests:
        seq = tuple(ctx + cont[:-1])
        if seq not in seen:
            total += len(seq)
            seen.add(seq)
    return total, total


def model_sizes(model: Any) -> tuple[int, int]:
    """(parameters a token passes through outside the embedding and LM head, LM head parameters); a multimodal
    wrapper's towers are not passed through (`models.towers`)."""
    from ptq_bench.models.towers import tower_tensor_ids

    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    towers = tower_tensor_ids(model)
    total = sum(p.numel() for p in model.parameters() if id(p) not in towers)
    body = total - embed.numel() - (0 if head is embed else head.numel())
    return body, head.numel()


def weighted(positions: tuple[int, int], sizes: tuple[int, int]) -> int:
    """Multiply-adds of (block positions, head positions) for a model of `sizes` (`model_sizes`)."""
    return positions[0] * sizes[0] + positions[1] * sizes[1]
