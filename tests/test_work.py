"""Request work counted from tokens (`ptq_bench.eval.work`): hand-counted cases and a brute-force check."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ptq_bench.eval.work import exact_work, hflm_positions, model_sizes, tree_nodes, weighted

# doc A: a two-token context shared by two one-token continuations; doc B: a two-token continuation
REQUESTS = [("A", [1, 2], [3]), ("A", [1, 2], [4]), ("B", [1], [5, 6])]


def test_hand_counted_work():
    # inputs: A -> [1, 2] twice, B -> [1, 5]; scored logits: A at prefix (1, 2), B at (1,) and (1, 5)
    assert exact_work(REQUESTS) == (2 + 2, 1 + 2)
    assert exact_work(REQUESTS, one_tree=True) == (3, 3)  # (1,) (1, 2) (1, 5) shared across documents
    assert hflm_positions(REQUESTS) == (2 + 2, 2 + 2)  # A's one-token requests share HFLM's forward
    assert hflm_positions([("A", [1, 2], [3, 4]), ("A", [1, 2], [3, 5])]) == (3, 3)  # one input: one forward
    assert weighted((4, 3), (10, 100)) == 340


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=6), max_size=8))
def test_tree_nodes_are_the_distinct_prefixes(inputs):
    assert tree_nodes(inputs) == len({tuple(s[:i + 1]) for s in inputs for i in range(len(s))})


def test_model_sizes_tied_and_untied():
    from transformers import LlamaConfig, LlamaForCausalLM

    for tied in (True, False):
        cfg = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
        model = LlamaForCausalLM(cfg)
        body, head = model_sizes(model)
        assert head == 100 * 16
        assert body == sum(p.numel() for p in model.model.layers.parameters()) + 16  # + the final norm
