"""Narrative -> InterestProfile: RecGPT's interest mining and tag prediction as two batched LLM calls.

1. Interest mining: every user's narrative -> >= `min_interests` interests, each citing evidence items from
   the narrative. Wire format (short keys: decoding is the cost): {"i":[{"n": name, "e": [item, ...]}]}.
2. Tag prediction: narrative + the mined interests -> up to `max_tags` "modifier + core" tags, each naming
   the interest it serves: {"t":[{"t": tag, "i": interest index}]}.

Each call is schema-constrained (`backend.generate(json_schema=Wire.model_json_schema())`) and its answer
is validated with the same pydantic model anyway; the prompts that failed are retried ONCE (in one batch,
at `retry_temperature`), and users that fail twice get a flagged fallback (`source="fallback"`) built from
their history's most frequent tags. An answer cut off by the token budget is salvaged by closing the JSON
after its last complete element, then validated like any other. Counts of all of this are in `MiningStats`.

Evidence: the model cites items as written in the narrative (an id marker such as "[42]" when the
narrative shows one, otherwise the title); `narrative_items` maps both back to item ids, and citations
that name no item of the narrative are dropped and counted (grounding = kept / cited).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Annotated, Any, Callable, Sequence

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

from llmrec.config import MiningConfig
from llmrec.llm import LLMBackend, Messages
from llmrec.prompts import render_prompt
from llmrec.schema import Interest, InterestProfile, Item, Narrative, Tag
from llmrec.tags import history_tags, item_tags, tag_attributes

PROMPTS = ("interests", "tags")
_WIRE_CONFIG = ConfigDict(extra="forbid", frozen=True)

# --- Wire schemas -----------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _interests_wire(min_n: int, max_n: int, max_ev: int, name_chars: int, ev_chars: int) -> type[BaseModel]:
    name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=name_chars)]
    cite = Annotated[str, StringConstraints(min_length=1, max_length=ev_chars)]
    one = create_model("WireInterest", __config__=_WIRE_CONFIG, n=(name, ...),
                       e=(list[cite], Field(max_length=max_ev)))
    return create_model("WireInterests", __config__=_WIRE_CONFIG,
                        i=(list[one], Field(min_length=min_n, max_length=max_n)))


@lru_cache(maxsize=32)
def _tags_wire(max_tags: int, max_interest: int, tag_chars: int) -> type[BaseModel]:
    text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=tag_chars)]
    one = create_model("WireTag", __config__=_WIRE_CONFIG, t=(text, ...), i=(int, Field(ge=0, le=max_interest)))
    return create_model("WireTags", __config__=_WIRE_CONFIG, t=(list[one], Field(min_length=1, max_length=max_tags)))


def interests_wire(config: MiningConfig) -> type[BaseModel]:
    """The pydantic model of the interest answer (its JSON schema constrains decoding)."""
    return _interests_wire(config.min_interests, config.max_interests, config.max_evidence,
                           config.max_name_chars, config.max_evidence_chars)


def tags_wire(config: MiningConfig) -> type[BaseModel]:
    """The pydantic model of the tag answer; `i` indexes the interest list."""
    return _tags_wire(config.max_tags, config.max_interests - 1, config.max_tag_chars)


def interest_messages(narrative_text: str, config: MiningConfig) -> Messages:
    """The interest-mining chat for one narrative (also used to build SFT examples)."""
    return render_prompt("interests", narrative=narrative_text, min_interests=config.min_interests,
                         max_interests=config.max_interests, max_evidence=config.max_evidence)


def tag_messages(narrative_text: str, interest_names: Sequence[str], config: MiningConfig) -> Messages:
    """The tag-prediction chat for one narrative and its interests (also used to build SFT examples)."""
    return render_prompt("tags", narrative=narrative_text, interests=list(interest_names), max_tags=config.max_tags)


# --- Items cited in a narrative --------------------------------------------------------------------

_YEAR_SUFFIX = re.compile(r"\s*\(\d{4}\)\s*$")
_ID_MARKER = re.compile(r"\[(?:id[:=]?\s*)?([A-Za-z0-9_.-]+)\]")
# The prompt's format placeholders ("<interest>", "<item from the history>"): a model that copies them back
# has answered nothing, even when the JSON validates.
_PLACEHOLDER = re.compile(r"^\s*<[^<>]*>\s*$")


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").split()).strip(" \"'.,;:")


def title_forms(title: str) -> list[str]:
    """How a title may be written: as stored ("Godfather, The (1972)"), without the year, article first."""
    base = _YEAR_SUFFIX.sub("", title).strip()
    forms = [title.strip(), base]
    m = re.match(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Der|Die|El)$", base)
    if m:
        forms.append(f"{m.group(2)} {m.group(1)}")
    return [f for f in dict.fromkeys(forms) if f]


def narrative_items(text: str, items: dict[str, Item] | None) -> dict[str, str]:
    """Cite key -> item id for every item the narrative shows, in order of first appearance.

    Keys are normalised ids from markers like "[42]" and normalised title forms found in the text at word
    boundaries. Without `items` only id markers can be resolved.
    """
    found: list[tuple[int, str, str]] = []  # (position, key, item_id)
    for m in _ID_MARKER.finditer(text):
        if items is None or m.group(1) in items:
            found.append((m.start(), _norm(m.group(1)), m.group(1)))
    if items:
        low = text.lower()
        for item_id, item in items.items():
            for form in title_forms(item.title):
                f = form.lower()
                pos = low.find(f)
                if pos < 0 or len(f) < 2:
                    continue
                if re.search(rf"(?<!\w){re.escape(f)}(?!\w)", low):
                    found.append((pos, _norm(form), item_id))
    found.sort(key=lambda x: x[0])
    out: dict[str, str] = {}
    for _, key, item_id in found:
        out.setdefault(key, item_id)
    return out


def resolve_citation(cite: str, keys: dict[str, str]) -> str | None:
    """The item id a citation names, or None. Accepts "[42]", "42", titles, and narrative lines."""
    c = cite.split("|")[-1]
    m = _ID_MARKER.search(c)
    candidates = [m.group(1)] if m else []
    c = re.sub(r"\s*\([^()]*\)\s*$", "", c.strip())  # "(1977; Action, Sci-Fi)" as the narrative renders it
    candidates += [cite, c, _YEAR_SUFFIX.sub("", cite)]
    for cand in candidates:
        key = _norm(cand)
        if key in keys:
            return keys[key]
    return None


# --- Validation ---------------------------------------------------------------------------------------


@dataclass
class MiningStats:
    """Everything mining counts; nothing the model says is dropped without a count here."""

    users: int = 0
    interests_valid_first: int = 0
    interests_valid_retry: int = 0
    interests_fallback: int = 0
    tags_valid_first: int = 0
    tags_valid_retry: int = 0
    tags_fallback: int = 0
    answers: int = 0  # generations of both stages, retries included
    answers_valid: int = 0  # of those, the ones that validated (JSON validity rate = answers_valid / answers)
    salvaged_truncated: int = 0  # answers cut at the token budget, closed after their last complete element
    evidence_cited: int = 0
    evidence_dropped: int = 0  # citations naming no item of the narrative
    duplicate_interests_dropped: int = 0
    tags_kept: int = 0
    tags_title_dropped: int = 0  # tags that contain the title of an item already seen
    tags_duplicate_dropped: int = 0
    tags_bad_interest: int = 0  # tag's interest index beyond the user's interests (kept, interest=None)
    tags_unmapped: int = 0  # kept tags that name no known attribute (they can never hit in tag HR@k)
    prompt_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)  # first few failures, raw text attached

    @property
    def grounding(self) -> float:
        """Share of cited evidence items that are really in the user's narrative."""
        return 1.0 - self.evidence_dropped / self.evidence_cited if self.evidence_cited else 0.0

    @property
    def valid_rate(self) -> float:
        """Share of users whose interests AND tags came from validated model output (first try or retry)."""
        return (self.tags_valid_first + self.tags_valid_retry) / self.users if self.users else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        minutes = self.seconds / 60
        d.update(grounding=round(self.grounding, 4), valid_rate=round(self.valid_rate, 4),
                 json_valid_rate=round(self.answers_valid / self.answers, 4) if self.answers else None,
                 users_per_min=round(self.users / minutes, 2) if minutes else None,
                 output_tokens_per_s=round(self.output_tokens / self.seconds, 2) if self.seconds else None)
        return d

    def error(self, user_id: str, stage: str, reason: str, raw: str) -> None:
        if len(self.errors) < 10:
            self.errors.append({"user_id": user_id, "stage": stage, "reason": reason[:300], "raw": raw[:300]})


def salvage_truncated(text: str) -> str | None:
    """Close JSON cut off inside its top-level array after the last complete element, else None.

    Only the shape {"k":[{...},{...},... is handled: both wire formats have it.
    """
    depth, in_str, escape, last_end = 0, False, False, -1
    for pos, ch in enumerate(text):
        if in_str:
            escape = ch == "\\" and not escape
            if ch == '"' and not escape:
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 2 and ch == "}":
                last_end = pos
    return text[: last_end + 1] + "]}" if last_end >= 0 else None


def _parse(wire: type[BaseModel], text: str, finish_reason: str) -> tuple[BaseModel, bool]:
    """Validate an answer; a budget-truncated one is retried as its salvaged prefix."""
    try:
        return wire.model_validate_json(text), False
    except ValidationError:
        fixed = salvage_truncated(text) if finish_reason == "length" else None
        if fixed is None:
            raise
        return wire.model_validate_json(fixed), True


def generate_validated(
    backend: LLMBackend,
    prompts: Sequence[Messages],
    user_ids: Sequence[str],
    wire: type[BaseModel],
    convert: Callable[[int, BaseModel], Any],
    *,
    stage: str,
    max_tokens: int,
    config: MiningConfig,
    stats: MiningStats,
    adapter: str | None = None,
) -> list[Any]:
    """Batched constrained generation + validation + ONE batched retry; None where both tries failed.

    `convert(index, wire_obj)` turns a validated answer into the caller's object and may raise ValueError
    for answers that are well-formed but unusable (e.g. too few distinct interests).
    """
    schema = wire.model_json_schema()
    results: list[Any] = [None] * len(prompts)
    pending = list(range(len(prompts)))
    for attempt, temperature in enumerate((config.temperature, config.retry_temperature)):
        failed: list[int] = []
        for start in range(0, len(pending), config.batch_size):
            chunk = pending[start : start + config.batch_size]
            gens = backend.generate([prompts[i] for i in chunk], json_schema=schema, max_tokens=max_tokens,
                                    temperature=temperature, adapter=adapter)
            for i, gen in zip(chunk, gens):
                stats.answers += 1
                stats.prompt_tokens += gen.n_prompt_tokens
                stats.output_tokens += gen.n_output_tokens
                try:
                    obj, salvaged = _parse(wire, gen.text, gen.finish_reason)
                    results[i] = convert(i, obj)
                except (ValidationError, ValueError) as e:
                    stats.error(user_ids[i], f"{stage}/try{attempt + 1}", str(e), gen.text)
                    failed.append(i)
                    continue
                stats.answers_valid += 1
                stats.salvaged_truncated += salvaged
                key = f"{stage}_valid_first" if attempt == 0 else f"{stage}_valid_retry"
                setattr(stats, key, getattr(stats, key) + 1)
        pending = failed
        if not pending:
            break
    setattr(stats, f"{stage}_fallback", getattr(stats, f"{stage}_fallback") + len(pending))
    return results


# --- Mining ------------------------------------------------------------------------------------------


def mine_interests(
    narratives: Sequence[Narrative],
    backend: LLMBackend,
    config: MiningConfig,
    adapter: str | None = None,
    items: dict[str, Item] | None = None,
) -> tuple[list[InterestProfile], MiningStats]:
    """Interests then tags for every narrative, in two batched calls (plus one batched retry each).

    Pure in (narratives, backend): no files, no global state, so a sharded job can call it per shard.
    `items` (the catalogue) lets titles in the narrative resolve to item ids and feeds the fallback.
    """
    t0 = time.perf_counter()
    stats = MiningStats(users=len(narratives))
    user_ids = [n.user_id for n in narratives]
    cites = [narrative_items(n.text, items) for n in narratives]
    seen = [list(dict.fromkeys(c.values())) for c in cites]  # item ids per user, narrative order
    model = backend.name if adapter is None else f"{backend.name}+{adapter}"

    def to_interests(i: int, obj: BaseModel) -> tuple[list[Interest], int, int, int]:
        out, names, cited, dropped = [], set(), 0, 0
        echoed = [wi.n for wi in obj.i if _PLACEHOLDER.match(wi.n)]
        if echoed:
            raise ValueError(f"interest names copy the prompt's placeholders: {echoed[:3]}")
        for wi in obj.i:
            evidence: list[str] = []
            for c in wi.e:
                cited += 1
                iid = resolve_citation(c, cites[i])
                dropped += iid is None
                if iid is not None and iid not in evidence:
                    evidence.append(iid)
            if _norm(wi.n) not in names:
                names.add(_norm(wi.n))
                out.append(Interest(name=wi.n, evidence=tuple(evidence)))
        if len(out) < config.min_interests:
            raise ValueError(f"{len(out)} distinct interests, need at least {config.min_interests}")
        return out, cited, dropped, len(obj.i) - len(out)

    mined = generate_validated(
        backend, [interest_messages(n.text, config) for n in narratives], user_ids, interests_wire(config),
        to_interests, stage="interests", max_tokens=config.interest_max_tokens, config=config, stats=stats,
        adapter=adapter,
    )
    for m in mined:
        if m is not None:
            stats.evidence_cited += m[1]
            stats.evidence_dropped += m[2]
            stats.duplicate_interests_dropped += m[3]

    titles = [_seen_title_patterns(ids, items) for ids in seen]

    def to_tags(j: int, obj: BaseModel) -> tuple[list[Tag], dict[str, int]]:
        i = ok[j]
        names = [x.name for x in mined[i][0]]
        out, keys, counts = [], set(), {"title": 0, "dup": 0, "bad": 0, "unmapped": 0}
        for wt in obj.t:
            text, key = " ".join(wt.t.split()), _norm(wt.t)
            if _PLACEHOLDER.match(text):
                raise ValueError(f"tag {text!r} copies the prompt's placeholder")
            if titles[i] is not None and titles[i].search(key):
                counts["title"] += 1
            elif key in keys:
                counts["dup"] += 1
            else:
                keys.add(key)
                counts["bad"] += wt.i >= len(names)
                counts["unmapped"] += tag_attributes(text) is None
                out.append(Tag(text=text, interest=names[wt.i] if wt.i < len(names) else None))
        if not out:
            raise ValueError(f"no usable tag: {counts['title']} named seen titles, {counts['dup']} duplicates")
        return out, counts

    ok = [i for i, m in enumerate(mined) if m is not None]
    predicted = generate_validated(
        backend, [tag_messages(narratives[i].text, [x.name for x in mined[i][0]], config) for i in ok],
        [user_ids[i] for i in ok], tags_wire(config), to_tags, stage="tags",
        max_tokens=config.tag_max_tokens, config=config, stats=stats, adapter=adapter,
    )
    tags_of: dict[int, list[Tag] | None] = {}
    for i, p in zip(ok, predicted):
        tags_of[i] = None if p is None else p[0]
        if p is not None:
            stats.tags_kept += len(p[0])
            stats.tags_title_dropped += p[1]["title"]
            stats.tags_duplicate_dropped += p[1]["dup"]
            stats.tags_bad_interest += p[1]["bad"]
            stats.tags_unmapped += p[1]["unmapped"]

    profiles = []
    for i, n in enumerate(narratives):
        history = [items[x] for x in seen[i]] if items else []
        if mined[i] is None:
            profiles.append(fallback_profile(n.user_id, history, config, model))
        elif tags_of[i] is None:
            tags = tuple(Tag(text=t) for t in history_tags(history, config.max_tags))
            profiles.append(InterestProfile(user_id=n.user_id, interests=tuple(mined[i][0]), tags=tags,
                                            source="fallback", model=model))
        else:
            profiles.append(InterestProfile(user_id=n.user_id, interests=tuple(mined[i][0]),
                                            tags=tuple(tags_of[i]), source="llm", model=model))
    stats.seconds = time.perf_counter() - t0
    return profiles, stats


def _seen_title_patterns(item_ids: Sequence[str], items: dict[str, Item] | None) -> re.Pattern | None:
    """One regex matching any seen item's title (word-bounded) inside a normalised tag."""
    if not items:
        return None
    forms = {_norm(f) for iid in item_ids for f in title_forms(items[iid].title)}
    forms = sorted((f for f in forms if len(f) >= 3), key=len, reverse=True)
    if not forms:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(f) for f in forms) + r")(?!\w)")


def fallback_profile(user_id: str, history: Sequence[Item], config: MiningConfig, model: str) -> InterestProfile:
    """The flagged stand-in for a user whose answers failed twice: the history's most frequent tags.

    Interests are the top tags, each with up to `max_evidence` history items that carry the tag.
    """
    tags = history_tags(history, config.max_tags)
    interests = tuple(
        Interest(name=t, evidence=tuple([it.item_id for it in history if t in item_tags(it)][: config.max_evidence]),
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
