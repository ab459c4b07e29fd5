"""Cold start by imagined histories, after "In-Context Learning for Addressing User Cold-Start in
Sequential Movie Recommenders" (RecSys 2025).

For a user with at most `max_events` events, the LLM reads the profile (ML-100K: age, gender,
occupation), the few real items, and `n_examples` in-context examples (the first items of similar users:
same occupation, gender and age bucket score one point each), and imagines `n_imagined` items it would
watch first: {"m":[{"t": title, "g": [genre], "y": year}]}. The answer is validated
(`llmrec.llm.structured.generate_validated`); invalid ones are re-asked `retries` times at `retry_temperature`,
then a flagged fallback (the examples' most common first items) stands in.

Imagined titles need not exist. Each is encoded as "Title (year; genres)" (the item-tower text format)
and mapped to the nearest catalogue item when the cosine is >= `sim_threshold`; below it the item keeps
its content vector (`imagined_vectors`) and is counted as unmatched.

The result rejoins the normal path as a `UserHistory`:
- early fusion: imagined events placed before the real ones, `spacing_hours` apart, ending before the
  first real event (or `anchor` for a user without events): one sequence;
- late fusion: one sequence per imagined item (that item, then the real events); the retriever encodes
  each and averages the user vectors (`llmrec.coldstart_fusion`). Imagined events have the dataset's main
  positive type (`imagined_behavior`), and the prompt's verbs follow it.
Results are cached per user in a JSON file, keyed by a sha256 of profile + history + generation config +
prompt hash, so a changed profile or history is regenerated and nothing else is.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Callable, Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

from llmrec.config import ColdStartConfig
from llmrec.data import strip_year
from llmrec.data.behaviors import BehaviorVocab, main_positive
from llmrec.errors import DataError
from llmrec.llm import LLMBackend, Messages
from llmrec.llm.prompts import prompt_hash, render_prompt
from llmrec.llm.structured import GenerationSettings, generate_validated, repair_unconstrained
from llmrec.nouns import prompt_nouns
from llmrec.schema import Event, Item, Record
from llmrec.vocab import AttributeVocab

PROMPT = "imagine_history"
MAX_GENRES = 3
PLACEHOLDERS = {"title", "movie", "genre"}  # the prompt's format example, echoed by small models
AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's bucket edges: <18, 18-24, ..., 56+
Encode = Callable[[Sequence[str]], np.ndarray]  # texts -> [T, D] L2-normalised


class ImaginedItem(Record):
    title: str
    genres: tuple[str, ...] = ()
    year: int | None = None
    item_id: str | None = None  # the catalogue match, None when below the similarity threshold
    similarity: float = 0.0


class ImaginedHistory(Record):
    """What the LLM imagined for one cold user; `source="fallback"` when the model failed."""

    user_id: str
    key: str  # sha256 of profile + history + config + prompt: the cache key
    items: tuple[ImaginedItem, ...] = ()
    source: Literal["llm", "fallback"] = "llm"


@dataclass
class ColdStartStats:
    n_users: int = 0
    not_cold: int = 0  # skipped: more than max_events events
    cached: int = 0
    generated: int = 0
    valid_first: int = 0  # valid JSON at the first attempt
    valid_retry: int = 0  # valid at a retry (sampled at retry_temperature)
    parse_failures: int = 0  # answers that were not schema-valid JSON, retries included
    semantic_failures: int = 0  # schema-valid answers that copied the prompt's placeholders
    fallback: int = 0  # histories (cached or new) that are the flagged examples' fallback
    n_imagined: int = 0  # items of the LLM histories served, cached or new
    n_matched: int = 0  # mapped to a catalogue item
    n_unmatched: int = 0  # below sim_threshold: content vector kept
    mean_similarity: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def valid_share(self) -> float:
        return self.valid_first / self.generated if self.generated else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "valid_share": self.valid_share}


# --- Similar users' early histories (the in-context examples) --------------------------------------


def age_bucket(age: str | int | None) -> str:
    try:
        a = int(age)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "unknown"
    lower = max([0, *[e for e in AGE_BUCKETS if e <= a]])
    return f"{lower}+"


def render_profile(profile: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(profile.items())) or "no profile given"


def render_item(item: Item) -> str:
    return f"{item.title} ({item.year})" if item.year is not None else item.title


@dataclass(frozen=True)
class ExampleUser:
    user_id: str
    profile: dict[str, str]
    items: tuple[Item, ...]  # first items, in time order


class ExamplePool:
    """Early histories of known users, to pick in-context examples by profile similarity."""

    def __init__(self, examples: Sequence[ExampleUser]):
        self.examples = list(examples)

    @classmethod
    def from_events(cls, events: pd.DataFrame, profiles: dict[str, dict[str, str]], items: dict[str, Item],
                    n_items: int) -> "ExamplePool":
        """Each user's first `n_items` events (by time) from a training-events table."""
        ev = events.sort_values(["user_id", "timestamp"], kind="mergesort")
        first = ev.groupby("user_id", sort=True).head(n_items)
        out = [ExampleUser(str(uid), profiles.get(str(uid), {}), tuple(items[i] for i in g["item_id"] if i in items))
               for uid, g in first.groupby("user_id", sort=True)]
        return cls([e for e in out if e.items])

    def similar(self, user_id: str, profile: dict[str, str], c: int) -> list[ExampleUser]:
        """The c most similar other users; ties broken by a per-user hashlib order (stable, varied)."""

        mine = (profile.get("occupation"), profile.get("gender"), age_bucket(profile.get("age")))

        def score(e: ExampleUser) -> tuple[int, str]:
            theirs = (e.profile.get("occupation"), e.profile.get("gender"), age_bucket(e.profile.get("age")))
            same = sum(a == b and a not in (None, "unknown") for a, b in zip(mine, theirs))
            return -same, hashlib.sha256(f"{user_id}\x1f{e.user_id}".encode()).hexdigest()

        return sorted((e for e in self.examples if e.user_id != user_id), key=score)[:c]


# --- Catalogue matching -----------------------------------------------------------------------------


def content_text(title: str, year: int | None, genres: Sequence[str]) -> str:
    """"Title (year; genre, genre)": the same text format the item tower encodes."""
    meta = ([str(year)] if year is not None else []) + ([", ".join(genres)] if genres else [])
    return f"{title} ({'; '.join(meta)})" if meta else title


class Catalogue:
    """Item vectors [N, D] from `encode`, for nearest-item lookup of imagined titles."""

    def __init__(self, items: Sequence[Item], encode: Encode):
        self.items = list(items)
        self.encode = encode
        self.vectors = np.asarray(encode([content_text(i.title, i.year, i.genres) for i in self.items]), np.float32)
        self.index = {item.item_id: n for n, item in enumerate(self.items)}

    def nearest(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per text: nearest item row [T], its cosine [T], and the text's own vector [T, D]."""
        q = np.asarray(self.encode(list(texts)), np.float32)  # [T, D]
        sims = q @ self.vectors.T  # [T, N]
        best = sims.argmax(axis=1)
        return best, sims[np.arange(len(texts)), best], q


# --- Generation ---------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def imagine_wire(k: int) -> type[BaseModel]:
    title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
    genre = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20)]
    cfg = ConfigDict(extra="forbid", frozen=True)
    one = create_model("WireImagined", __config__=cfg, t=(title, ...),
                       g=(list[genre], Field(default_factory=list, max_length=MAX_GENRES)),
                       y=(int | None, Field(default=None, ge=1900, le=2030)))
    return create_model("WireImagination", __config__=cfg, m=(list[one], Field(min_length=1, max_length=k)))


def history_key(profile: dict[str, str], events: Sequence[Event], config: ColdStartConfig) -> str:
    """The cache key: profile, events, the generation config and the prompt file, hashed with sha256."""
    payload = {
        "profile": dict(sorted(profile.items())),
        "events": [[e.item_id, e.timestamp.isoformat(), e.behavior] for e in events],
        "config": config.model_dump(mode="json", exclude={"batch_size", "spacing_hours", "fusion", "imagined_behavior"}),
        "prompt": prompt_hash(PROMPT),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def format_sample(examples: Sequence[ExampleUser]) -> str:
    """The answer format shown in the prompt, filled with the first example user's first movie.

    A bare placeholder ("title") is what a small model copies back, which validation must refuse; a real
    movie from the in-context examples is a valid (if unimaginative) answer when copied.
    """
    item = next((e.items[0] for e in examples if e.items), None)
    if item is None:
        return json.dumps({"t": "title", "g": ["genre"], "y": 1995}, separators=(",", ":"))
    entry = {"t": strip_year(item.title), "g": list(item.genres[:MAX_GENRES]) or ["Drama"], "y": item.year or 1995}
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False)


def imagined_behavior(config: ColdStartConfig, behaviors: BehaviorVocab | None = None) -> str:
    """The behaviour of imagined events: `config.imagined_behavior`, else the dataset's main positive type
    (None: the rating vocabulary's "liked"). A configured one must be a type of the dataset."""
    if config.imagined_behavior is None:
        return main_positive(behaviors)
    if behaviors is not None and config.imagined_behavior not in behaviors.names:
        raise DataError(f"ColdStartConfig.imagined_behavior={config.imagined_behavior!r} is not a behaviour of the "
                        f"dataset; choose one of {list(behaviors.names)} or leave it unset (the main positive type)")
    return config.imagined_behavior


def imagine_messages(profile: dict[str, str], history_items: Sequence[Item], examples: Sequence[ExampleUser],
                     config: ColdStartConfig, attrs: AttributeVocab | None = None, behavior: str | None = None) -> Messages:
    """The cold-start chat; `attrs` names the domain (None: MovieLens words), `behavior` (the imagined type)
    its verbs ("buys first" for purchases; the rating words keep the domain's)."""
    return render_prompt(
        PROMPT, profile=render_profile(profile), history=[render_item(i) for i in history_items],
        examples=[{"profile": render_profile(e.profile), "titles": [render_item(i) for i in e.items[: config.example_items]]}
                  for e in examples],
        k=config.n_imagined, max_genres=MAX_GENRES, sample=format_sample(examples),
        **prompt_nouns(attrs, behavior=behavior),
    )


def _refuse_placeholders(answer: BaseModel, index: int) -> str | None:
    """`check` of the imagined answer: a copied format placeholder ("title") is no imagined item."""
    echoed = [m.t for m in answer.m if m.t.casefold() in PLACEHOLDERS]
    return f"the answer copies the prompt's placeholders: {echoed[:3]}" if echoed else None


def coldstart_settings(config: ColdStartConfig, adapter: str | None) -> GenerationSettings:
    """The sampling knobs of cold start; retries sample at `retry_temperature` (greedy would repeat itself)."""
    return GenerationSettings(max_tokens=config.max_tokens, temperature=config.temperature,
                              retry_temperature=config.retry_temperature, adapter=adapter, retries=config.retries,
                              batch_size=config.batch_size)


def _fallback(examples: Sequence[ExampleUser], config: ColdStartConfig) -> list[Item]:
    """The examples' most frequent first items (ties: earliest position, then id), flagged as fallback."""
    counts: Counter[str] = Counter()
    first_pos: dict[str, tuple[int, str]] = {}
    by_id: dict[str, Item] = {}
    for e in examples:
        for pos, item in enumerate(e.items[: config.example_items]):
            counts[item.item_id] += 1
            first_pos[item.item_id] = min(first_pos.get(item.item_id, (pos, item.item_id)), (pos, item.item_id))
            by_id[item.item_id] = item
    ranked = sorted(counts, key=lambda i: (-counts[i], first_pos[i]))
    return [by_id[i] for i in ranked[: config.n_imagined]]


def imagine_histories(
    users: Sequence[tuple[str, dict[str, str], Sequence[Event]]],
    backend: LLMBackend,
    config: ColdStartConfig,
    catalogue: Catalogue,
    examples: ExamplePool,
    cache_path: str | Path | None = None,
    adapter: str | None = None,
    attrs: AttributeVocab | None = None,
    behaviors: BehaviorVocab | None = None,
) -> tuple[list[ImaginedHistory], ColdStartStats]:
    """Imagined histories for the cold users among `users` (user_id, profile, events), cached per user.

    Users with more than `config.max_events` events are skipped and counted (`stats.not_cold`). `behaviors`:
    the dataset's vocabulary, whose imagined type (`imagined_behavior`) the prompt's verbs follow.
    """
    behavior = imagined_behavior(config, behaviors)
    t0 = time.perf_counter()
    stats = ColdStartStats(n_users=len(users))
    cache = _read_cache(cache_path)
    items_by_id = {i.item_id: i for i in catalogue.items}
    results: dict[str, ImaginedHistory] = {}
    todo: list[tuple[str, str, dict[str, str], Sequence[Event], list[ExampleUser]]] = []
    for user_id, profile, events in users:
        if len(events) > config.max_events:
            stats.not_cold += 1
            continue
        key = history_key(profile, events, config)
        hit = cache.get(user_id)
        if hit is not None and hit.key == key:
            results[user_id] = hit
            stats.cached += 1
            continue
        todo.append((user_id, key, profile, events, examples.similar(user_id, profile, config.n_examples)))
    prompts = [imagine_messages(profile, [items_by_id[e.item_id] for e in events if e.item_id in items_by_id], exs,
                                config, attrs, behavior) for _, _, profile, events, exs in todo]
    # Prose around the JSON is cut (unconstrained backends add it); a budget-truncated answer is closed.
    outcomes, gen = generate_validated(backend, prompts, schema=imagine_wire(config.n_imagined),
                                       check=_refuse_placeholders, fallback=lambda i: None,
                                       config=coldstart_settings(config, adapter), repair=repair_unconstrained)
    answers = {i: r.value for i, r in enumerate(outcomes) if not r.fallback}
    stats.valid_first, stats.valid_retry = gen.valid_first, gen.valid_retry
    stats.parse_failures, stats.semantic_failures = gen.parse_failures, gen.semantic_failures
    stats.errors = [f"user {todo[e['index']][0]} attempt {e['attempt']}: {e['kind']}: {e['reason']}: {e['raw'][:80]!r}"
                    for e in gen.examples[:5]]
    stats.generated = len(todo)
    new = _map_answers(todo, answers, catalogue, config)
    results.update(new)
    _tally(results.values(), stats)  # cached and new histories alike
    if cache_path is not None and new:
        cache.update(new)
        _write_cache(cache_path, cache)
    stats.seconds = time.perf_counter() - t0
    order = [u for u, _, events in users if len(events) <= config.max_events]
    return [results[u] for u in dict.fromkeys(order)], stats


def _map_answers(todo, answers, catalogue: Catalogue, config: ColdStartConfig) -> dict[str, ImaginedHistory]:
    """Map every imagined title to its nearest catalogue item (one encoder batch for all users)."""
    texts = [content_text(m.t, m.y, m.g) for i in sorted(answers) for m in answers[i].m]
    best, sims, _ = catalogue.nearest(texts) if texts else (np.zeros(0, int), np.zeros(0), None)
    out, pos = {}, 0
    for i, (user_id, key, _, _, exs) in enumerate(todo):
        if i not in answers:
            items = tuple(ImaginedItem(title=it.title, genres=it.genres, year=it.year, item_id=it.item_id, similarity=1.0)
                          for it in _fallback(exs, config))
            out[user_id] = ImaginedHistory(user_id=user_id, key=key, items=items, source="fallback")
            continue
        items = []
        for m in answers[i].m:
            sim = float(sims[pos])
            matched = catalogue.items[int(best[pos])].item_id if sim >= config.sim_threshold else None
            items.append(ImaginedItem(title=m.t, genres=tuple(m.g), year=m.y, item_id=matched, similarity=sim))
            pos += 1
        out[user_id] = ImaginedHistory(user_id=user_id, key=key, items=tuple(items))
    return out


def _tally(histories, stats: ColdStartStats) -> None:
    """Fallbacks, and the imagined items (LLM histories only) matched to the catalogue or kept as content."""
    sims = []
    for h in histories:
        if h.source == "fallback":
            stats.fallback += 1
            continue
        stats.n_imagined += len(h.items)
        stats.n_matched += sum(i.item_id is not None for i in h.items)
        sims += [i.similarity for i in h.items]
    stats.n_unmatched = stats.n_imagined - stats.n_matched
    stats.mean_similarity = float(np.mean(sims)) if sims else 0.0


def _read_cache(path: str | Path | None) -> dict[str, ImaginedHistory]:
    if path is None or not Path(path).is_file():
        return {}
    raw = json.loads(Path(path).read_text())
    try:
        return {u: ImaginedHistory.model_validate(h) for u, h in raw.items()}
    except ValidationError as e:
        raise ValueError(f"{path}: bad cold-start cache entry: {e.errors()[0]}") from e


def _write_cache(path: str | Path, cache: dict[str, ImaginedHistory]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({u: h.model_dump(mode="json") for u, h in sorted(cache.items())}, indent=1) + "\n")
    tmp.replace(path)
