"""The product: `Recommender` returns items with explanations, with no LLM call on the request path.

A recommender folder (written by `llmrec.build.build_recommender`, read by `Recommender.load`) holds:

    config.json            RecommenderConfig
    manifest.json          split hash, prompt hashes, package version, stage reports
    dataset/               canonical tables (known users' histories and profiles, the catalogue)
    towers/                three-tower model + FAISS index (retrieval.towers)
    interests.parquet      mined interests and tags per user (llmrec.interests)
    vocab.json             the dataset's attribute vocabulary (llmrec.vocab): tags of users without mined ones
    behaviors.json         the dataset's behaviour vocabulary (llmrec.data.behaviors): which events explanations
                           cite and their verbs ("You bought ..."); a folder without it reads as ratings
    explanations/          (interest, item, evidence ids) -> explanation lookup table (explain.table)
    coldstart.parquet      imagined early histories per profile segment (llmrec.coldstart), optional

Request path (`recommend`): history -> user vector (user tower, item table cached at load) fused with the
user's tag vectors (β from validation) -> FAISS top k (seen items excluded) -> per item the user's best
matching interest (tag tower cosine) -> the explanation's facts (`explain.facts.build_facts`: the item, the
interest if it matches, the user's own earlier items that share attributes with it) -> explanation looked up
by those facts, or a flagged template built from them when the table has none. Users with at most `coldstart.max_events` events get their segment's imagined history prepended (early
fusion); users with no history and no profile get the popularity list.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from explain.explain import template_explanation
from explain.facts import ExplainFacts, build_facts, citable_history
from explain.table import ExplanationTable
from llmrec.errors import RecommendError, UnknownItemError, UnknownUserError  # noqa: F401 (re-exported)
from llmrec.config import RecommenderConfig
from llmrec.data import Dataset, DataError, ItemVocab, load_dataset_dir, user_sequences
from llmrec.data.behaviors import RATING_VOCAB, BehaviorVocab
from llmrec.interests import profiles_from_table
from llmrec.schema import Event, InterestProfile, Item, Recommendation
from llmrec.tags import history_tags
from llmrec.vocab import AttributeVocab, load_vocabulary, save_vocabulary, vocabulary_of
from retrieval.towers import ThreeTowerModel

EVIDENCE_WINDOW = 200  # most recent own items searched for explanation evidence


def set_request_threads(threads: int = 1) -> None:
    """Run each request's torch ops on `threads` intra-op threads (process-wide; call once when serving).

    Concurrency comes from the callers: a request is a few small matmuls, and with torch's default (one
    OpenMP thread per core) every call wakes a thread team per op, so 8 concurrent callers oversubscribe the
    cores (on a busy 2-core host, 2 intra-op threads served 3.5 req/s against 81 with 1).
    """
    if threads < 1:
        raise RecommendError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def profile_segment(profile: Mapping[str, str]) -> str:
    """The cold-start segment of a profile: occupation, gender and age decade (ML-100K fields when present)."""
    age = str(profile.get("age", "")).strip()
    decade = f"{int(age) // 10 * 10}s" if age.isdigit() else "?"
    return "|".join([str(profile.get("occupation", "?")).lower(), str(profile.get("gender", "?")).upper(), decade])


class Recommender:
    """Serve recommendations from a built folder. Thread-safe: requests share read-only state."""

    def __init__(self, config: RecommenderConfig, dataset: Dataset, towers: ThreeTowerModel,
                 profiles: Iterable[InterestProfile] = (), explanations: ExplanationTable | None = None,
                 imagined: Mapping[str, Sequence[str]] | None = None, manifest: Mapping[str, Any] | None = None,
                 attrs: AttributeVocab | None = None, behaviors: BehaviorVocab | None = None):
        self.config, self.dataset, self.towers = config, dataset, towers
        self.attrs = attrs or vocabulary_of(dataset, config.vocab)
        self.behaviors = behaviors or dataset.behavior_vocab
        self.vocab: ItemVocab = towers.vocab
        self.items: dict[str, Item] = dataset.item_index
        self.profiles = {p.user_id: p for p in profiles}
        self.explanations = explanations or ExplanationTable()
        self.imagined = {k: list(v) for k, v in (imagined or {}).items()}
        self.manifest = dict(manifest or {})
        self._sequences = user_sequences(dataset.events, self.vocab)
        self._behaviors = _user_behaviors(dataset.events)  # aligned with _sequences: which events are evidence
        self._lock = threading.Lock()  # guards the tag-vector memo (the text encoder is not thread-safe)
        self._tag_vecs: dict[str, np.ndarray] = {}
        towers.eval()
        with torch.no_grad():
            self._item_table = towers.item_table()  # [N+1, d] raw item-tower outputs, fed to the user tower
            self._item_vecs = F.normalize(self._item_table, dim=-1).numpy().copy()  # = towers.item_vectors()
        self._item_vecs[0] = 0.0  # row 0 = padding
        counts = np.bincount(np.concatenate(list(self._sequences.values())), minlength=self.vocab.size)
        counts[0] = -1
        self._popular = np.argsort(-counts, kind="stable")  # item indices, most popular first
        if towers._index is None:
            towers.build_index()
        # Tag vectors of every text known at load (tag vocabulary, mined tags and interests), in one batch:
        # requests then rarely take the lock to encode a new text, and the first ones are not slower.
        known = list(towers.text_encoder.known())
        known += [t.text for p in self.profiles.values() for t in p.tags]
        known += [i.name for p in self.profiles.values() for i in p.interests]
        self._tag_vectors(known)

    # --- persistence --------------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the recommender folder; `Recommender.load(path)` reverses it exactly."""
        from llmrec.interests import profiles_to_table  # noqa: PLC0415 (writer only)

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.config.to_json(out / "config.json")
        self.dataset.save(out / "dataset")
        self.towers.save_pretrained(out / "towers", manifest=self.manifest)
        pq.write_table(profiles_to_table(list(self.profiles.values())), out / "interests.parquet")
        save_vocabulary(self.attrs, out)
        (out / "behaviors.json").write_text(self.behaviors.model_dump_json(indent=1, exclude_none=True) + "\n")
        self.explanations.save(out / "explanations", self.config.explain)
        imagined = pd.DataFrame({"segment": list(self.imagined), "item_ids": list(self.imagined.values())})
        imagined.to_parquet(out / "coldstart.parquet", index=False)
        (out / "manifest.json").write_text(json.dumps(self.manifest, indent=2, sort_keys=True, default=str) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Recommender":
        """Load a folder written by `save_pretrained` (safetensors, Parquet, JSON, FAISS; nothing unpickled)."""
        root = Path(path)
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"{root}: not a recommender folder (no config.json); build one with `llmrec demo`")
        config = RecommenderConfig.from_json(root / "config.json")
        profiles = profiles_from_table(pq.read_table(root / "interests.parquet"))
        explanations = ExplanationTable.load(root / "explanations") if (root / "explanations").is_dir() else None
        imagined = {}
        if (root / "coldstart.parquet").is_file():
            frame = pd.read_parquet(root / "coldstart.parquet")
            imagined = {r.segment: [str(i) for i in r.item_ids] for r in frame.itertuples(index=False)}
        manifest = json.loads((root / "manifest.json").read_text()) if (root / "manifest.json").is_file() else {}
        dataset = load_dataset_dir(root / "dataset")
        # Folders written before vocabularies existed rebuild it from the dataset (what they were built with).
        attrs = load_vocabulary(root) if (root / "vocab.json").is_file() else None
        # Folders written before behaviour vocabularies: their dataset's, else the rating one they were built for.
        behaviors = (BehaviorVocab.model_validate_json((root / "behaviors.json").read_text())
                     if (root / "behaviors.json").is_file() else dataset.behaviors or RATING_VOCAB)
        return cls(config, dataset, ThreeTowerModel.from_pretrained(root / "towers"), profiles, explanations,
                   imagined, manifest, attrs, behaviors)

    from_pretrained = load

    # --- requests -----------------------------------------------------------------------------------

    def recommend(self, user_id: str | None = None, *, history: Sequence[Event | Mapping | str] | None = None,
                  profile: Mapping[str, str] | None = None, k: int = 10) -> list[Recommendation]:
        """Top-k items for a known user (`user_id`) or a user we have not seen (`history`, `profile`).

        Raises UnknownUserError for an unknown `user_id`, UnknownItemError for history items outside the
        catalogue, RecommendError for a bad `k` or conflicting arguments.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise RecommendError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), len(self.vocab.ids))
        if user_id is not None and history is not None:
            raise RecommendError("pass either user_id (a known user) or history (a new user), not both")
        if user_id is not None:
            user_id = str(user_id)
            if user_id not in self._sequences:
                raise UnknownUserError(f"unknown user_id {user_id!r}; pass history=[...] for a user we have not seen")
            seq, acts = self._sequences[user_id], self._behaviors[user_id]
            profile = self.dataset.profile(user_id) if profile is None else dict(profile)
            mined = self.profiles.get(user_id)
        else:
            seq, acts = self._encode_history(history or []), _history_behaviors(history or [])
            profile = dict(profile or {})
            mined = None
        return self._recommend(seq, profile, mined, k, acts)

    def _encode_history(self, history: Sequence[Event | Mapping | str]) -> np.ndarray:
        ids = []
        for n, ev in enumerate(history):
            if isinstance(ev, Event):
                ids.append(ev.item_id)
            elif isinstance(ev, Mapping) and "item_id" in ev:
                ids.append(str(ev["item_id"]))
            elif isinstance(ev, (str, int)):
                ids.append(str(ev))
            else:
                raise RecommendError(f"history[{n}] must be an Event, a mapping with item_id, or an item id; got {ev!r}")
        unknown = [i for i in ids if i not in self.vocab.index]
        if unknown:
            raise UnknownItemError(f"history names items not in the catalogue: {unknown[:10]}")
        return self.vocab.encode(ids)

    def _recommend(self, seq: np.ndarray, profile: dict[str, str], mined: InterestProfile | None,
                   k: int, acts: Sequence[str | None]) -> list[Recommendation]:
        seen = set(seq.tolist())
        own = self._history_items(seq, acts)  # the user's own events only: imagined ones are never cited as evidence
        source = "user_tower"
        if len(seq) <= self.config.coldstart.max_events:
            imagined = self.imagined.get(profile_segment(profile)) if profile else None
            if imagined:
                seq = np.r_[self.vocab.encode(imagined), seq]  # early fusion: imagined events come first
                source = "cold_start"
            elif len(seq) == 0:
                return self._popular_items(k, seen)
        tags = [t.text for t in mined.tags] if mined else history_tags([self.items[i] for i in self.vocab.decode(seq)],
                                                                        self.config.towers.user_tags, self.attrs)
        interests = [i.name for i in mined.interests] if mined else tags[:5]
        beta = self.towers.beta
        user = self._encode_user(seq, profile)  # [d]
        tag_vecs = self._tag_vectors(tags) if tags else None  # [T, d], looked up once per request
        tag_mean = tag_vecs.mean(axis=0) if tags and beta < 1.0 else np.zeros_like(user)
        query = beta * user + (1.0 - beta) * tag_mean  # exact fusion for mean pooling
        _, idx = self.towers.retrieve(query[None, :].astype(np.float32), k + len(seen))
        chosen = [int(i) for i in idx[0] if i > 0 and int(i) not in seen][:k]
        vecs = self._item_vecs[chosen]  # [k, d]
        s_user, s_tag = vecs @ user, vecs @ tag_mean
        # Per item, the user's tag and interest closest to it in the tag tower's space (one matmul each).
        best_tag = (tag_vecs @ vecs.T).argmax(axis=0) if tags else None
        interest_vecs = self._tag_vectors(interests) if mined else (tag_vecs[:5] if tags else None)  # [I, d]
        best_interest = (interest_vecs @ vecs.T).argmax(axis=0) if interests else None
        return [self._describe(i, float(s_user[n]), float(s_tag[n]), beta,
                               tags[best_tag[n]] if tags else None,
                               interests[best_interest[n]] if interests else None, source, own)
                for n, i in enumerate(chosen)]

    def _encode_user(self, seq: np.ndarray, profile: Mapping[str, str]) -> np.ndarray:
        with torch.inference_mode():  # no autograd bookkeeping at all (cheaper than no_grad per op)
            s, prof = self.towers.sequence_batch([seq], [profile])
            states = self.towers.user_tower(s, self._item_table, prof)  # [1, L, d]
            return F.normalize(states[:, -1], dim=-1)[0].numpy()

    def _tag_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """[T, d] tag-tower vectors, memoised per text (new texts are encoded once, under the lock)."""
        if not texts:
            return np.zeros((0, self._item_vecs.shape[1]), dtype=np.float32)
        missing = [t for t in dict.fromkeys(texts) if t not in self._tag_vecs]
        if missing:
            with self._lock:
                missing = [t for t in missing if t not in self._tag_vecs]
                if missing:
                    self._tag_vecs.update(zip(missing, self.towers.encode_tags(missing)))
        return np.stack([self._tag_vecs[t] for t in texts])

    def _describe(self, index: int, s_user: float, s_tag: float, beta: float, tag: str | None,
                  interest: str | None, source: str, own: tuple[list[Item], dict[str, str]]) -> Recommendation:
        if source == "user_tower" and (1.0 - beta) * s_tag > beta * s_user:
            source = "tag_tower"
        item = self.items[self.vocab.ids[index - 1]]
        facts = self.explanation_facts(item, interest, own)
        explanation = self.explanations.lookup(facts) or template_explanation(facts, self.config.explain)
        return Recommendation(item=item, score=beta * s_user + (1.0 - beta) * s_tag, interest=interest, tag=tag,
                              explanation=explanation.text, explanation_flagged=explanation.flagged, source=source)

    # --- explanation facts (the batch job and the request path build them the same way) -------------

    def _history_items(self, seq: np.ndarray, acts: Sequence[str | None]) -> tuple[list[Item], dict[str, str]]:
        """The user's citable items among their last EVIDENCE_WINDOW events, oldest first, and the behaviour each
        is cited for (`explain.facts.citable_history`): evidence is recent, and this bounds request cost."""
        ids, behavior_of = citable_history(self.vocab.decode(seq[-EVIDENCE_WINDOW:]),
                                           list(acts)[-EVIDENCE_WINDOW:] if len(seq) else [], self.behaviors)
        return [self.items[i] for i in ids], behavior_of

    def explanation_facts(self, item: Item, interest: str | None,
                          history: Sequence[Item] | tuple[list[Item], dict[str, str]]) -> ExplainFacts:
        """What the explanation of `item` may name, given the matched interest and the user's own history (items,
        or `_history_items`' items and the behaviour each is cited for)."""
        items, behavior_of = history if isinstance(history, tuple) else (history, None)
        return build_facts(item, interest, items, self.config.explain.max_evidence, self.dataset.domain, behavior_of)

    def served_facts(self, user_id: str, k: int) -> list[tuple[Recommendation, ExplainFacts]]:
        """A known user's top k with the facts their explanations were looked up by (for the batch job and the
        explanation benchmark); popularity answers, which have no facts, are left out."""
        recs = self.recommend(user_id=user_id, k=k)
        own = self._history_items(self._sequences[str(user_id)], self._behaviors[str(user_id)])
        return [(r, self.explanation_facts(r.item, r.interest, own)) for r in recs if r.source != "popularity"]

    def _popular_items(self, k: int, seen: set[int]) -> list[Recommendation]:
        chosen = [int(i) for i in self._popular if i > 0 and int(i) not in seen][:k]
        return [Recommendation(item=self.items[self.vocab.ids[i - 1]], score=float(-rank), source="popularity",
                               explanation=f"Popular with other {self.dataset.domain.user}s.", explanation_flagged=True)
                for rank, i in enumerate(chosen)]


def _user_behaviors(events: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per user, the behaviour of each event in `user_sequences`' order (events sorted as `Dataset.events`)."""
    users, behaviors = events["user_id"].to_numpy(), events["behavior"].to_numpy()
    if len(users) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    return {users[s]: behaviors[s:e] for s, e in zip(starts, ends)}


def _history_behaviors(history: Sequence[Event | Mapping | str]) -> list[str | None]:
    """A request history's behaviours (None for a bare item id or a mapping without one)."""
    return [ev.behavior if isinstance(ev, Event) else ev.get("behavior") if isinstance(ev, Mapping) else None
            for ev in history]


__all__ = ["Recommender", "RecommendError", "UnknownUserError", "UnknownItemError", "profile_segment", "DataError",
           "set_request_threads"]
