"""HFLM's tokenization of lm-eval requests without a model (`RequestEncoder`), shared by FastLM and the
task suite that outlives each model."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from lm_eval.api.model import TemplateLM
from lm_eval.models.huggingface import HFLM

from ptq_bench.errors import PtqBenchError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class RequestEncoder:
    """HFLM's tokenization of requests, without a model; results cached by request string.

    The methods are lm-eval's own functions (`HFLM.tok_encode`, `TemplateLM._encode_pair`,
    `TemplateLM.loglikelihood` for the empty-context rule), bound to this object.
    """

    backend = "causal"
    tok_encode = HFLM.tok_encode
    _encode_pair = TemplateLM._encode_pair
    prefix_token_id = HFLM.prefix_token_id

    def __init__(self, tokenizer: PreTrainedTokenizerBase, add_bos_token: bool | None = None, prefix_token_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token  # HFLM defaults
        self.custom_prefix_token_id = prefix_token_id
        self._pairs: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        self._strings: dict[str, list[int]] = {}

    def _loglikelihood_tokens(self, requests: list, **_kwargs) -> list:
        return requests  # TemplateLM.loglikelihood hands us its encoded requests

    def pairs(self, args: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(context_enc, continuation_enc) per (context, continuation), exactly as HFLM encodes them."""
        missing = [a for a in dict.fromkeys(args) if a not in self._pairs]
        if missing:
            encoded = TemplateLM.loglikelihood(self, [SimpleNamespace(args=a) for a in missing], disable_tqdm=True)
            for a, ctx, cont in encoded:
                self._pairs[a] = (ctx, cont)
        return [self._pairs[a] for a in args]

    def string(self, text: str) -> list[int]:
        """Tokens of a loglikelihood_rolling string (HFLM: self.tok_encode(string))."""
        if text not in self._strings:
            self._strings[text] = self.tok_encode(text)
        return self._strings[text]

    def encode_instances(self, instances: list) -> None:
        """Pre-tokenize lm-eval Instances (done once per TaskSuite)."""
        self.pairs([i.args for i in instances if i.request_type == "loglikelihood"])
        for i in instances:
            if i.request_type == "loglikelihood_rolling":
                self.string(i.args[0])


def check_fits(requests: list, pairs: list[tuple[list[int], list[int]]], max_length: int) -> None:
    """Refuse a request whose continuation alone exceeds the model's context, as HFLM does (an assert in
    `HFLM._loglikelihood_tokens`): no left truncation can score it, and a number for it would be made up."""
    for req, (_ctx, cont) in zip(requests, pairs):
        if len(cont) > max_length:
            raise PtqBenchError(f"{req.task_name} document {req.doc_id}: a continuation of {len(cont)} tokens "
                                f"exceeds the model's max length {max_length} (HFLM refuses it too): evaluate "
                                "this task with a model of a longer context")
