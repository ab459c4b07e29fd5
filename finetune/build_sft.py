"""SFT examples from the events themselves (no teacher model), for the mining task of `llmrec.interests`.

Construction, per TRAIN-split user (`llmrec.data.split` train events only: the validation and test targets are
never read) and per cut fraction f in `FinetuneConfig.cut_fractions`:

1. Cut. The user's train events are in time order e_0..e_{n-1}; k = round(f * n) and the cut time is
   t = time(e_k). *Before* = events with time < t (strictly; same-second ties of e_k count as after),
   *after* = events with time >= t. Cuts with fewer than `min_events_before_cut` events before, or no
   after-event with a positive taste weight, give no example and are counted in `SFTReport.skipped`.
2. Input. The narrative (`llmrec.narrative.render_narratives`, budget `narrative_max_tokens`, by default
   the mining prompt's `MiningConfig.narrative_tokens`) of the before-events only, as of t: the renderer is
   given no after-event at all, and itself reads only events strictly before `as_of`. So no event at or after
   t can enter the input. It is rendered with the dataset's behaviour vocabulary (its declared types and
   weights) and its search queries strictly before t (`cut_queries`), as inference renders it.
3. Interest target (interest-mining task). Every before-event votes for the "modifier + core" tags of its
   item (`llmrec.tags.item_tags` under the dataset's attribute vocabulary, `attrs`: for MovieLens decade +
   genre, genre pair; elsewhere also brand and keyword tags) with its taste weight (`taste_weights`: liked 2,
   watched 1, purchased 2, clicked 0.5, disliked and others 0; a dataset's declared types by their polarity and
   weight). The `n_interests` best-voted combinations that have an
   item visible in the narrative become the interests; their evidence is up to `n_evidence` (default: the
   answer format's `MiningConfig.max_evidence`, 0 by default, then no line is cited) such visible items (best
   weight, then most recent), cited by their narrative line number.
4. Tag target (RecGPT's tag pre-alignment). The first `tag_horizon` after-events vote for their items' tags
   with taste weight x 0.9^position (the sooner, the more it counts); the `n_tags` best, best first, are
   each listed under the interest whose attributes overlap them most among those with room left
   (`MiningConfig.tags_per_interest`; a tag no interest has room for is counted and left out). These tags
   describe what the user really took next, so they are ground truth for tag HR@k.
5. Format. The prompt is `llmrec.interests.interest_messages` (the very prompt used at inference) and the
   answer is compact JSON validated against `interests_wire` (the schema that constrains decoding), so the
   tuned model emits what the parser accepts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from finetune.train_lora import SFTExample
from llmrec.config import FinetuneConfig, MiningConfig, NarrativeConfig
from llmrec.data.behaviors import COMMON_BEHAVIORS, BehaviorVocab
from llmrec.interests import interest_messages, interests_wire, wire_interest
from llmrec.narrative import NarrativeReport, render_narratives
from llmrec.schema import Item, Narrative
from llmrec.tags import item_tags, tag_attributes
from llmrec.vocab import AttributeVocab

# How much an event says about taste; behaviours not listed (e.g. "disliked", a search, a view) say nothing
# positive. The positive common types of llmrec.data.behaviors, on the rating words' scale.
TASTE_WEIGHTS = {"liked": 2.0, "purchased": 2.0, "watched": 1.0, "clicked": 0.5,
                 "purchase": 2.0, "buy": 2.0, "cart": 1.5, "add-to-cart": 1.5, "favorite": 1.5, "favourite": 1.5,
                 "fav": 1.5, "play": 1.0, "played": 1.0, "click": 0.5}
AFTER_DECAY = 0.9  # weight of the j-th after-event is TASTE_WEIGHT * AFTER_DECAY**j


def taste_weights(behaviors: BehaviorVocab | None = None) -> dict[str, float]:
    """Taste weight per behaviour of a dataset (None: the common table `TASTE_WEIGHTS`).

    A type as the common vocabulary defines it keeps its `TASTE_WEIGHTS` entry (so the rating words, and with
    them every MovieLens example, are unchanged). A type the dataset declares itself (a new name, or a common
    one re-declared) says something about taste only when positive, with its declared narrative weight
    (1.0 when none, as a play): a negative type (skip, return, dislike) or a neutral one (view) never votes.
    """
    if behaviors is None:
        return dict(TASTE_WEIGHTS)
    out = {}
    for spec in behaviors.specs:
        if spec.kind != "item":
            continue
        if COMMON_BEHAVIORS.get(spec.name) == spec:
            weight = TASTE_WEIGHTS.get(spec.name, 0.0)
        else:
            weight = (spec.weight or 1.0) if spec.polarity == "positive" else 0.0
        if weight > 0:
            out[spec.name] = weight
    return out


def cut_queries(queries: pd.DataFrame | None, cuts: Sequence["Cut"]) -> pd.DataFrame | None:
    """The search events of each cut's user strictly before its time t, keyed by the cut (the narrative key)."""
    if queries is None or not len(queries) or not cuts:
        return None
    keys = pd.DataFrame({"user_id": [c.user_id for c in cuts], "key": [c.key for c in cuts],
                         "t": pd.to_datetime([c.t for c in cuts], utc=True)})
    q = queries.assign(user_id=queries["user_id"].astype(str)).merge(keys, on="user_id")
    q = q[pd.to_datetime(q["timestamp"], utc=True) < q["t"]]
    return q.assign(user_id=q["key"]).drop(columns=["key", "t"]).reset_index(drop=True)


@dataclass
class SFTReport:
    """What was built and what was skipped, by reason (nothing is dropped silently)."""

    users: int = 0
    cuts: int = 0
    examples: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    narrative: dict[str, Any] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {"users": self.users, "cuts": self.cuts, "examples": dict(self.examples),
                "skipped": dict(self.skipped), "narrative": dict(self.narrative)}


@dataclass(frozen=True)
class Cut:
    """One user's history cut at time t: `before` feeds the input, `after` only the tag target."""

    key: str  # "user#fraction-index": the narrative key (a user may be cut several times)
    user_id: str
    t: pd.Timestamp
    before: pd.DataFrame
    after: pd.DataFrame


def evidence_lines(config: FinetuneConfig, mining: MiningConfig) -> int:
    """Evidence line numbers per target interest: `FinetuneConfig.n_evidence`, else the answer format's
    `MiningConfig.max_evidence` (0: the target cites none, as mining then asks)."""
    return mining.max_evidence if config.n_evidence is None else config.n_evidence


def check_configs(config: FinetuneConfig, mining: MiningConfig) -> None:
    """The SFT targets must fit the wire schemas the mining stage decodes with."""
    if not mining.min_interests <= config.n_interests <= mining.max_interests:
        raise ValueError(f"FinetuneConfig.n_interests={config.n_interests} must lie within MiningConfig "
                         f"[min_interests={mining.min_interests}, max_interests={mining.max_interests}]")
    if evidence_lines(config, mining) > mining.max_evidence:
        raise ValueError(f"FinetuneConfig.n_evidence={config.n_evidence} exceeds MiningConfig.max_evidence="
                         f"{mining.max_evidence}")
    if config.n_tags > mining.max_tags:
        raise ValueError(f"FinetuneConfig.n_tags={config.n_tags} exceeds MiningConfig.max_tags={mining.max_tags}")


def cut_histories(train_events: pd.DataFrame, config: FinetuneConfig, report: SFTReport) -> list[Cut]:
    """Every (user, cut fraction) with enough history before t (step 1 of the module docstring)."""
    cuts = []
    for user_id, ev in train_events.groupby("user_id", sort=True):
        ev = ev.sort_values("timestamp", kind="mergesort").reset_index(drop=True)
        report.users += 1
        seen_t: set[pd.Timestamp] = set()
        for j, f in enumerate(config.cut_fractions):
            k = int(round(f * len(ev)))
            if k >= len(ev):
                report.skip("no_event_after_cut")
                continue
            t = ev["timestamp"].iloc[k]
            if t in seen_t:  # two fractions landing on the same time would duplicate an example
                report.skip("duplicate_cut_time")
                continue
            seen_t.add(t)
            before, after = ev[ev["timestamp"] < t], ev[ev["timestamp"] >= t]
            if len(before) < config.min_events_before_cut:
                report.skip("too_few_events_before_cut")
                continue
            cuts.append(Cut(key=f"{user_id}#{j}", user_id=str(user_id), t=t, before=before, after=after))
    report.cuts = len(cuts)
    return cuts


def interest_target(before: pd.DataFrame, visible: Sequence[str], items: dict[str, Item],
                    config: FinetuneConfig, attrs: AttributeVocab | None = None,
                    taste: dict[str, float] | None = None, n_evidence: int = 0) -> list[dict[str, Any]]:
    """Dominant attribute combinations of the history before t, with up to `n_evidence` evidence line numbers
    (step 3; an interest needs a visible supporting line even when it cites none).

    `visible`: the item of each narrative line, in line order (`Narrative.item_ids`); `taste`: the taste
    weight per behaviour (`taste_weights`; None: `TASTE_WEIGHTS`).
    """
    taste = TASTE_WEIGHTS if taste is None else taste
    votes: dict[str, float] = defaultdict(float)
    weight_of: dict[str, float] = {}
    recency: dict[str, int] = {}
    for pos, row in enumerate(before.itertuples(index=False)):
        w = taste.get(row.behavior, 0.0)
        weight_of[row.item_id], recency[row.item_id] = w, pos
        if w > 0:
            for tag in item_tags(items[row.item_id], attrs):
                votes[tag] += w
    line_of = {item_id: n for n, item_id in enumerate(visible, start=1)}
    out = []
    for tag, _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0])):
        evidence = [i for i in line_of if weight_of.get(i, 0.0) > 0 and tag in item_tags(items[i], attrs)]
        if not evidence:
            continue
        evidence.sort(key=lambda i: (-weight_of[i], -recency[i], i))
        out.append({"n": tag, "e": [line_of[i] for i in evidence[:n_evidence]], "t": []})
        if len(out) == config.n_interests:
            break
    return out


def tag_target(after: pd.DataFrame, interest_names: Sequence[str], items: dict[str, Item],
               config: FinetuneConfig, per_interest: int, attrs: AttributeVocab | None = None,
               taste: dict[str, float] | None = None) -> tuple[list[list[str]], int]:
    """Tags of the items taken right after t, best first, grouped under their closest interest with room
    (step 4); also how many found no room."""
    taste = TASTE_WEIGHTS if taste is None else taste
    votes: dict[str, float] = defaultdict(float)
    for pos, row in enumerate(after.head(config.tag_horizon).itertuples(index=False)):
        w = taste.get(row.behavior, 0.0) * AFTER_DECAY**pos
        if w > 0:
            for tag in item_tags(items[row.item_id], attrs):
                votes[tag] += w
    interest_attrs = [tag_attributes(n, attrs) or frozenset() for n in interest_names]
    groups: list[list[str]] = [[] for _ in interest_names]
    no_room = 0
    for tag, _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[: config.n_tags]:
        named = tag_attributes(tag, attrs) or frozenset()
        open_ = [k for k, g in enumerate(groups) if len(g) < per_interest]
        if not open_:
            no_room += 1
            continue
        overlap = np.array([len(named & interest_attrs[k]) / max(len(named | interest_attrs[k]), 1) for k in open_])
        groups[open_[int(np.argmax(overlap))]].append(tag)
    return groups, no_room


def dump_answer(obj: Any) -> str:
    """Compact JSON: no spaces, since every output token costs decoding time."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class CutExample:
    """One SFT example with the cut and the narrative it came from (self-training re-prompts these cuts)."""

    cut: Cut
    narrative: Narrative
    example: SFTExample


def build_sft_examples(
    train_events: pd.DataFrame,
    items: dict[str, Item],
    items_table: pd.DataFrame,
    config: FinetuneConfig,
    tokenizer: Any,
    mining: MiningConfig | None = None,
    attrs: AttributeVocab | None = None,
    behaviors: BehaviorVocab | None = None,
    queries: pd.DataFrame | None = None,
) -> tuple[list[SFTExample], SFTReport]:
    """Interest and tag SFT examples for every cut of every user in `train_events` (the train split).

    The examples of `build_cut_examples`, without their cuts and narratives.
    """
    built, report = build_cut_examples(train_events, items, items_table, config, tokenizer, mining, attrs,
                                       behaviors, queries)
    return [b.example for b in built], report


def build_cut_examples(
    train_events: pd.DataFrame,
    items: dict[str, Item],
    items_table: pd.DataFrame,
    config: FinetuneConfig,
    tokenizer: Any,
    mining: MiningConfig | None = None,
    attrs: AttributeVocab | None = None,
    behaviors: BehaviorVocab | None = None,
    queries: pd.DataFrame | None = None,
) -> tuple[list[CutExample], SFTReport]:
    """Interest and tag SFT examples for every cut of every user in `train_events` (the train split).

    Args:
        train_events: `Split.train` (or a subset of its users); never pass validation/test events.
        items / items_table: the catalogue as `Dataset.item_index` and `Dataset.items`.
        tokenizer: the LLM's tokenizer (narrative budgets are counted in its tokens).
        attrs: the dataset's attribute vocabulary (`llmrec.vocab.vocabulary_of`; None: MovieLens), which
            gives the tags and the prompt's domain words.
        behaviors: the dataset's behaviour vocabulary (`Dataset.behavior_vocab`): narrative weights of its
            types and the taste weights of the targets (None: the common tables).
        queries: the dataset's search events (`Dataset.queries`); each cut reads only those before its t.
    """
    mining = mining or MiningConfig()
    check_configs(config, mining)
    report = SFTReport()
    cuts = cut_histories(train_events, config, report)
    if not cuts:
        return [], report

    # Step 2: narratives of the before-events only, keyed per cut, as of t.
    before = pd.concat([c.before.assign(user_id=c.key) for c in cuts], ignore_index=True)
    as_of = pd.Series([c.t for c in cuts], index=[c.key for c in cuts])
    narr_report = NarrativeReport()
    budget = config.narrative_max_tokens or mining.narrative_tokens
    narratives = render_narratives(before, items_table, as_of, NarrativeConfig(max_tokens=budget), tokenizer,
                                   narr_report, behaviors=behaviors, queries=cut_queries(queries, cuts))
    report.narrative = narr_report.to_dict()
    by_key = {n.user_id: n for n in narratives}

    wire = interests_wire(mining)
    taste = taste_weights(behaviors)
    examples: list[CutExample] = []
    for cut in cuts:
        narrative = by_key[cut.key]
        interests = interest_target(cut.before, narrative.item_ids, items, config, attrs, taste,
                                    evidence_lines(config, mining))
        if len(interests) < config.n_interests:
            report.skip("too_few_interests_with_visible_evidence")
            continue
        groups, no_room = tag_target(cut.after, [x["n"] for x in interests], items, config, mining.tags_per_interest,
                                     attrs, taste)
        if not any(groups):
            report.skip("no_taste_after_cut")
            continue
        if no_room:  # tags, not examples: the example stays, with the tags that fit
            report.skip("target_tags_without_room", no_room)
        for interest, tags in zip(interests, groups):
            interest["t"] = tags
        # Validate against the decoding schema: a target the parser would reject must never be trained on.
        answer = dump_answer(wire.model_validate([wire_interest(x["n"], x["e"], x["t"], mining)
                                                  for x in interests]).model_dump())
        examples.append(CutExample(cut=cut, narrative=narrative, example=SFTExample(
            user_id=cut.user_id, task="interests", cut_time=cut.t.to_pydatetime(),
            messages=(*interest_messages(narrative.text, mining, attrs), {"role": "assistant", "content": answer}))))
        report.examples["interests"] = report.examples.get("interests", 0) + 1
    return examples, report
