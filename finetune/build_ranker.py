"""SFT examples for the listwise ranker (`llmrec.listwise`), from the train split only.

For each train user, the target is their last TRAIN event and the input is everything before it: the narrative
is rendered as of the target's time and the candidates are the retriever's own top K-1 unseen items for that
history (hard negatives) plus the target, at a uniformly random position (seeded). The answer is the target's
letter. Validation and test events never enter: the caller passes `Split.train`, and the retriever must have
been trained on it too (its scores on the train prefix are what serving shows the ranker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from finetune.train_lora import SFTExample
from llmrec.config import ListwiseConfig, NarrativeConfig
from llmrec.data import ItemVocab
from llmrec.data.behaviors import BehaviorVocab
from llmrec.listwise import LETTERS, listwise_messages
from llmrec.metrics import topk
from llmrec.narrative import render_narratives
from llmrec.schema import Domain, Item


@dataclass
class RankerSFTReport:
    users: int = 0
    examples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    target_positions: list[int] = field(default_factory=list)  # letter index of each example's answer

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        pos = np.bincount(self.target_positions, minlength=1).tolist() if self.target_positions else []
        return {"users": self.users, "examples": self.examples, "skipped": dict(self.skipped),
                "target_position_counts": pos}


def last_train_cuts(train_events: pd.DataFrame, min_history: int) -> pd.DataFrame:
    """Per user, the last train event (the target) if at least `min_history` events precede it."""
    ev = train_events.sort_values(["user_id", "timestamp"], kind="stable")
    last = ev.groupby("user_id", sort=True).tail(1)
    counts = ev.groupby("user_id").size()
    return last[last["user_id"].map(counts).to_numpy() > min_history].reset_index(drop=True)


def build_ranker_examples(
    train_events: pd.DataFrame,
    items: dict[str, Item],
    items_table: pd.DataFrame,
    vocab: ItemVocab,
    retriever: Any,
    config: ListwiseConfig,
    tokenizer: Any,
    narrative: NarrativeConfig | None = None,
    domain: Domain | None = None,
    min_history: int = 3,
    behaviors: BehaviorVocab | None = None,
    queries: pd.DataFrame | None = None,
) -> tuple[list[SFTExample], RankerSFTReport]:
    """One listwise example per train user: (narrative before t, K shuffled candidates) -> target's letter.

    retriever: a `retrieval.base.SequenceScorer` trained on `train_events` only. behaviors / queries: the
    dataset's behaviour vocabulary and search events, rendered into the narrative as at inference (only
    queries strictly before the target's time are read).
    """
    report = RankerSFTReport(users=int(train_events["user_id"].nunique()))
    cuts = last_train_cuts(train_events, min_history)
    if cuts.empty:
        return [], report
    before = train_events.merge(cuts[["user_id", "timestamp"]].rename(columns={"timestamp": "t"}), on="user_id")
    before = before[before["timestamp"] < before["t"]].drop(columns="t")
    as_of = pd.Series(cuts["timestamp"].to_numpy(), index=cuts["user_id"].to_numpy())
    if queries is not None and len(queries):  # the renderer reads only queries before as_of; cut here too
        cut = queries["user_id"].astype(str).map(pd.Series(as_of.to_numpy(), index=as_of.index.astype(str)))
        queries = queries[cut.notna().to_numpy() & (queries["timestamp"] < cut).to_numpy()]
    texts = {n.user_id: n.text for n in render_narratives(before, items_table, as_of,
                                                          narrative or NarrativeConfig(max_tokens=384), tokenizer,
                                                          behaviors=behaviors, queries=queries)}
    users = cuts["user_id"].tolist()
    seqs = before.groupby("user_id", sort=False)["item_id"].agg(list)
    hist = [vocab.encode(seqs.get(u, [])) for u in users]
    targets = vocab.encode(cuts["item_id"].tolist())  # [U]
    rng = np.random.default_rng(config.seed)
    examples: list[SFTExample] = []
    for start in range(0, len(users), 256):
        batch = users[start : start + 256]
        scores = np.asarray(retriever.score(hist[start : start + 256], batch), dtype=np.float64)  # [B, V]
        scores[np.arange(len(batch)), targets[start : start + 256]] = -np.inf  # negatives only
        top = topk(scores, hist[start : start + 256], config.candidates - 1)  # [B, K-1]
        for b, user in enumerate(batch):
            negatives = vocab.decode(i for i in top[b] if i > 0)
            if len(negatives) < config.candidates - 1:
                report.skip("too_few_negatives")
                continue
            pos = int(rng.integers(config.candidates))
            cands = negatives.copy()
            cands.insert(pos, vocab.ids[targets[start + b] - 1])
            messages = listwise_messages(texts[user], [items[i] for i in cands], config, domain)
            examples.append(SFTExample(user_id=user, task="ranker", cut_time=None,
                                       messages=(*messages, {"role": "assistant", "content": LETTERS[pos]})))
            report.target_positions.append(pos)
    report.examples = len(examples)
    return examples, report


def target_letters(examples: Sequence[SFTExample]) -> list[str]:
    """The answer letter of each example (for checks of the uniform target position)."""
    return [ex.messages[-1]["content"] for ex in examples]
