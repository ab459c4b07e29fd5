"""The LLM rows of the offline comparison: 360Brew re-ranking and cold start by imagined histories.

Both wrap a trained three-tower model as a `SequenceScorer`, so `llmrec.eval.run` ranks them with the same
code, split and slices as every other row. They are costly on CPU (one LLM prompt per candidate, one
generation per cold user and slice), so each runs on a seeded user sample whose size the records carry (`n`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from llmrec.config import EvaluateConfig
from llmrec.eval.protocol import Protocol, sample_users, score_slice, tags_parquet
from llmrec.eval.rows import COLDSTART_ROWS, TowerScorer
from llmrec.metrics import topk
from retrieval.base import SequenceScorer


class RerankScorer:
    """360Brew re-ranking: the base scorer's top `top_n` unseen items re-ordered by the LLM's Yes/No log-odds.

    The re-ordered items are lifted above every other item; the rest keep the base order, so the whole
    catalogue is still ranked. Narratives are rendered from the same visible events the evaluator passes.
    """

    def __init__(self, base: SequenceScorer, narratives: Mapping, items: Sequence, backend, top_n: int,
                 config, profiles: Mapping | None = None):
        self.name, self.base, self.narratives, self.items = "three_tower_llm_rerank", base, narratives, items
        self.backend, self.top_n, self.config, self.profiles = backend, top_n, config, profiles

    def score(self, histories: Sequence[np.ndarray], user_ids: Sequence[str]) -> np.ndarray:
        from llmrec.listwise import candidate_items
        from llmrec.rerank import score_candidates

        scores = np.array(self.base.score(histories, user_ids), dtype=np.float64)  # [B, V]
        top = topk(scores, histories, self.top_n)  # [B, n]
        cands = candidate_items(top, self.items)
        llm = score_candidates([self.narratives[u] for u in user_ids], cands, self.backend, self.config,
                               self.profiles)
        for b, row in enumerate(top):
            lift = np.max(scores[b, 1:]) + 1.0
            order = sorted(range(len(cands[b])), key=lambda j: -llm[b][j])  # stable: ties keep retrieval order
            for r, j in enumerate(order):
                scores[b, row[j]] = lift + (len(order) - r)
        return scores.astype(np.float32)


class ColdStartScorer:
    """The user tower on imagined-then-real sequences; several sequences per user (late fusion) are averaged.

    `fused[u]` was built from exactly the visible history the evaluator passes; `score` checks that the real
    events end every fused sequence, so the imagined part can only add items, never reveal hidden ones.
    """

    def __init__(self, name: str, model, fused: Mapping[str, list[np.ndarray]]):
        self.name, self.model, self.fused = name, model, fused

    def score(self, histories: Sequence[np.ndarray], user_ids: Sequence[str]) -> np.ndarray:
        seqs, owner = [], []
        for b, (h, u) in enumerate(zip(histories, user_ids)):
            for s in self.fused.get(u) or [h]:
                if len(h) and not np.array_equal(s[len(s) - len(h):], h):
                    raise ValueError(f"cold-start sequence of user {u} does not end with the visible history")
                seqs.append(s)
                owner.append(b)
        vecs = self.model.encode_users(seqs, [self.model.profiles.get(str(user_ids[b]), {}) for b in owner])  # [S, d]
        users = np.zeros((len(histories), vecs.shape[1]), dtype=np.float32)
        np.add.at(users, np.array(owner), vecs)
        users /= np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)  # [B, d] mean direction
        scores = users @ self.model.item_vectors().T  # [B, V]
        scores[:, 0] = -np.inf
        return scores


def rerank_row(dataset, proto: Protocol, config: EvaluateConfig, base, tags, backend, add, seed) -> dict:
    """Re-rank the fused three-tower's top candidates for a user sample; returns what the note needs."""
    import pyarrow.parquet as pq

    from llmrec.interests import profiles_from_table
    from llmrec.narrative import load_narrative_tokenizer, render_narratives

    view = proto.slices["all"]
    users = sample_users(view.users, config.rerank_users, config.sample_seed)
    sub = view.subset(users)
    narratives = {n.user_id: n for n in render_narratives(sub.events, dataset.items, sub.as_of,
                                                          config.narrative, load_narrative_tokenizer(config.llm.model),
                                                          behaviors=dataset.behavior_vocab, queries=dataset.queries)}
    profiles = None
    if config.llm_tags is not None:
        profiles = {p.user_id: p for p in profiles_from_table(pq.read_table(tags_parquet(config.llm_tags)))}
    base_scorer = TowerScorer("three_tower_heuristic_tags", base.model, float(base.report["beta"]), tags)
    items = [dataset.item_index[i] for i in proto.vocab.ids]
    t0 = time.perf_counter()
    scorer = RerankScorer(base_scorer, narratives, items, backend, config.rerank_top, config.rerank, profiles)
    add("three_tower_llm_rerank", seed, scorer, ["all"], {"all": sub})
    seconds = time.perf_counter() - t0
    return {"n_users": len(users), "top": config.rerank_top, "seconds": round(seconds, 1), "seed": seed,
            "backend": getattr(backend, "name", "?"), "interests_from": config.llm_tags,
            "base_on_same_users": score_slice(base_scorer, sub, proto, config.score_batch_size)}


def imagine_cold_histories(dataset, proto: Protocol, config: EvaluateConfig, backend, cold: Sequence[str]):
    """Imagined histories for a user sample of every cold slice (LLM; generated once per run)."""
    from llmrec.coldstart import Catalogue, ExamplePool, imagine_histories
    from retrieval.encoder import TextEncoder

    encoder = TextEncoder(config.towers.encoder, config.towers.cache_dir, config.towers.encoder_batch_size)

    def encode(texts):
        v = encoder.encode(list(texts))
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    items = list(dataset.item_index.values())
    catalogue = Catalogue(items, encode)
    profiles = {u: dataset.profile(u) for u in dataset.users["user_id"].astype(str)}
    pool = ExamplePool.from_events(proto.split.train, profiles, dataset.item_index, config.coldstart.example_items)
    out, stats = {}, {"n_users": config.coldstart_users}
    for s in cold:
        users = sample_users(proto.slices[s].users, config.coldstart_users, config.sample_seed)
        events = proto.slices[s].events
        histories = {u: dataset.history(u, events) for u in users}
        result, st = imagine_histories([(u, profiles.get(u, {}), histories[u].events) for u in users], backend,
                                       config.coldstart, catalogue, pool, cache_path=slice_cache(config.coldstart_cache, s),
                                       behaviors=dataset.behavior_vocab)
        out[s] = ({h.user_id: h for h in result}, histories)
        stats[s] = {k: v for k, v in st.to_dict().items() if k != "errors"} | {"errors": st.errors[:3]}
    return out, stats


def slice_cache(path: str | None, slice_name: str) -> Path | None:
    """One cache file per cold slice (`cache.json` -> `cache.cold_user_1.json`): a user's cache entry is keyed by the
    history it was imagined from, and each slice shows the same user a different history."""
    return None if path is None else Path(path).with_suffix(f".{slice_name}{Path(path).suffix or '.json'}")


def coldstart_rows(proto: Protocol, config: EvaluateConfig, model, imagined, rows, add, seed,
                   behaviors=None) -> None:
    """coldstart_none / early / late fusion on each cold slice, user tower alone (beta = 1); `behaviors`: the
    dataset's vocabulary (the imagined events' type)."""
    from llmrec.coldstart_fusion import fuse

    for s, (by_user, histories) in imagined.items():
        users = list(histories)
        sub = proto.slices[s].subset(users)
        as_of = sub.as_of
        for row in rows:
            fusion = COLDSTART_ROWS[row]
            fused = {}
            if fusion is not None:
                cfg = config.coldstart.model_copy(update={"fusion": fusion})
                for u in users:
                    seqs = fuse(histories[u], by_user[u], cfg, as_of[u].to_pydatetime(), behaviors) if u in by_user else []
                    fused[u] = [proto.vocab.encode([e.item_id for e in h.events]) for h in seqs]
            add(row, seed, ColdStartScorer(row, model, fused), [s], {s: sub})


def ranker_row(dataset, proto: Protocol, config: EvaluateConfig, row: str, base_for, backend, add,
               seed: int, adapter: str | None) -> dict:
    """The listwise LLM ranker over a retriever's top-K for a user sample: lambda chosen on their validation
    targets (`llmrec.listwise.choose_lambda`), then the test ranking at that lambda; returns the note.

    `base_for(slice_name)` is the retriever as it scores that slice (tags from that slice's events only).
    `adapter` goes with every call (None where `backend` serves config.ranker_adapter merged into the weights).
    The note's cost is per prompt (one per user served): prefill tokens and LLM seconds.
    """
    from llmrec.listwise import ListwiseScorer, choose_lambda, prompt_tokens, rank_candidates
    from llmrec.narrative import load_narrative_tokenizer, render_narratives

    tokenizer = load_narrative_tokenizer(config.llm.model)
    users = sample_users(proto.slices["all"].users, config.ranker_users, config.sample_seed)
    items = [dataset.item_index[i] for i in proto.vocab.ids]

    def texts(view) -> dict[str, str]:
        return {n.user_id: n.text for n in render_narratives(view.events, dataset.items, view.as_of, config.narrative,
                                                              tokenizer, behaviors=dataset.behavior_vocab,
                                                              queries=dataset.queries)}

    has_valid = set(proto.slices["valid"].users)
    valid = proto.slices["valid"].subset([u for u in users if u in has_valid])
    base_valid = np.asarray(base_for("valid").score(valid.histories, valid.users), dtype=np.float64)
    vtexts = texts(valid)
    domain = getattr(dataset, "domain", None)
    if valid.users:  # one untimed prompt first: the engine's first call is slower than the rest
        rank_candidates(base_valid[:1], valid.histories[:1], [vtexts[valid.users[0]]], items, backend,
                        config.listwise, domain, adapter)
    t0 = time.perf_counter()
    cands = rank_candidates(base_valid, valid.histories, [vtexts[u] for u in valid.users], items, backend,
                            config.listwise, domain, adapter)
    seconds = time.perf_counter() - t0
    lam, table = choose_lambda(cands, valid.targets, valid.histories, config.listwise.lambdas, config.k)
    test = proto.slices["all"].subset(users)
    base = base_for("all")
    scorer = ListwiseScorer(row, base, texts(test), items, backend, config.listwise, lam, domain, adapter)
    add(row, seed, scorer, ["all"], {"all": test})
    prompts = len(valid.users) + (len(test.users) if lam != 0.0 else 0)  # lambda 0 needs no LLM call
    seconds += scorer.llm_seconds  # the LLM calls of the test pass, not the retriever's scoring or the metrics
    tokens = prompt_tokens(tokenizer, [vtexts[u] for u in valid.users], cands.top, items, config.listwise, domain)
    return {"n_users": len(users), "lambda": lam, "valid_ndcg_by_lambda": table, "seed": seed,
            "adapter": config.ranker_adapter, "served": config.ranker_adapter and ("per call" if adapter else "merged"),
            "backend": getattr(backend, "name", "?"), "prompts": prompts,
            "seconds_per_prompt": round(seconds / max(prompts, 1), 3),
            "prefill_tokens_per_prompt": round(float(np.mean(tokens)), 1) if tokens else 0.0,
            "base_on_same_users": score_slice(base, test, proto, config.score_batch_size)}
