"""Narrative -> InterestProfile: RecGPT's interest mining and tag prediction, in ONE batched LLM call.

RecGPT runs the two tasks as separate calls. On 2 CPU cores prefill and decoding are the whole cost, so
llmrec asks for both in one answer and the narrative is read once:

    [[interest, ["modifier + core" tag, ...]], ...]

Positional arrays instead of keyed objects (the keys cost ~40 of SmolLM2's ~170 output tokens per answer, and
output tokens are the cost of a batch job) and the instructions all in the system message
(`prompts/interests.jinja`), which every user's prompt shares as a cached prefix. Each tag belongs to the
interest it is listed under; a user's ranked tag list takes the interests' tags round-robin (first tag of every
interest, then the second, ...), interests in the model's order.

Evidence. With `MiningConfig.max_evidence` = 0 (the default, answer format 5) the answer cites nothing and the
history lines are not numbered: each interest's evidence is up to `attributed_evidence` narrative items that
carry an attribute it names (`llmrec.eval.grounding.attribute_evidence`), which costs no output tokens (citing 2
line numbers per interest cost ~26% of the answer: 110 vs 81 tokens on ML-100K) and is grounded by construction.
With max_evidence > 0 (format 4) the lines are numbered and the answer cites them per interest,
[[interest, [lines], [tags]], ...], and the grounding rates below measure those citations.

The call goes through `llmrec.llm.structured.generate_validated`: schema-constrained
(`json_schema=Wire.model_json_schema()`) and validated with the same pydantic model anyway, then checked
(`to_profile_parts`); answers that fail are retried ONCE (in one batch, at `retry_temperature`),
and users that fail twice get a flagged fallback (`source="fallback"`) built from their history's most
frequent tags. An answer cut off by the token budget is salvaged by closing the JSON after its last complete
interest, then validated like any other. Counts of all of this are in `MiningStats`.

Grounding (format 4 only): a cited line number names the item of that narrative line (`Narrative.item_ids`);
numbers outside the narrative are dropped and counted ("exists": grounding = kept / cited). "grounded" asks more: the
cited item must carry an attribute the interest or its tags name, or the interest must name its title
(`llmrec.eval.grounding`; needs the catalogue, `items`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from itertools import zip_longest
from typing import Annotated, Any, NamedTuple, Sequence

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, model_validator

from llmrec.config import MiningConfig
from llmrec.data import strip_year
from llmrec.eval.grounding import attribute_evidence, count_grounded, grounding_rates
from llmrec.llm import LLMBackend, Messages
from llmrec.llm.prompts import render_prompt
from llmrec.llm.structured import (  # noqa: F401 (salvage_truncated re-exported)
    GenerationSettings,
    GenerationStats,
    generate_validated,
    repair_truncated,
    salvage_truncated,
)
from llmrec.schema import Interest, InterestProfile, Item, Narrative, Tag
from llmrec.nouns import prompt_nouns
from llmrec.tags import history_tags, item_attributes, item_tags, tag_attributes
from llmrec.vocab import AttributeVocab

PROMPTS = ("interests",)

# --- Wire schema --------------------------------------------------------------------------------------


class WireInterest(NamedTuple):
    """One interest of an answer: name, cited history line numbers, tags (the positions of the wire array)."""

    n: str
    e: list[int]
    t: list[str]


def _legacy_objects(data: Any, evidence: bool) -> Any:
    """Older answer forms as the positional arrays of this wire: the keyed form of format 3,
    {"i": [{"n", "e", "t"}, ...]}, and, on a wire without evidence, [name, lines, tags] triples (format 4). Adapters
    tuned on them still parse on a backend that does not enforce the schema (constrained decoding only emits
    this wire's arrays)."""
    if isinstance(data, dict) and isinstance(data.get("i"), list):
        data = [[x.get("n"), x.get("e", []), x.get("t", [])] if isinstance(x, dict) else x for x in data["i"]]
    if not evidence and isinstance(data, list):
        data = [[x[0], x[2]] if isinstance(x, list) and len(x) == 3 else x for x in data]
    return data


@lru_cache(maxsize=32)
def _wire(min_n: int, max_n: int, max_ev: int, max_tags: int, name_chars: int, tag_chars: int) -> type[RootModel]:
    name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=name_chars)]
    tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=tag_chars)]
    line = Annotated[int, Field(ge=1)]
    tags = Annotated[list[tag], Field(max_length=max_tags)]
    # max_ev = 0: [name, tags], no evidence array at all (not an empty one: its brackets would cost tokens)
    one = tuple[name, Annotated[list[line], Field(max_length=max_ev)], tags] if max_ev else tuple[name, tags]

    class WireProfile(RootModel[Annotated[list[one], Field(min_length=min_n, max_length=max_n)]]):
        model_config = ConfigDict(frozen=True)

        @model_validator(mode="before")
        @classmethod
        def _accept_legacy(cls, data: Any) -> Any:
            return _legacy_objects(data, evidence=max_ev > 0)

        @property
        def i(self) -> list[WireInterest]:
            return [WireInterest(*x) if len(x) == 3 else WireInterest(x[0], [], x[1]) for x in self.root]

    return WireProfile


def wire_interest(name: str, lines: Sequence[int], tags: Sequence[str], config: MiningConfig) -> list[Any]:
    """One interest in the wire's positional form (the SFT and self-training targets): [name, lines, tags], or
    [name, tags] when the answer cites no lines (`max_evidence` = 0)."""
    return [name, list(lines), list(tags)] if config.max_evidence else [name, list(tags)]


def interests_wire(config: MiningConfig) -> type[RootModel]:
    """The pydantic model of the answer (its JSON schema constrains decoding)."""
    return _wire(config.min_interests, config.max_interests, config.max_evidence, config.tags_per_interest,
                 config.max_name_chars, config.max_tag_chars)


def narrative_lines(narrative_text: str) -> list[str]:
    """The narrative's lines (one item each), as the prompt numbers them from 1."""
    return narrative_text.split("\n") if narrative_text else []


def interest_messages(narrative_text: str, config: MiningConfig, attrs: AttributeVocab | None = None) -> Messages:
    """The mining chat for one narrative (also used to build SFT examples); `attrs` names the domain
    (None: MovieLens words)."""
    return render_prompt("interests", lines=narrative_lines(narrative_text), min_interests=config.min_interests,
                         max_interests=config.max_interests, max_evidence=config.max_evidence,
                         tags_per_interest=config.tags_per_interest, **prompt_nouns(attrs))


def round_robin(groups: Sequence[Sequence[Any]]) -> list[Any]:
    """First element of every group, then every second, ...: one ranked list from per-interest lists."""
    return [x for row in zip_longest(*groups) for x in row if x is not None]


# The prompt's format placeholders ("...", "<interest>"): a model that copies them back has answered nothing,
# even when the JSON validates.
_PLACEHOLDER = re.compile(r"^\s*(?:<[^<>]*>|\.{2,}|…)\s*$")


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").split()).strip(" \"'.,;:")


def title_forms(title: str) -> list[str]:
    """How a title may be written: as stored ("Godfather, The (1972)"), without the year, article first."""
    base = strip_year(title)
    forms = [title.strip(), base]
    m = re.match(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Der|Die|El)$", base)
    if m:
        forms.append(f"{m.group(2)} {m.group(1)}")
    return [f for f in dict.fromkeys(forms) if f]


# --- Validation ---------------------------------------------------------------------------------------


@dataclass
class MiningStats:
    """Everything mining counts; nothing the model says is dropped without a count here."""

    users: int = 0
    valid_first: int = 0
    valid_retry: int = 0
    fallback: int = 0
    answers: int = 0  # generations, retries included
    answers_valid: int = 0  # of those, the ones that validated (JSON validity rate = answers_valid / answers)
    salvaged_truncated: int = 0  # answers cut at the token budget, closed after their last complete interest
    parse_failures: int = 0  # answers that were not schema-valid JSON
    semantic_failures: int = 0  # schema-valid answers refused (placeholders, too few distinct interests, no tag)
    unconstrained_answers: int = 0  # answers from a backend that does not enforce the schema while decoding
    evidence_cited: int = 0
    evidence_dropped: int = 0  # line numbers naming no line of the narrative
    evidence_grounded: int = 0  # cited lines whose item supports the interest (llmrec.eval.grounding)
    evidence_attributed: int = 0  # evidence items attached by attribute match to answers that cite no lines
    duplicate_interests_dropped: int = 0
    interests_kept: int = 0  # interests of the LLM-mined profiles (fallbacks not counted)
    tags_kept: int = 0
    tags_title_dropped: int = 0  # tags that contain the title of an item already seen
    tags_duplicate_dropped: int = 0
    tags_unmapped: int = 0  # kept tags that name no known attribute (they can never hit in tag HR@k)
    prompt_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)  # first few failures, raw text attached

    @property
    def grounding(self) -> float:
        """Share of cited evidence lines that are really lines of the user's narrative."""
        return 1.0 - self.evidence_dropped / self.evidence_cited if self.evidence_cited else 0.0

    @property
    def grounded(self) -> float:
        """Share of cited evidence lines whose item carries an attribute the interest or its tags name (or whose
        title the interest names); `grounding` is the weaker "exists" check. 0.0 when mined without `items`."""
        return grounding_rates(self.evidence_cited, self.evidence_dropped, self.evidence_grounded)["grounded"]

    @property
    def evidence_per_interest(self) -> float:
        """History items attributed as evidence per kept interest (answers that cite no lines, format 5)."""
        return self.evidence_attributed / max(self.interests_kept, 1)

    def evidence_summary(self) -> str:
        """One phrase for logs: the grounding of cited lines, or how much evidence was attributed instead."""
        if self.evidence_cited:
            return f"grounding exists {self.grounding:.2f} / grounded {self.grounded:.2f}"
        return f"{self.evidence_per_interest:.2f} evidence items attributed per interest"

    @property
    def valid_rate(self) -> float:
        """Share of users whose profile came from validated model output (first try or retry)."""
        return (self.valid_first + self.valid_retry) / self.users if self.users else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        minutes = self.seconds / 60
        cited = self.evidence_cited > 0  # answers that cite no lines (format 5) have no grounding rates
        exists = round(self.grounding, 4) if cited else None
        d.update(grounding=exists, grounding_exists=exists, grounded=round(self.grounded, 4) if cited else None,
                 valid_rate=round(self.valid_rate, 4),
                 evidence_attributed_per_interest=round(self.evidence_per_interest, 4),
                 llm_share=round(self.valid_rate, 4),  # every mined user is "llm" or "fallback"
                 fallback_share=round(self.fallback / self.users, 4) if self.users else None,
                 json_valid_rate=round(self.answers_valid / self.answers, 4) if self.answers else None,
                 users_per_min=round(self.users / minutes, 2) if minutes else None,
                 output_tokens_per_s=round(self.output_tokens / self.seconds, 2) if self.seconds else None)
        return d

    def error(self, user_id: str, stage: str, reason: str, raw: str) -> None:
        if len(self.errors) < 10:
            self.errors.append({"user_id": user_id, "stage": stage, "reason": reason[:300], "raw": raw[:300]})


@dataclass
class _Parsed:
    """One validated answer turned into domain objects, with what was dropped on the way."""

    interests: list[Interest]
    tags: list[Tag]
    cited: int = 0
    dropped: int = 0
    duplicate_interests: int = 0
    title: int = 0
    duplicate_tags: int = 0
    unmapped: int = 0


def to_profile_parts(obj: BaseModel, item_ids: Sequence[str], titles: re.Pattern | None,
                     config: MiningConfig, attrs: AttributeVocab | None = None) -> _Parsed:
    """Validated wire object -> interests with item-id evidence and round-robin tags; ValueError if unusable."""
    echoed = [w.n for w in obj.i if _PLACEHOLDER.match(w.n)] + [t for w in obj.i for t in w.t if _PLACEHOLDER.match(t)]
    if echoed:
        raise ValueError(f"the answer copies the prompt's placeholders: {echoed[:3]}")
    out = _Parsed(interests=[], tags=[])
    names: set[str] = set()
    groups: list[list[Tag]] = []
    tag_keys: set[str] = set()
    for w in obj.i:
        if _norm(w.n) in names:
            out.duplicate_interests += 1
            continue
        names.add(_norm(w.n))
        evidence: list[str] = []
        for line in w.e:
            out.cited += 1
            if not 1 <= line <= len(item_ids):
                out.dropped += 1
            elif item_ids[line - 1] not in evidence:
                evidence.append(item_ids[line - 1])
        out.interests.append(Interest(name=w.n, evidence=tuple(evidence)))
        group = []
        for raw in w.t:
            text, key = " ".join(raw.split()), _norm(raw)
            if titles is not None and titles.search(key):
                out.title += 1
            elif key in tag_keys:
                out.duplicate_tags += 1
            else:
                tag_keys.add(key)
                out.unmapped += tag_attributes(text, attrs) is None
                group.append(Tag(text=text, interest=w.n))
        groups.append(group)
    if len(out.interests) < config.min_interests:
        raise ValueError(f"{len(out.interests)} distinct interests, need at least {config.min_interests}")
    out.tags = round_robin(groups)[: config.max_tags]
    if not out.tags:
        raise ValueError(f"no usable tag: {out.title} named seen titles, {out.duplicate_tags} duplicates")
    return out


# --- Mining ------------------------------------------------------------------------------------------


def mining_settings(config: MiningConfig, adapter: str | None) -> GenerationSettings:
    """The sampling knobs of mining: `batch_size` prompts per call (the whole shard when it is that wide)."""
    return GenerationSettings(max_tokens=config.max_tokens, temperature=config.temperature,
                              retry_temperature=config.retry_temperature, frequency_penalty=config.frequency_penalty,
                              adapter=adapter, retries=1, batch_size=config.batch_size,
                              decode_max_lengths=config.decode_max_lengths)


def mining_stats(gen: GenerationStats, user_ids: Sequence[str]) -> MiningStats:
    """MiningStats' generation counts (the names the build report and benchmarks read) from GenerationStats."""
    stats = MiningStats(users=gen.prompts, valid_first=gen.valid_first, valid_retry=gen.valid_retry,
                        fallback=gen.fallbacks, answers=gen.answers, answers_valid=gen.answers_valid,
                        salvaged_truncated=gen.repaired, parse_failures=gen.parse_failures,
                        semantic_failures=gen.semantic_failures,
                        unconstrained_answers=0 if gen.enforces_schema else gen.answers,
                        prompt_tokens=gen.prompt_tokens, output_tokens=gen.output_tokens)
    for e in gen.examples:
        stats.error(user_ids[e["index"]], f"try{e['attempt'] + 1}", f"{e['kind']}: {e['reason']}", e["raw"])
    return stats


def mine_interests(
    narratives: Sequence[Narrative],
    backend: LLMBackend,
    config: MiningConfig,
    adapter: str | None = None,
    items: dict[str, Item] | None = None,
    label: str | None = None,
    attrs: AttributeVocab | None = None,
) -> tuple[list[InterestProfile], MiningStats]:
    """Interests with tags for every narrative: one batched call, one batched retry of the failures.

    Pure in (narratives, backend): no files, no global state, so a sharded job can call it per shard.
    `items` (the catalogue) lets tags naming a seen title be dropped and feeds the fallback. `label` names
    the model in the profiles (default: the backend's name, + the adapter). `attrs` is the dataset's
    attribute vocabulary: the prompt's domain words, unmapped-tag counts and the fallback's tags
    (None: MovieLens).
    """
    t0 = time.perf_counter()
    model = label or (backend.name if adapter is None else f"{backend.name}+{adapter}")
    titles = [seen_title_patterns(n.item_ids, items) for n in narratives]
    prompts = [interest_messages(n.text, config, attrs) for n in narratives]
    wire = interests_wire(config)

    def check(obj: BaseModel, i: int) -> str | None:
        try:
            to_profile_parts(obj, narratives[i].item_ids, titles[i], config, attrs)
        except ValueError as e:
            return str(e)
        return None

    results, gen_stats = generate_validated(
        backend, prompts, schema=wire, check=check, fallback=lambda i: None, config=mining_settings(config, adapter),
        repair=repair_truncated)
    stats = mining_stats(gen_stats, [n.user_id for n in narratives])
    parsed = [None if r.fallback else to_profile_parts(r.value, n.item_ids, t, config, attrs)
              for r, n, t in zip(results, narratives, titles)]

    attribute = config.max_evidence == 0 and config.attributed_evidence > 0 and bool(items)
    def attrs_of_tag(tag: str) -> frozenset[str] | None:
        return tag_attributes(tag, attrs)

    def attrs_of_item(item: Item) -> frozenset[str]:
        return item_attributes(item, attrs)

    profiles = []
    for n, p in zip(narratives, parsed):
        if p is None:
            history = [items[x] for x in n.item_ids if x in items] if items else []
            profiles.append(fallback_profile(n.user_id, history, config, model, attrs))
            continue
        if attribute:  # the answer cites no lines: evidence from the narrative's items, by attribute match
            p.interests = attribute_evidence(p.interests, p.tags, n.item_ids, items, attrs_of_tag, attrs_of_item,
                                             config.attributed_evidence)
            stats.evidence_attributed += sum(len(i.evidence) for i in p.interests)
        stats.evidence_cited += p.cited
        stats.evidence_dropped += p.dropped
        if items and p.cited:
            stats.evidence_grounded += count_grounded(p.interests, p.tags, items, attrs_of_tag, attrs_of_item)
        stats.duplicate_interests_dropped += p.duplicate_interests
        stats.interests_kept += len(p.interests)
        stats.tags_kept += len(p.tags)
        stats.tags_title_dropped += p.title
        stats.tags_duplicate_dropped += p.duplicate_tags
        stats.tags_unmapped += p.unmapped
        profiles.append(InterestProfile(user_id=n.user_id, interests=tuple(p.interests), tags=tuple(p.tags),
                                        source="llm", model=model))
    stats.seconds = time.perf_counter() - t0
    return profiles, stats


def seen_title_patterns(item_ids: Sequence[str], items: dict[str, Item] | None) -> re.Pattern | None:
    """One regex matching any seen item's title (word-bounded) inside a normalised tag."""
    if not items:
        return None
    forms = {_norm(f) for iid in item_ids if iid in items for f in title_forms(items[iid].title)}
    forms = sorted((f for f in forms if len(f) >= 3), key=len, reverse=True)
    if not forms:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(f) for f in forms) + r")(?!\w)")


def fallback_profile(user_id: str, history: Sequence[Item], config: MiningConfig, model: str,
                     attrs: AttributeVocab | None = None) -> InterestProfile:
    """The flagged stand-in for a user whose answers failed twice: the history's most frequent tags.

    Interests are the top tags, each with up to `MiningConfig.evidence_per_interest` history items that carry it.
    """
    tags = history_tags(history, config.max_tags, attrs)
    n = config.evidence_per_interest
    interests = tuple(
        Interest(name=t, evidence=tuple([it.item_id for it in history if t in item_tags(it, attrs)][:n]),
                 why="fallback: most frequent tag of the history")
        for t in tags[: config.max_interests]
    )
    return InterestProfile(user_id=user_id, interests=interests, source="fallback", model=model,
                           tags=tuple(Tag(text=t) for t in tags))


# --- Parquet --------------------------------------------------------------------------------------------

PROFILES_SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("interests", pa.string(), nullable=False),  # JSON list of {"name", "evidence", "why"}
    pa.field("tags", pa.list_(pa.string()), nullable=False),
    pa.field("tag_interests", pa.list_(pa.string()), nullable=False),  # parallel to tags; null = none
    pa.field("source", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
])  # fmt: skip


def profiles_to_table(profiles: Sequence[InterestProfile]) -> pa.Table:
    """One row per user (schema PROFILES_SCHEMA)."""
    rows = {
        "user_id": [p.user_id for p in profiles],
        "interests": [json.dumps([i.model_dump(mode="json") for i in p.interests]) for p in profiles],
        "tags": [[t.text for t in p.tags] for p in profiles],
        "tag_interests": [[t.interest for t in p.tags] for p in profiles],
        "source": [p.source for p in profiles],
        "model": [p.model for p in profiles],
    }
    return pa.Table.from_pydict(rows, schema=PROFILES_SCHEMA)


def profiles_from_table(table: pa.Table) -> list[InterestProfile]:
    """Inverse of `profiles_to_table`; a bad row is an error naming the row and field."""
    missing = set(PROFILES_SCHEMA.names) - set(table.column_names)
    if missing:
        raise ValueError(f"profiles table lacks column(s) {sorted(missing)}; expected {PROFILES_SCHEMA.names}")
    out = []
    for r, row in enumerate(table.to_pylist()):
        try:
            out.append(InterestProfile(
                user_id=row["user_id"], source=row["source"], model=row["model"],
                interests=tuple(Interest(**i) for i in json.loads(row["interests"])),
                tags=tuple(Tag(text=t, interest=i) for t, i in zip(row["tags"], row["tag_interests"], strict=True)),
            ))
        except (ValueError, TypeError) as e:
            raise ValueError(f"profiles table row {r} (user {row.get('user_id')!r}): {e}") from e
    return out
