"""LlamaRec-style listwise ranking: one prompt per user, the retriever's top candidates labelled A..T.

The LLM reads the user's narrative and the lettered candidates and is asked for the letter of the next item.
No text is generated: one forward pass gives the log-probability of every letter at the answer position
(`backend.score_choices`), and that is each candidate's ranker score. Fusion with the retriever:

    final = log_softmax_topK(retriever scores) + lambda * ranker log-prob      (top-K candidates only)

Both terms are log-probabilities over the same K candidates, so lambda has one meaning whatever the retriever's
score scale; the top-K stay above every other item and the rest keep the retriever's order. lambda = 0
reproduces the retriever's ranking exactly (log-softmax is monotone), and lambda is chosen on validation
(`choose_lambda`). The ranker is LoRA-tuned on the train split with the retriever's own top-K as hard negatives
(`finetune.build_ranker`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from llmrec.config import ListwiseConfig
from llmrec.llm.base import LLMBackend, Messages, encode_prompts
from llmrec.llm.prompts import render_prompt
from llmrec.metrics import ndcg_at_k, target_ranks, topk
from llmrec.rerank import clip_narrative, describe_item
from llmrec.schema import Domain, Item

PROMPT = "rank_listwise"
LETTERS = tuple("ABCDEFGHIJKLMNOPQRST")


def listwise_messages(narrative: str, candidates: Sequence[Item], config: ListwiseConfig,
                      domain: Domain | None = None) -> Messages:
    """The ranking chat for one user: narrative + candidates lettered A.. in the given order."""
    if not 1 <= len(candidates) <= len(LETTERS):
        raise ValueError(f"a listwise prompt takes 1..{len(LETTERS)} candidates, got {len(candidates)}")
    domain = domain or Domain()
    shown = [{"letter": LETTERS[j], "text": describe_item(c)} for j, c in enumerate(candidates)]
    return render_prompt(PROMPT, narrative=clip_narrative(narrative, config.max_narrative_chars),
                         candidates=shown, item=domain.item, user=domain.user)


def score_listwise(narratives: Sequence[str], candidates: Sequence[Sequence[Item]], backend: LLMBackend,
                   config: ListwiseConfig | None = None, domain: Domain | None = None,
                   adapter: str | None = None) -> list[np.ndarray]:
    """Each user's [n_candidates] letter log-probabilities, in candidate order (batched over users)."""
    config = config or ListwiseConfig()
    if len(narratives) != len(candidates):
        raise ValueError(f"{len(narratives)} narratives but {len(candidates)} candidate lists")
    prompts = [listwise_messages(n, c, config, domain) for n, c in zip(narratives, candidates)]
    out: list[np.ndarray] = []
    for start in range(0, len(prompts), config.batch_size):
        batch = prompts[start : start + config.batch_size]
        sizes = [len(c) for c in candidates[start : start + config.batch_size]]
        # One call with all K letters; a user with fewer candidates ignores the extra letters' scores.
        scores = backend.score_choices(batch, list(LETTERS[: max(sizes)]), adapter=adapter)
        out += [np.asarray(s[:n], dtype=np.float64) for s, n in zip(scores, sizes)]
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of [B, K] scores."""
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fuse_topk(base: np.ndarray, top: np.ndarray, ranker: np.ndarray, lam: float) -> np.ndarray:
    """[B, V] scores whose ranking puts the top-K first, ordered by log_softmax(base) + lam * ranker.

    base: [B, V] retriever scores; top: [B, K] item indices (0 = padding, a user with fewer candidates);
    ranker: [B, K] letter log-probs aligned with `top`. Items outside the top-K keep the retriever's order below.
    """
    out = np.array(base, dtype=np.float64)
    valid = top > 0  # [B, K]
    rows = np.arange(len(top))[:, None]
    cand = np.where(valid, out[rows, top], -np.inf)  # [B, K]
    fused = np.where(valid, log_softmax(np.where(valid, cand, -1e30)) + lam * ranker, -np.inf)  # [B, K]
    # Lift the candidates above everything else while keeping their fused order: rank -> lift + (K - rank).
    order = np.argsort(-fused, axis=1, kind="stable")  # [B, K]: ties keep the retriever's order
    lift = np.max(np.where(np.isfinite(out[:, 1:]), out[:, 1:], -np.inf), axis=1, keepdims=True) + 1.0  # [B, 1]
    k = top.shape[1]
    for r in range(k):
        j = order[:, r]
        idx = top[np.arange(len(top)), j]
        ok = valid[np.arange(len(top)), j]
        out[np.arange(len(top))[ok], idx[ok]] = lift[ok, 0] + (k - r)
    return out


@dataclass
class ListwiseCandidates:
    """A batch's retriever scores, top-K candidates and ranker scores, computed once and fused per lambda."""

    base: np.ndarray  # [B, V]
    top: np.ndarray  # [B, K] item indices, 0 = padding
    ranker: np.ndarray  # [B, K] letter log-probs (0 where padded)

    def fused(self, lam: float) -> np.ndarray:
        return fuse_topk(self.base, self.top, self.ranker, lam)


def candidate_items(top: np.ndarray, items: Sequence[Item]) -> list[list[Item]]:
    """[B, K] item indices (0 = padding) -> each user's candidate items, in order."""
    return [[items[i - 1] for i in row if i > 0] for row in top]


def prompt_tokens(tokenizer: Any, narratives: Sequence[str], top: np.ndarray, items: Sequence[Item],
                  config: ListwiseConfig, domain: Domain | None = None) -> list[int]:
    """Each user's ranking prompt length in tokens, chat template included: the prefill the ranker pays."""
    prompts = [listwise_messages(n, c, config, domain) for n, c in zip(narratives, candidate_items(top, items))]
    return [len(ids) for ids in encode_prompts(tokenizer, prompts, sys.maxsize, 0)]


def rank_candidates(base: np.ndarray, histories: Sequence[np.ndarray], narratives: Sequence[str],
                    items: Sequence[Item], backend: LLMBackend, config: ListwiseConfig,
                    domain: Domain | None = None, adapter: str | None = None) -> ListwiseCandidates:
    """Score the retriever's top-K unseen items of each user with the listwise ranker."""
    top = topk(base, histories, config.candidates)  # [B, K]
    scores = score_listwise(narratives, candidate_items(top, items), backend, config, domain, adapter)
    ranker = np.zeros(top.shape, dtype=np.float64)
    for b, s in enumerate(scores):
        ranker[b, : len(s)] = s
    return ListwiseCandidates(np.asarray(base, dtype=np.float64), top, ranker)


def choose_lambda(cands: ListwiseCandidates, targets: np.ndarray, histories: Sequence[np.ndarray],
                  lambdas: Sequence[float], k: int = 10) -> tuple[float, dict[float, float]]:
    """The lambda with the best mean NDCG@k on these (validation) targets; ties go to the smaller lambda."""
    table = {float(lam): ndcg_at_k(target_ranks(cands.fused(lam), targets, histories), k)
             for lam in sorted(lambdas)}
    best = max(table, key=lambda lam: (table[lam], -lam))
    return best, table


class ListwiseScorer:
    """A `retrieval.base.SequenceScorer`: a base retriever re-ranked by the listwise LLM with a fixed lambda."""

    def __init__(self, name: str, base, narratives: Mapping[str, str], items: Sequence[Item],
                 backend: LLMBackend, config: ListwiseConfig, lam: float, domain: Domain | None = None,
                 adapter: str | None = None):
        self.name, self.base, self.narratives, self.items = name, base, narratives, items
        self.backend, self.config, self.lam, self.domain, self.adapter = backend, config, lam, domain, adapter
        self.llm_seconds = 0.0  # wall time in `rank_candidates` (the LLM call), the retriever's scoring left out

    def candidates(self, histories: Sequence[np.ndarray], user_ids: Sequence[str]) -> ListwiseCandidates:
        base = np.asarray(self.base.score(histories, user_ids), dtype=np.float64)
        t0 = time.perf_counter()
        try:
            return rank_candidates(base, histories, [self.narratives[u] for u in user_ids], self.items,
                                   self.backend, self.config, self.domain, self.adapter)
        finally:
            self.llm_seconds += time.perf_counter() - t0

    def score(self, histories: Sequence[np.ndarray], user_ids: Sequence[str]) -> np.ndarray:
        if self.lam == 0.0:  # the retriever's ranking exactly, without an LLM call
            return np.asarray(self.base.score(histories, user_ids), dtype=np.float32)
        return self.candidates(histories, user_ids).fused(self.lam).astype(np.float32)
