"""FastLM: an lm-eval backend that gives HFLM's numbers for in-memory causal LMs, with less compute.

HFLM scores every (context, continuation) request as its own padded row: the context of a 4-choice
question runs through the model 4 times, the LM head and log-softmax run at every position, and the
requests are tokenized again for every model. FastLM (a subclass of HFLM, so tokenizer handling,
prefix token and max_length are HFLM's):

1. tokenizes with lm-eval's own code (`TemplateLM.loglikelihood` + `HFLM.tok_encode`) once per
   request string, in a `RequestEncoder` that outlives the model (one per TaskSuite);
2. ("shared" mode) groups one document's requests (task, doc_id), runs their longest common token
   prefix once (stage 1, KV cache), then every distinct suffix against that cache (stage 2) — for
   Winogrande/WSC273 (partial scoring) the shared part is the sentence before the blank. The stage-2
   cache is the model's own `DynamicCache`, filled through its layers' `update` with each row's prefix
   left-padded, so sliding-window layers (Mistral, Gemma 2/3, Phi-3) see exactly HFLM's window. A hybrid's
   recurrent or convolution states (Mamba, Gated DeltaNet) may not follow padding: it takes the "aligned"
   path (each stage-1 batch's prefixes cut to its shortest, run unpadded, the cache forked per row). Other
   cache kinds, and `model_traits.NOT_ALIGNED`, take the exact plain path (`TaskSuite.last_path`);
3. computes the LM head (`logits_to_keep`) and log-softmax only at scored positions, deduplicates
   identical rows, and batches rows longest first, cut where padding costs more than another forward
   (`batching.cut_sorted`; at most `max_tokens` tokens per forward).

Requests HFLM would left-truncate (context + continuation > max_length + 1), documents with one
distinct row, and rolling windows go through the plain path: one right-padded row per distinct
input, HFLM's truncation rule. The model is a black box called as ``model(input_ids, ...).logits``.

Numerics. For a float model (only torch / transformers modules, no hooks) a cached prefix is exact
math but not exact floats: |Δ loglik| vs HFLM ~1e-5. Models that round activations turn such 1e-7
differences into whole quantization steps now and then — and so does HFLM itself: on SmolLM2-135M
with Absmax W8A8 (per-token activations), HFLM at batch size 1 against HFLM at batch size 32 moves
single requests by up to 2.5 nats over the nine paper tasks (`benchmarks/eval_speed.py --envelope`,
limit 10), because the CPU kernels' summation order follows the batch's shape. No batching reproduces "HFLM's number" for such a model;
only HFLM's own batching at the same batch size does, bit for bit.

What FastLM calls exact for a rounding model ("token-local"): every rounding decision of the model is
taken from one token's own vector (per-token activation scales, BitNet's per-token absmax and
RMSNorm), so a token's value is a function of it and the earlier tokens only, as in a float model,
and computing a shared prefix once is the same computation. The floats may differ as they differ
between HFLM's batch sizes; the benchmark prints both spreads side by side, and the accuracies. In
float64, where summation order no longer moves a rounding step, the shared path equals HFLM to
~1e-14 with identical accuracies (SmolLM2 W8A8, W4A4, BitNet; `test_token_local_sharing_is_exact_in_float64`).
Modules and hooks declare it (`token_local = True`: `quant.linears.ActQuant` per token,
`models.bitlinear.BitLinear` / `RMSNorm`); per-tensor activation scales mix a row with its batch mates
(`token_local` False), so no regrouping is allowed there. The path ("mode") is chosen per model:

* "shared" (auto for float and token-local models): prefix cache + plain path ("aligned" for hybrids);
* "hflm" (auto for any other model: per-tensor activation scales, transformers' quantized layers, a
  hook or module that declares nothing): HFLM's own batching (`HFLM._loglikelihood_tokens`, same
  batch_size) on the cached tokens — HFLM's numbers bit for bit, the gain is only tokenizing once;
* "plain" (opt-in): no prefix cache; one row per distinct input, batched by tokens.

"shared" and "plain" are refused for a model that declares `token_local = False` anywhere.
"""

from __future__ import annotations

import copy
import inspect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ptq_bench.console import bar_disable
from ptq_bench.eval.batching import batching_for, cut_sorted
from ptq_bench.eval.encoder import RequestEncoder, check_fits
from ptq_bench.eval.model_traits import (
    aligned_cache,
    mixes_tokens,
    positions_from_cache,
    shareable_cache,
    token_local_model,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MODES = ("auto", "shared", "aligned", "plain", "hflm")


@dataclass
class _Pick:
    """One request scored on one row: the last len(cont) logits of the row's real tokens."""

    req: int  # index into the request list
    row: int  # index of the row (distinct input sequence) in its group / batch
    cont: list[int]


@dataclass
class _Group:
    """Rows sharing a prefix: stage 1 runs `prefix`, stage 2 runs each row after it."""

    prefix: list[int]
    rows: list[list[int]]
    picks: list[_Pick]


def _stack_kv(batches: list[list[Any]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys/values of every stage-1 batch in one tensor (documents in batch order),
    right-padded with zeros to the widest batch: one gather per layer then serves any stage-2 batch.
    Each layer's batch tensors are dropped from `batches` once stacked (one layer's copy at a time)."""
    width = max(layers[0][0].shape[2] for layers in batches)

    def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([F.pad(t, (0, 0, 0, width - t.shape[2])) for t in tensors])

    stacked = []
    for li in range(len(batches[0])):
        stacked.append((stack([b[li][0] for b in batches]), stack([b[li][1] for b in batches])))
        for b in batches:
            b[li] = None
    return stacked


def _batch_picks(groups: list[_Group], batch: list[tuple[int, int]]) -> list[_Pick]:
    """The picks of a stage-2 batch of (group, row) pairs, each on its row's place in the batch."""
    slot = {row: j for j, row in enumerate(batch)}
    return [_Pick(p.req, slot[gi, r], p.cont) for gi, r in batch for p in groups[gi].picks if p.row == r]


def _right_pad(seqs: list[list[int]], pad: int = 0) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [pad] * (width - len(s)) for s in seqs], dtype=torch.long)


def _forward_kwarg(model: torch.nn.Module, *names: str) -> str | None:
    params = inspect.signature(model.forward).parameters
    return next((n for n in names if n in params), None)


class FastLM(HFLM):
    """HFLM with pre-tokenized, prefix-shared, head-trimmed scoring; see the module docstring."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, batch_size: int = 16, encoder: RequestEncoder | None = None,
                 progress: bool = True, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown FastLM mode '{mode}' (known: {', '.join(MODES)})")
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        self.encoder = encoder or RequestEncoder(tokenizer)
        self.progress = progress
        cut = batching_for(self.device.type)
        self.max_tokens = cut.max_tokens or batch_size * self.max_length
        self.overhead = cut.overhead
        self.rows = cut.rows  # rows per forward and documents per window, in batch_size units
        self._cache_arg = _forward_kwarg(model, "cache", "past_key_values")
        self._keep_arg = _forward_kwarg(model, "logits_to_keep", "num_logits_to_keep")
        if mode == "auto":
            mode = "shared" if token_local_model(model) else "hflm"  # float models are token-local too
        elif mode in ("shared", "aligned", "plain") and mixes_tokens(model):
            raise ValueError(f"FastLM mode '{mode}' regroups rows, but this model rounds across tokens "
                             "(per-tensor activation scales): only mode 'hflm' reproduces HFLM's batches")
        if mode == "shared" and self._cache_arg is not None and not shareable_cache(model) and aligned_cache(model):
            mode = "aligned"  # recurrent / convolution states: prefixes of one length per forward, caches forked
        if mode in ("shared", "aligned") and (self._cache_arg is None or positions_from_cache(model, self.max_length)
                                              or not (shareable_cache(model) or aligned_cache(model))):
            mode = "plain"  # no KV cache, one FastLM cannot fill exactly, or positions read from its length
        self.mode = mode  # the path every request of this model takes
        self.n_forward = 0  # forward passes of the last call, for benchmarks

    # ---- lm-eval entry points -------------------------------------------------------------
    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        quiet = disable_tqdm or not self.progress
        pairs = self.encoder.pairs([r.args for r in requests])
        check_fits(requests, pairs, self.max_length)
        if self.mode == "hflm":
            return HFLM._loglikelihood_tokens(self, [(r.args, *p) for r, p in zip(requests, pairs)], disable_tqdm=quiet)
        limit = self.max_length + 1
        docs: dict[tuple, list[int]] = defaultdict(list)
        plain: list[tuple[int, list[int], list[int]]] = []  # (request, input, continuation)
        for i, (req, (ctx, cont)) in enumerate(zip(requests, pairs)):
            if len(ctx) + len(cont) > limit:  # HFLM's left truncation
                plain.append((i, (ctx + cont)[-limit:][:-1], cont))
            else:
                key = (req.task_name, req.doc_id) if req.doc_id is not None else ("", -1 - i)
                docs[key].append(i)
        shared = []
        for idx in docs.values():
            group = self._share(idx, pairs) if self.mode in ("shared", "aligned") else None
            if group is None:
                plain.extend((i, pairs[i][0] + pairs[i][1][:-1], pairs[i][1]) for i in idx)
            else:
                shared.append(group)
        return self._run(len(requests), shared, plain, quiet)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        if self.mode == "hflm":
            return HFLM.loglikelihood_rolling(self, requests, disable_tqdm=disable_tqdm or not self.progress)
        plain, owner = [], []
        for r, req in enumerate(requests):
            tokens = self.encoder.string(req.args[0])
            windows = get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1)
            for ctx, cont in map(make_disjoint_window, windows):
                plain.append((len(owner), (ctx + cont)[-(self.max_length + 1):][:-1], cont))
                owner.append(r)
        scores = self._run(len(owner), [], plain, disable_tqdm or not self.progress)
        totals = [0.0] * len(requests)
        for r, (ll, _) in zip(owner, scores):  # python-float sum in window order, as HFLM
            totals[r] += ll
        return totals

    # ---- grouping ---------------------------------------------------------------------------
    def _share(self, idx: list[int], pairs: list) -> _Group | None:
        """The group of one document's requests, or None when sharing saves nothing."""
        inputs = [pairs[i][0] + pairs[i][1][:-1] for i in idx]
        if len({tuple(s) for s in inputs}) < 2:
            return None
        # the prefix must end before the first scored position of every request: <= len(ctx) - 1
        cap = min(len(pairs[i][0]) for i in idx) - 1
        first = inputs[0]
        n = 0
        while n < cap and all(s[n] == first[n] for s in inputs):
            n += 1
        if n == 0:
            return None
        rows: dict[tuple, int] = {}
        picks = []
        for i, s in zip(idx, inputs):
            row = rows.setdefault(tuple(s[n:]), len(rows))
            picks.append(_Pick(i, row, pairs[i][1]))
        return _Group(first[:n], [list(r) for r in rows], picks)

    # ---- scoring ----------------------------------------------------------------------------
    def _run(self, n_requests: int, shared: list[_Group], plain: list, quiet: bool) -> list[tuple[float, bool]]:
        results: list = [None] * n_requests
        self.n_forward = 0
        bar = tqdm(total=n_requests, desc=f"FastLM ({self.mode})", unit="req", disable=bar_disable(not quiet))
        rows: dict[tuple, int] = {}  # plain rows: deduplicated, longest first (as HFLM sorts)
        picks = [_Pick(i, rows.setdefault(tuple(s), len(rows)), cont) for i, s, cont in plain]
        row_list = [list(r) for r in rows]
        by_row: dict[int, list[_Pick]] = defaultdict(list)
        for p in picks:
            by_row[p.row].append(p)
        order = sorted(range(len(row_list)), key=lambda r: -len(row_list[r]))
        for batch in self._batches(order, lambda r: len(row_list[r])):
            batch_picks = [_Pick(p.req, j, p.cont) for j, r in enumerate(batch) for p in by_row[r]]
            bar.update(self._score_rows([row_list[r] for r in batch], batch_picks, results))
        # shared groups: longest prefix first, in windows of rows * batch_size documents (their caches held at once)
        shared.sort(key=lambda g: -len(g.prefix))
        if self.mode == "aligned":
            bar.update(self._score_aligned(shared, results))
            shared = []
        step = self.rows * self.batch_size
        for start in range(0, len(shared), step):
            bar.update(self._score_window(shared[start:start + step], results))
        bar.close()
        return results

    def _batches(self, items: list, length: Callable[[Any], int]) -> list[list]:
        """Split items (sorted longest first) into forwards of at most max_tokens tokens (rows x longest)
        and rows x batch_size rows, cut where the padded work plus `overhead` per forward is least
        (`batching.cut_sorted`). Short rows (continuations after a cached prefix) go many per forward;
        moderate forwards keep the activations in cache (on CPU faster per token than large ones)."""
        starts = cut_sorted([length(x) for x in items], self.max_tokens, self.rows * self.batch_size, self.overhead)
        return [items[a:b] for a, b in zip(starts, [*starts[1:], len(items)])]

    @torch.inference_mode()
    def _score_window(self, groups: list[_Group], results: list) -> int:
        """Stage 1: the prefixes (sorted, right-padded: causal, so padding never reaches a real position),
        every position's keys/values kept (sliding layers too). Stage 2: all rows of the window, longest
        first, on a fresh cache holding each row's own prefix (see `_prefix_cache`), positions continuing
        after its own prefix."""
        kv = []  # per stage-1 batch: [(keys, values) per layer], each (docs, kv_heads, P, head_dim)
        for batch in self._batches(groups, lambda g: len(g.prefix)):  # groups in order: group i = document i
            cache = self._new_cache(keep_all=True)
            kwargs = {"use_cache": True, self._cache_arg: cache, **({self._keep_arg: 1} if self._keep_arg else {})}
            self.model(_right_pad([g.prefix for g in batch]).to(self.device), **kwargs)  # no logits needed
            self.n_forward += 1
            kv.append([(layer.keys, layer.values) for layer in cache.layers])
        kv = _stack_kv(kv)
        rows = sorted(((gi, r) for gi, g in enumerate(groups) for r in range(len(g.rows))),
                      key=lambda x: -len(groups[x[0]].rows[x[1]]))
        done = 0
        for batch in self._batches(rows, lambda x: len(groups[x[0]].rows[x[1]])):
            plen = torch.tensor([len(groups[gi].prefix) for gi, _ in batch])
            cache = self._prefix_cache(kv, [gi for gi, _ in batch], plen)
            seqs = [groups[gi].rows[r] for gi, r in batch]
            picks = _batch_picks(groups, batch)
            done += self._score_rows(seqs, picks, results, prefix_len=plen, cache=cache)
        return done

    @torch.inference_mode()
    def _score_aligned(self, groups: list[_Group], results: list) -> int:
        """The shared path for recurrent or convolution states (`model_traits.aligned_cache`), which padding
        may not precede: documents (longest prefix first) are cut into stage-1 batches as rows are; a batch's
        prefixes are cut to its shortest, the rest moving to the front of their rows (stage 1 unpadded)."""
        done = 0
        for batch in self._batches(groups, lambda g: len(g.prefix)):
            n = min(len(g.prefix) for g in batch)
            done += self._fork_rows([_Group(g.prefix[:n], [g.prefix[n:] + r for r in g.rows], g.picks)
                                     for g in batch], n, results)
        return done

    def _fork_rows(self, chunk: list[_Group], n: int, results: list) -> int:
        """Stage 1 over `chunk`'s n-token prefixes; then its rows, longest first, each stage-2 batch on the
        stage-1 cache forked row by row (`reorder_cache`, as beam search forks it), positions from n on."""
        cache = self._new_cache()
        kwargs = {"use_cache": True, self._cache_arg: cache, **({self._keep_arg: 1} if self._keep_arg else {})}
        self.model(torch.tensor([g.prefix for g in chunk]).to(self.device), **kwargs)
        self.n_forward += 1
        rows = sorted(((gi, r) for gi, g in enumerate(chunk) for r in range(len(g.rows))),
                      key=lambda x: -len(chunk[x[0]].rows[x[1]]))
        done = 0
        for batch in self._batches(rows, lambda x: len(chunk[x[0]].rows[x[1]])):
            fork = copy.deepcopy(cache)
            fork.reorder_cache(torch.tensor([gi for gi, _ in batch], device=self.device))
            picks = _batch_picks(chunk, batch)
            done += self._score_rows([chunk[gi].rows[r] for gi, r in batch], picks, results,
                                     prefix_len=torch.full((len(batch),), n), cache=fork)
        return done

    def _new_cache(self, keep_all: bool = False) -> Any:
        """The cache the model builds itself (sliding-window layers where the config has them); keep_all:
        sliding layers keep every position, not the last window - 1 (stage 1: re-aligned in stage 2)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if keep_all:
            for layer in cache.layers:
                if layer.is_sliding:
                    layer.activate_past_recording()
        return cache

    def _prefix_cache(self, kv: list, owners: list[int], plen: torch.Tensor) -> Any:
        """A fresh cache holding, per row, the stage-1 keys/values of its owner (a document of the window:
        `_stack_kv`), right-aligned at width p_max = max(plen): slot p_max - plen[j] + t holds prefix position t.

        Left padding keeps the distance between two real tokens the same in cache slots as in positions
        (the suffix follows at slots p_max, p_max + 1, ...), so a sliding window, which transformers counts
        in slots, is counted in tokens. The tensors go in through `layer.update`, so every layer's own
        bookkeeping (a sliding layer's cumulative_length and its trimming to the last window - 1 slots)
        is what a forward over p_max tokens would leave."""
        p_max = int(plen.max())
        dev = kv[0][0].device
        # source position of slot s in row j: s - (p_max - plen[j]); negative -> padding (zeros)
        pos = torch.arange(p_max)[None, :] - (p_max - plen)[:, None]  # (rows, p_max)
        real = (pos >= 0).to(dev)[:, None, :, None]
        idx = pos.clamp(min=0).to(dev)[:, None, :, None]
        src = torch.tensor(owners, device=dev)
        cache = self._new_cache()
        for layer, (k, v) in zip(cache.layers, kv):
            keys = torch.where(real, k[src].gather(2, idx.expand(-1, k.shape[1], -1, k.shape[3])), 0)
            values = torch.where(real, v[src].gather(2, idx.expand(-1, v.shape[1], -1, v.shape[3])), 0)
            layer.update(keys, values)
        return cache

    @torch.inference_mode()
    def _score_rows(self, seqs: list[list[int]], picks: list[_Pick], results: list,
                    prefix_len: torch.Tensor | None = None, cache: Any = None) -> int:
        """One forward of right-padded rows (after their cached prefixes, if any); score the picks."""
        ids = _right_pad(seqs)  # (rows, S)
        width = ids.shape[1]
        lengths = [len(x) for x in seqs]
        kwargs = self._keep(width, lengths, picks)
        if cache is not None:
            p_max = int(prefix_len.max())
            mask = torch.ones(len(seqs), p_max + width, dtype=torch.long)
            mask[:, :p_max] = (torch.arange(p_max)[None, :] >= p_max - prefix_len[:, None]).long()  # left-padded
            pos = prefix_len[:, None] + torch.arange(width)[None, :]
            kwargs.update({"attention_mask": mask.to(self.device), "position_ids": pos.to(self.device),
                           "use_cache": True, self._cache_arg: cache})
        logits = self.model(ids.to(self.device), **kwargs).logits  # (rows, kept positions, vocab)
        self.n_forward += 1
        return self._gather(logits, lengths, picks, results, width=width)

    def _keep(self, width: int, lengths: list[int], picks: list[_Pick]) -> dict:
        """logits_to_keep = the last k positions that hold every scored position (LM head on those only)."""
        if not self._keep_arg:
            return {}
        first = min(lengths[p.row] - len(p.cont) for p in picks)
        return {self._keep_arg: width - first}

    def _gather(self, logits: torch.Tensor, lengths: list[int], picks: list[_Pick], results: list,
                width: int) -> int:
        """log-softmax at the scored positions only -> (sum of continuation log-probs, all greedy), as HFLM.

        `logits` holds the last logits.shape[1] of `width` positions (all of them without logits_to_keep).
        """
        rows, cols, targets, sizes = [], [], [], []
        shift = width - logits.shape[1]
        for p in picks:
            n, end = len(p.cont), lengths[p.row] - shift
            rows.extend([p.row] * n)
            cols.extend(range(end - n, end))
            targets.extend(p.cont)
            sizes.append(n)
        dev = logits.device
        sel = logits[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]  # (tokens, vocab)
        logp = F.log_softmax(sel, dim=-1, dtype=self.softmax_dtype)
        tgt = torch.tensor(targets, device=dev)
        lp = logp.gather(1, tgt[:, None])[:, 0].cpu()  # one copy off the device, not a sync per request
        hit = (logp.argmax(dim=-1) == tgt).cpu()
        for p, seg, ok in zip(picks, torch.split(lp, sizes), torch.split(hit, sizes)):
            results[p.req] = (float(seg.sum()), bool(ok.all()))
        return len(picks)
