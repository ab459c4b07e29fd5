"""RecGPT-style explanations: one per (interest, item) pair, generated in batch, served from a lookup table.

Why per pair and not per (user, item): many users share an interest ("1990s romantic comedies") and many
are recommended the same items, so the table is far smaller than users x items and the request path
reads it without calling the LLM.

Each pair gets one chat (`prompts/explain.jinja`, with two worked examples), decoded under a compact JSON
schema {"e": sentence} and validated with the same pydantic model. Faithfulness (`check_faithful`): apart
from the interest phrase itself and the title, an explanation may name only attributes the item really has
(genres and decade, read with the `llmrec.tags` vocabulary; a four-digit year must be the item's year), and
no other interest of the batch. So "Scream, a horror comedy, for your love of romantic comedy" fails: the
interest may be named, its attributes may not be pinned on an item that lacks them.
Invalid or unfaithful answers are regenerated `config.retries` times at `retry_temperature`; what still
fails is replaced by a template, marked `flagged=True`, so a reader can always tell the two apart.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, create_model

from llmrec.config import ExplainConfig
from llmrec.jobs import SHARD_STATS
from llmrec.llm import LLMBackend, Messages
from llmrec.llm.prompts import prompt_hash, render_prompt
from llmrec.schema import Explanation, Item
from llmrec.tags import item_attributes, tag_attributes

PROMPT = "explain"
TABLE_FILE = "explanations.parquet"
MIN_WORDS = 3  # fewer words is not an explanation
_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")
# Words the tag vocabulary maps to a genre but that explanations use as plain verbs ("you'll love it").
_VERB_SENSE = re.compile(r"\b(love|loves|loved|loving)\b")
TABLE_SCHEMA = pa.schema(
    [
        pa.field("interest", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("faithful", pa.bool_(), nullable=False),
        pa.field("flagged", pa.bool_(), nullable=False),
    ]
)


@lru_cache(maxsize=8)
def explain_wire(max_chars: int) -> type[BaseModel]:
    """The answer model {"e": sentence}; its JSON schema constrains decoding."""
    text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=8, max_length=max_chars)]
    return create_model("WireExplanation", __config__=ConfigDict(extra="forbid", frozen=True), e=(text, ...))


def normalize_interest(interest: str) -> str:
    """The table key form of an interest: casefolded, single spaces."""
    return " ".join(interest.casefold().split())


def _genre_list(item: Item, n: int) -> list[str]:
    return [g for g in item.genres if g.lower() != "unknown"][:n]


def explain_messages(interest: str, item: Item, config: ExplainConfig) -> Messages:
    """The chat for one (interest, item) pair."""
    genres = _genre_list(item, config.max_genres)
    return render_prompt(PROMPT, interest=interest, title=item.title, year=item.year or "",
                         genres=", ".join(genres) if genres else "not given", max_words=max(8, config.max_chars // 6))


def template_explanation(interest: str, item: Item, config: ExplainConfig) -> Explanation:
    """The flagged stand-in: names only the interest and the item's own genres and year."""
    genres = ", ".join(g.lower() for g in _genre_list(item, config.max_genres))
    kind = f"a {genres} film" if genres else "a film"
    when = f" from {item.year}" if item.year is not None else ""
    return Explanation(interest=interest, item_id=item.item_id, text=f"Because you like {interest}: {item.title} is {kind}{when}.",
                       faithful=True, flagged=True)


def check_faithful(text: str, interest: str, item: Item, other_interests: Iterable[str] = ()) -> str | None:
    """None when `text` names only what the item has and what `interest` names; else the reason it fails."""
    low = " ".join(text.casefold().split())
    own = normalize_interest(interest)
    # The title and the interest may contain genre words ("Star Wars", "sci-fi classics"): mask them first.
    masked = low
    for phrase in sorted({item.title.casefold(), own}, key=len, reverse=True):
        if phrase:
            masked = masked.replace(phrase, " ")
    masked = _VERB_SENSE.sub(" ", masked)
    extra = set(tag_attributes(masked) or ()) - item_attributes(item)
    if extra:
        return f"names {sorted(extra)}, which item {item.item_id} does not have"
    years = {int(y) for y in _YEAR.findall(masked)}
    if years - {item.year}:
        return f"names year(s) {sorted(years - {item.year})}, item {item.item_id} is from {item.year}"
    for other in other_interests:
        o = normalize_interest(other)
        if o and o != own and o not in own and re.search(rf"\b{re.escape(o)}\b", low):
            return f"names another interest {other!r}"
    return None


@dataclass
class ExplainStats:
    n_pairs: int = 0
    valid_first: int = 0  # valid JSON at the first attempt
    faithful_first: int = 0  # valid and faithful at the first attempt
    regenerated: int = 0  # pairs sent back to the model at least once
    llm_final: int = 0  # pairs whose stored explanation is the model's
    templated: int = 0  # pairs that got the flagged template
    invalid: int = 0  # answers (all attempts) that failed JSON validation
    unfaithful: int = 0  # answers (all attempts) that were valid but unfaithful
    n_output_tokens: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # a few failure reasons, for the report

    @property
    def faithful_share(self) -> float:
        """Share of pairs whose first answer was valid and faithful."""
        return self.faithful_first / self.n_pairs if self.n_pairs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "faithful_share": self.faithful_share}


def _parse(text: str, config: ExplainConfig) -> str | None:
    """The sentence, or None for invalid JSON or a non-sentence (small models echo the format's "sentence")."""
    start, end = text.find("{"), text.rfind("}")  # unconstrained backends may wrap the JSON in prose
    try:
        sentence = explain_wire(config.max_chars).model_validate_json(text[start : end + 1] if 0 <= start < end else text).e
    except ValidationError:
        return None
    return sentence if len(sentence.split()) >= MIN_WORDS else None


def _generate(backend: LLMBackend, messages: list[Messages], config: ExplainConfig, temperature: float,
              adapter: str | None, stats: ExplainStats) -> list[str]:
    schema = explain_wire(config.max_chars).model_json_schema()
    texts: list[str] = []
    for start in range(0, len(messages), config.batch_size):
        gens = backend.generate(messages[start : start + config.batch_size], json_schema=schema,
                                max_tokens=config.max_tokens, temperature=temperature, adapter=adapter)
        stats.n_output_tokens += sum(g.n_output_tokens for g in gens)
        texts += [g.text for g in gens]
    return texts


def explain_pairs(pairs: Sequence[tuple[str, Item]], backend: LLMBackend, config: ExplainConfig,
                  adapter: str | None = None) -> tuple[list[Explanation], ExplainStats]:
    """One explanation per distinct (interest, item) pair, in first-seen order, with generation stats."""
    t0 = time.perf_counter()
    seen: dict[tuple[str, str], tuple[str, Item]] = {}
    for interest, item in pairs:
        seen.setdefault((normalize_interest(interest), item.item_id), (interest, item))
    todo = list(seen.values())
    interests = sorted({i for i, _ in todo})
    stats = ExplainStats(n_pairs=len(todo))
    done: dict[int, Explanation] = {}
    pending = list(range(len(todo)))
    for attempt in range(config.retries + 1):
        if not pending:
            break
        temperature = config.temperature if attempt == 0 else config.retry_temperature
        raw = _generate(backend, [explain_messages(*todo[i], config) for i in pending], config, temperature, adapter, stats)
        failed = []
        for i, text in zip(pending, raw):
            interest, item = todo[i]
            sentence = _parse(text, config)
            reason = "invalid JSON" if sentence is None else check_faithful(sentence, interest, item, interests)
            if reason is None:
                done[i] = Explanation(interest=interest, item_id=item.item_id, text=sentence, faithful=True)
                stats.valid_first += attempt == 0
                stats.faithful_first += attempt == 0
                continue
            stats.valid_first += attempt == 0 and sentence is not None
            stats.invalid += sentence is None
            stats.unfaithful += sentence is not None
            if len(stats.examples) < 5:
                stats.examples.append(f"{interest!r} x {item.item_id}: {reason}: {text[:80]!r}")
            failed.append(i)
        if attempt < config.retries:
            stats.regenerated += len(failed)
        pending = failed
    for i in pending:
        done[i] = template_explanation(*todo[i], config)
    stats.templated = len(pending)
    stats.llm_final = len(todo) - len(pending)
    stats.seconds = time.perf_counter() - t0
    return [done[i] for i in range(len(todo))], stats


# --- The lookup table ---------------------------------------------------------------------------


class ExplanationTable:
    """Explanations keyed by (normalised interest, item_id); a Parquet file plus config and manifest."""

    def __init__(self, explanations: Iterable[Explanation] = ()):
        self._rows: dict[tuple[str, str], Explanation] = {}
        self.update(explanations)

    def update(self, explanations: Iterable[Explanation]) -> None:
        for e in explanations:
            self._rows[(normalize_interest(e.interest), e.item_id)] = e

    def get(self, interest: str, item_id: str) -> Explanation | None:
        return self._rows.get((normalize_interest(interest), str(item_id)))

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return (normalize_interest(key[0]), str(key[1])) in self._rows

    def coverage(self, pairs: Iterable[tuple[str, str]]) -> float:
        """Share of (interest, item_id) pairs the table answers (e.g. the pairs an API would serve)."""
        pairs = list(pairs)
        return sum(p in self for p in pairs) / len(pairs) if pairs else 0.0

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([e.model_dump() for e in self._rows.values()], columns=TABLE_SCHEMA.names)

    def save(self, path: str | Path, config: ExplainConfig | None = None, manifest: dict[str, Any] | None = None) -> Path:
        """Write `path/explanations.parquet`, `config.json` and `manifest.json` (each atomically)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.to_frame(), schema=TABLE_SCHEMA, preserve_index=False)
        tmp = out / f".{TABLE_FILE}.tmp"
        pq.write_table(table, tmp)
        tmp.replace(out / TABLE_FILE)
        if config is not None:
            config.to_json(out / "config.json")
        meta = {"n_rows": len(self), "n_flagged": int(table["flagged"].to_pandas().sum()),
                "prompt_hashes": {PROMPT: prompt_hash(PROMPT)}, "package_version": _package_version(), **(manifest or {})}
        tmp = out / ".manifest.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n")
        tmp.replace(out / "manifest.json")
        return out

    @classmethod
    def load(cls, path: str | Path) -> "ExplanationTable":
        """Read a folder written by `save` (or a bare Parquet file); every row is re-validated."""
        path = Path(path)
        file = path / TABLE_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no explanation table")
        frame = pq.read_table(file).to_pandas()
        missing = set(TABLE_SCHEMA.names) - set(frame.columns)
        if missing:
            raise ValueError(f"{file}: missing columns {sorted(missing)}")
        rows = []
        for n, r in enumerate(frame[TABLE_SCHEMA.names].to_dict("records")):
            try:
                rows.append(Explanation(**r))
            except ValidationError as e:
                raise ValueError(f"{file}: row {n}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from e
        return cls(rows)


def _package_version() -> str:
    try:
        return importlib.metadata.version("llmrec")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- As a batch job (llmrec.jobs.run_sharded with key_column="pair_key") ------------------------

PAIR_SEP = "\x1f"


def pair_key(interest: str, item_id: str) -> str:
    """One job key per pair: "interest<US>item_id" (unit separator: never in an interest or an id)."""
    return f"{normalize_interest(interest)}{PAIR_SEP}{item_id}"


def make_explain_process(items: dict[str, Item], backend: LLMBackend, config: ExplainConfig,
                         adapter: str | None = None) -> Callable[[list[str]], pd.DataFrame]:
    """A `run_sharded` process: pair keys of one shard -> one row per pair, plus the `pair_key` column and the
    shard's `ExplainStats` as JSON (`llmrec.jobs.SHARD_STATS`; summed by `llmrec.jobs.sum_shard_stats`)."""

    def process(keys: list[str]) -> pd.DataFrame:
        pairs = []
        for key in keys:
            interest, _, item_id = key.partition(PAIR_SEP)
            if item_id not in items:
                raise KeyError(f"pair key {key!r}: item {item_id!r} is not in the catalogue")
            pairs.append((interest, items[item_id]))
        explanations, stats = explain_pairs(pairs, backend, config, adapter=adapter)
        frame = pd.DataFrame([e.model_dump() for e in explanations], columns=TABLE_SCHEMA.names)
        frame.insert(0, "pair_key", [pair_key(e.interest, e.item_id) for e in explanations])
        frame[SHARD_STATS] = json.dumps(stats.to_dict())
        return frame

    return process

