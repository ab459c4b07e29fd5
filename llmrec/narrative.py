"""User history -> a text narrative under a token budget (RecGPT §2.1.1). Pure and deterministic.

Steps, all vectorised over every user at once (`render_narratives`):

1. Leakage guard: only events strictly before the user's `as_of` are read (`as_of=None`: one second after
   the user's last event, i.e. the whole history).
2. Intentional behaviours only: events whose behaviour has no weight are dropped and counted per behaviour in
   `NarrativeReport.dropped_behaviors`. Weights: an explicitly set `NarrativeConfig.behavior_weights` is the
   whole intentional set; the default one is extended by the common types' weights and the dataset's
   declared ones (`llmrec.data.behaviors.narrative_weights`).
3. Time buckets relative to `as_of` (age in whole days, `d`):
   `d == 0` -> `today`; `d < recent_days` -> `{d}d ago`; `d < monthly_days` -> the event's calendar month,
   `Mar 1998`; older -> its year, `1997`.
4. Reverse aggregation: one entry per item. Its events collapse into distinct (bucket, behaviour) pairs,
   repeated pairs get a count (`clicked x3`; in a count log, `value_meaning == "count"`, the sum of the
   events' values: `play x7`); at most `max_pairs_per_item` pairs stay (the most informative),
   shown most recent first. The item is rendered by key attributes only: title, year, first `max_genres`
   genres.
5. Budget: each event scores `weight(behaviour) * 0.5 ** (age_days / recency_half_life_days)`; an entry
   scores its best event. Entries are taken best-first (ties: more recent, then item id) while the whole
   text fits `max_tokens` tokens of the LLM's own tokenizer; the rest, the least informative and oldest
   material, is dropped whole (never cut mid-entry). Kept entries are printed most recent first.

Exact format, one line per item, lines joined by "\\n", no header and no trailing newline::

    <pair>[, <pair>...] | <title> (<year>; <genre>, <genre>)
    pair := <bucket> <behaviour>[ x<count>]

e.g. ``2d ago liked, Mar 1998 watched x2 | Star Wars (1977; Action, Adventure, Sci-Fi)``. Without a year
the item reads ``Title (Genre, Genre)``, without genres ``Title (1977)``, with neither just ``Title``.
A dataset with search events (`queries=`) gets one more line after the item lines,
``searched: "<query>" (<bucket>), ...``, newest first, within at most a quarter of the budget
(`llmrec.narrative_queries`); the item lines get what is left.

Token counting is fast because the format only joins parts at pre-tokenizer boundaries: for byte-level BPE
tokenizers with the GPT-2 split regex (SmolLM2's), tokens never span "<behaviour>", ", <pair>", " | <item>"
and "\\n", so a text's count is the sum of its parts' counts, each part tokenized once (and cached). A probe
checks that property per tokenizer; when it does not hold, or `count_mode="exact"`, every narrative is
re-tokenized whole and trimmed entry by entry until it fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from llmrec.config import NarrativeConfig
from llmrec.data.behaviors import BehaviorVocab, narrative_weights
from llmrec.narrative_queries import query_lines
from llmrec.schema import Item, Narrative, UserHistory
from llmrec.llm.tokens import TokenCounter, load_narrative_tokenizer, token_counter

__all__ = ["NarrativeReport", "TokenCounter", "bucket_label", "items_frame", "load_narrative_tokenizer",
           "render_item", "render_narrative", "render_narratives", "token_counter"]

SECOND_NS = 1_000_000_000
DAY_S = 86_400
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_CODE, _YEAR_CODE = 1 << 24, 1 << 25  # bucket codes: days < 2^24 <= months < 2^25 <= years


@dataclass
class NarrativeReport:
    """What the narrative step left out, so nothing is dropped silently."""

    users: int = 0
    events_in: int = 0  # events strictly before as_of
    events_after_as_of: int = 0  # not read: at or after the user's as_of (or the user has no as_of)
    dropped_behaviors: dict[str, int] = field(default_factory=dict)  # not intentional, by behaviour
    unknown_items: int = 0  # events whose item is missing from the items table
    pairs_over_cap: int = 0  # (bucket, behaviour) pairs beyond max_pairs_per_item
    entries_over_budget: int = 0  # whole item entries left out to fit max_tokens

    def to_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


# --- Rendering parts -------------------------------------------------------------------------------


def render_item(title: str, year: int | None, genres, max_genres: int) -> str:
    """`Title (1977; Action, Sci-Fi)`: key attributes only, on one line."""
    title = " ".join(str(title).split())
    attrs = ", ".join(" ".join(str(g).split()) for g in list(genres)[:max_genres])
    inner = "; ".join(x for x in (None if year is None else str(int(year)), attrs or None) if x)
    return f"{title} ({inner})" if inner else title


def bucket_label(code: int) -> str:
    """Label of a bucket code from `_bucket_codes`."""
    if code >= _YEAR_CODE:
        return str(code - _YEAR_CODE + 1970)
    if code >= _MONTH_CODE:
        months = code - _MONTH_CODE
        return f"{_MONTH_NAMES[months % 12]} {1970 + months // 12}"
    return "today" if code == 0 else f"{code}d ago"


def _bucket_label_at(ts_s: int, cut_s: int, config: NarrativeConfig) -> str:
    """The bucket label of one time (epoch seconds) seen from `cut_s`, as the item lines label events."""
    code = _bucket_codes(np.array([ts_s]), np.array([(cut_s - ts_s) // DAY_S]), config)[0]
    return bucket_label(int(code))


def _to_ns(values) -> np.ndarray:
    """Any datetime-like array/Series -> int64 ns since epoch (UTC; naive taken as UTC; NaT -> int64 min)."""
    return pd.to_datetime(pd.Series(values), utc=True).dt.as_unit("ns").array.asi8


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    """(E,) int64 seconds since epoch, without materialising Timestamp objects."""
    if not isinstance(ts.dtype, pd.DatetimeTZDtype) and ts.dtype.kind != "M":
        ts = pd.to_datetime(ts, utc=True)
    return ts.array.as_unit("s").asi8


def _runs(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted key array."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def _run_start_of(keys: np.ndarray) -> np.ndarray:
    """For a sorted key array, each row's index of the first row of its run."""
    starts = _runs(keys)
    return np.repeat(starts, np.diff(np.r_[starts, len(keys)]))


def _running_sum_per_user(values: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Cumulative sum of `values` that restarts where the (sorted) `users` value changes."""
    cum = np.cumsum(values)
    return cum - (cum - values)[_run_start_of(users)]


def _rank_in_runs(keys: np.ndarray) -> np.ndarray:
    """For a sorted key array, each row's position within its run (0 = first)."""
    return np.arange(len(keys)) - _run_start_of(keys)


def _bucket_codes(ts_s: np.ndarray, age_days: np.ndarray, config: NarrativeConfig) -> np.ndarray:
    """(K,) bucket code per event: age in days, or _MONTH_CODE + months / _YEAR_CODE + years since 1970."""
    days = ts_s // DAY_S
    codes, uniq = pd.factorize(days)  # calendar maths only on the distinct days
    day64 = uniq.astype("datetime64[D]")
    months = day64.astype("datetime64[M]").astype(np.int64)[codes]
    years = day64.astype("datetime64[Y]").astype(np.int64)[codes]
    return np.where(age_days < config.recent_days, age_days,
                    np.where(age_days < config.monthly_days, _MONTH_CODE + months, _YEAR_CODE + years))


# --- The batch path --------------------------------------------------------------------------------


def render_narratives(
    events: pd.DataFrame,
    items: pd.DataFrame | Mapping[str, Item],
    as_of: pd.Timestamp | datetime | pd.Series | None = None,
    config: NarrativeConfig | None = None,
    tokenizer: Any = None,
    report: NarrativeReport | None = None,
    behaviors: BehaviorVocab | None = None,
    queries: pd.DataFrame | None = None,
) -> list[Narrative]:
    """One narrative per user, ordered by user id.

    Args:
        events: canonical events (user_id, item_id, timestamp, behavior).
        items: canonical items table (item_id, title, genres, year), or `Dataset.item_index`.
        as_of: one time for everyone, a per-user Series indexed by user_id (users only in the Series get an
            empty narrative; events of users not in it are not read), or None (each user's whole history).
        tokenizer: the LLM's tokenizer (`load_narrative_tokenizer()`), or a `TokenCounter`.
        report: filled with what was left out (dropped behaviours, events after as_of, ...).
        behaviors: the dataset's vocabulary (`Dataset.behavior_vocab`): weights of its declared types.
        queries: the dataset's search events (`Dataset.queries`): a last line of recent queries.
    """
    config = config or NarrativeConfig()
    if tokenizer is None:
        raise ValueError("render_narratives needs the LLM's tokenizer: pass load_narrative_tokenizer(model)")
    counter = token_counter(tokenizer)
    report = report if report is not None else NarrativeReport()
    if isinstance(items, Mapping):
        items = items_frame(items)
    counted = behaviors is not None and behaviors.value_meaning == "count" and "value" in events
    ev = _visible_events(events, items, as_of, config, report, narrative_weights(config, behaviors), counted)
    nl = int(counter.count(["\n"])[0])
    q_line, q_tok = query_lines(queries, ev.users, ev.cut_ns, config.max_tokens, counter,
                                lambda ts, cut: _bucket_label_at(ts, cut, config))
    has_q = np.array([line is not None for line in q_line], dtype=bool)
    budget = config.max_tokens - np.where(has_q, q_tok + nl, 0)  # (U,) tokens left for the item lines
    cat_ids = items["item_id"].astype(str).to_numpy()
    n_users, n_cat = len(ev.users), len(cat_ids)

    pairs = _group_pairs(ev, n_cat, config, report)
    pair_text, pair_code, e_start, e_len, p_tok = _pair_tokens(pairs, len(ev.beh_names), ev.beh_names, counter)
    p_entry, p_ts, p_score = pairs.entry, pairs.ts, pairs.score

    # Entries: one per (user, item), best first (score, recency, item id).
    e_u, e_cat = p_entry[e_start] // n_cat, p_entry[e_start] % n_cat
    e_score = np.maximum.reduceat(p_score, e_start) if len(e_start) else p_score[:0]
    e_ts = np.maximum.reduceat(p_ts, e_start) if len(e_start) else p_ts[:0]
    id_order = np.argsort(cat_ids, kind="stable")
    id_rank = np.empty(n_cat, dtype=np.int64)
    id_rank[id_order] = np.arange(n_cat)
    id_rank = id_rank[e_cat]  # item id order, for ties
    best = np.lexsort((id_rank, -e_ts, -e_score, e_u))
    e_tok = np.add.reduceat(p_tok, e_start) if len(e_start) else p_tok[:0]  # pairs only, items added below
    # Budget: sum(tok + newline) - newline <= max_tokens over a prefix of the best-first order. An item part
    # has >= 1 token, so with additive counts only entries whose lower-bound running sum fits can be kept:
    # render and count items for those candidates only (a 37k-event user has thousands of entries).
    lower = _running_sum_per_user(e_tok[best] + 1 + nl, e_u[best])
    cand = best[lower <= budget[e_u[best]] + nl] if counter.additive else best
    item_text = np.empty(n_cat, dtype=object)
    item_tok = np.zeros(n_cat, dtype=np.int64)
    cat_used = np.unique(e_cat[cand])
    item_text[cat_used] = [" | " + t for t in _render_items(items, cat_used, config)]  # the entry's tail
    item_tok[cat_used] = counter.count(list(item_text[cat_used]))
    e_tok = e_tok + item_tok[e_cat]  # exact for candidates; the rest cannot fit anyway
    cum = _running_sum_per_user(e_tok[cand] + nl, e_u[cand])
    fits = np.zeros(len(e_u), dtype=bool)
    fits[cand] = cum <= budget[e_u[cand]] + nl
    report.entries_over_budget += int((~fits).sum())
    parts = _Parts(pair_text, pair_code, e_start, e_len, item_text, e_u, e_cat, e_ts, e_score, e_tok, id_rank, nl)
    texts, n_tok, n_items, lines_of = _assemble(parts, np.flatnonzero(fits), n_users)
    if config.count_mode == "exact" or not counter.additive:
        _trim_exact(parts, fits, counter, budget, report, texts, n_tok, n_items, lines_of)
    for i in np.flatnonzero(has_q):  # after the item lines: their numbers stay the lines the LLM may cite
        texts[i] = texts[i] + "\n" + q_line[i] if texts[i] else q_line[i]
        n_tok[i] += q_tok[i] + (nl if n_items[i] else 0)

    as_of_dt = pd.to_datetime(ev.cut_ns, utc=True).to_pydatetime()
    return [
        Narrative(user_id=str(ev.users[i]), text=texts[i], as_of=as_of_dt[i], n_events_in=int(ev.n_in[i]),
                  n_items_out=int(n_items[i]), n_tokens=int(n_tok[i]), max_tokens=config.max_tokens,
                  item_ids=tuple(cat_ids[lines_of[i]].tolist()))
        for i in range(n_users)
    ]


@dataclass
class _Pairs:
    """(user, item, bucket, behaviour) groups of visible events, (P,) arrays in display order."""

    entry: np.ndarray  # user * n_catalogue + catalogue index
    bucket: np.ndarray
    beh: np.ndarray
    n: np.ndarray  # events in the pair
    ts: np.ndarray  # latest event time
    score: np.ndarray  # best informativeness score


def _group_pairs(ev: "_Visible", n_cat: int, config: NarrativeConfig, report: NarrativeReport) -> _Pairs:
    """Pairs: (user, item, bucket, behaviour) -> count, last time, best score, at most max_pairs_per_item each."""
    # Sorting by one int64 key groups events by entry (user, item) and, inside it, by pair.
    entry = ev.u.astype(np.int64) * n_cat + ev.cat  # (K,)
    b_idx, b_uniq = pd.factorize(ev.bucket)
    n_beh = max(len(ev.beh_names), 1)
    order = np.argsort((entry * len(b_uniq) + b_idx) * n_beh + ev.beh, kind="stable")
    pkey = ((entry * len(b_uniq) + b_idx) * n_beh + ev.beh)[order]
    starts = _runs(pkey)  # (P,)
    p_entry, p_bucket, p_beh = entry[order][starts], b_uniq[b_idx[order][starts]], ev.beh[order][starts]
    p_n = np.diff(np.r_[starts, len(pkey)])
    if ev.times is not None and len(starts):  # a count log: "play x7" says the user played it 7 times
        p_n = np.add.reduceat(ev.times[order], starts)
    p_ts = np.maximum.reduceat(ev.ts[order], starts) if len(starts) else ev.ts[:0]
    p_score = np.maximum.reduceat(ev.score[order], starts) if len(starts) else ev.score[:0]
    pairs = _Pairs(p_entry, p_bucket, p_beh, p_n, p_ts, p_score)
    if not len(p_entry) or np.diff(np.r_[_runs(p_entry), len(p_entry)]).max() <= 1:
        return pairs  # no item has several pairs
    # Keep the best max_pairs_per_item pairs of each entry (score, then recency, then behaviour name).
    by_rank = np.lexsort((p_beh, -p_ts, -p_score, p_entry))
    keep = np.zeros(len(p_entry), dtype=bool)
    keep[by_rank] = _rank_in_runs(p_entry[by_rank]) < config.max_pairs_per_item
    report.pairs_over_cap += int((~keep).sum())
    # Display order inside an entry: most recent first, then behaviour name.
    disp = np.flatnonzero(keep)[np.lexsort((p_beh[keep], -p_ts[keep], p_entry[keep]))]
    return _Pairs(*(a[disp] for a in (p_entry, p_bucket, p_beh, p_n, p_ts, p_score)))


def _pair_tokens(pairs: _Pairs, n_names: int, beh_names, counter: Any):
    """Texts of the distinct pairs, each pair's code, entry starts/lengths and each pair's token count.

    Distinct pair texts are few: render and count each once, at the head of an entry or after ", ".
    """
    n_beh = max(n_names, 1)
    p_entry, p_bucket, p_beh, p_n = pairs.entry, pairs.bucket, pairs.beh, pairs.n
    pair_code, pair_uniq = pd.factorize((p_bucket * n_beh + p_beh) * (p_n.max(initial=1) + 1) + p_n)
    pn_u = pair_uniq % (p_n.max(initial=1) + 1)
    pb_u = pair_uniq // (p_n.max(initial=1) + 1)
    pair_text = np.array([f"{bucket_label(int(b // n_beh))} {beh_names[b % n_beh]}" + (f" x{n}" if n > 1 else "")
                          for b, n in zip(pb_u, pn_u)], dtype=object)
    e_start = _runs(p_entry)  # (N,) first pair of each entry
    e_len = np.diff(np.r_[e_start, len(p_entry)])
    head = np.zeros(len(p_entry), dtype=bool)
    head[e_start] = True
    tok_head, tok_tail = counter.count(list(pair_text)), counter.count([", " + t for t in pair_text])
    p_tok = np.where(head, tok_head[pair_code], tok_tail[pair_code])
    return pair_text, pair_code, e_start, e_len, p_tok


@dataclass
class _Visible:
    """Events that may enter a narrative; arrays are (K,), per-user arrays (U,)."""

    users: np.ndarray
    cut_ns: np.ndarray
    n_in: np.ndarray
    u: np.ndarray
    cat: np.ndarray
    ts: np.ndarray
    beh: np.ndarray
    beh_names: np.ndarray
    score: np.ndarray
    bucket: np.ndarray
    times: np.ndarray | None = None  # (K,) how many times each event counts (a count log's value), None: once


def _visible_events(events: pd.DataFrame, items: pd.DataFrame, as_of, config: NarrativeConfig,
                    report: NarrativeReport, behavior_weights: dict[str, float], counted: bool = False) -> _Visible:
    """Leakage guard, intentional behaviours, known items; scores and time buckets per event (`counted`: the
    value column is a count, so an event stands for that many)."""
    ts_s = _epoch_seconds(events["timestamp"])  # (E,)
    if isinstance(as_of, pd.Series):
        cut = as_of.copy()
        cut.index = cut.index.astype(str)
        cut = cut[cut.notna()]
        users = np.array(sorted(set(events["user_id"].unique()) | set(cut.index)), dtype=object)
        users = users[pd.Index(users).isin(cut.index)]
        u = pd.Index(users).get_indexer(events["user_id"])  # -1: user without as_of
        cut_ns = _to_ns(cut.reindex(users).to_numpy())
    else:
        u, users = pd.factorize(events["user_id"], sort=True)
        users = np.asarray(users, dtype=object)
        if as_of is None:  # one second after each user's last event
            last = np.full(len(users), np.iinfo(np.int64).min)
            np.maximum.at(last, u, ts_s)
            cut_ns = (last + 1) * SECOND_NS
        else:
            cut_ns = np.full(len(users), _to_ns([as_of])[0])
    cut_ceil_s = -(-cut_ns // SECOND_NS)  # ts (whole seconds) < as_of  <=>  ts < ceil(as_of)
    keep = (u >= 0) & (ts_s < cut_ceil_s[np.maximum(u, 0)])
    report.users += len(users)
    report.events_after_as_of += int((~keep).sum())
    n_in = np.bincount(u[keep], minlength=len(users))  # (U,)
    report.events_in += int(n_in.sum())

    beh_codes, beh_names = pd.factorize(events["behavior"], sort=True)  # whole column: arrow's fast path
    beh_codes = beh_codes[keep]
    weights = np.array([behavior_weights.get(b, np.nan) for b in beh_names], dtype=np.float64)
    w = weights[beh_codes] if len(beh_names) else np.zeros(0)
    intentional = ~np.isnan(w)
    for b, n in zip(beh_names, np.bincount(beh_codes[~intentional], minlength=len(beh_names))):
        if n:
            report.dropped_behaviors[b] = report.dropped_behaviors.get(b, 0) + int(n)

    rows = np.flatnonzero(keep)[intentional]
    it_codes, it_names = pd.factorize(events["item_id"])
    cat = pd.Index(items["item_id"].astype(str)).get_indexer(np.asarray(it_names).astype(str))[it_codes[rows]]
    known = cat >= 0
    report.unknown_items += int((~known).sum())
    rows, cat = rows[known], cat[known]
    ku, kts = u[rows], ts_s[rows]
    age_days = (cut_ns[ku] // SECOND_NS - kts) // DAY_S  # (K,) >= 0
    times = None
    if counted:  # a missing or zero count still is one event
        times = np.maximum(np.nan_to_num(np.rint(events["value"].to_numpy(dtype=np.float64)[rows]), nan=1.0), 1)
        times = times.astype(np.int64)
    return _Visible(
        users=users, cut_ns=cut_ns, n_in=n_in, u=ku, cat=cat.astype(np.int64), ts=kts,
        beh=beh_codes[intentional][known].astype(np.int64), beh_names=np.asarray(beh_names, dtype=object),
        score=w[intentional][known] * 0.5 ** (age_days / config.recency_half_life_days),
        bucket=_bucket_codes(kts, age_days, config), times=times,
    )


def _render_items(items: pd.DataFrame, rows: np.ndarray, config: NarrativeConfig) -> list[str]:
    """`render_item` for many rows, without per-row pandas access."""
    sub = items.iloc[rows]
    titles = sub["title"].tolist()
    years = sub["year"].astype("Float64").fillna(-1).astype(np.int64).tolist() if "year" in sub else [-1] * len(sub)
    genres = sub["genres"].tolist() if "genres" in sub else [()] * len(sub)
    return [render_item(t, None if y < 0 else y, () if g is None else g, config.max_genres)
            for t, y, g in zip(titles, years, genres)]


@dataclass
class _Parts:
    """Rendered pieces: pairs (P,) in display order, entries (N,) pointing at their pair runs."""

    pair_text: np.ndarray
    pair_code: np.ndarray
    e_start: np.ndarray
    e_len: np.ndarray
    item_text: np.ndarray  # " | <rendered item>" per catalogue row (only where needed)
    e_u: np.ndarray
    e_cat: np.ndarray
    e_ts: np.ndarray
    e_score: np.ndarray
    e_tok: np.ndarray
    id_rank: np.ndarray
    nl: int


def _assemble(parts: _Parts, kept: np.ndarray, n_users: int
              ) -> tuple[list[str], np.ndarray, np.ndarray, list[np.ndarray]]:
    """Texts of the kept entries (indices), most recent first; token counts as the sum of the parts; the
    catalogue rows of each user's lines, in line order."""
    p = parts
    kept = kept[np.lexsort((p.id_rank[kept], -p.e_ts[kept], p.e_u[kept]))]
    start, n = p.e_start[kept], p.e_len[kept]
    head = p.pair_text[p.pair_code[start]]
    for r in range(1, int(n.max(initial=1))):  # pairs at position 1, 2, ... (at most max_pairs_per_item - 1)
        more = np.flatnonzero(n > r)
        head[more] = head[more] + ", " + p.pair_text[p.pair_code[start[more] + r]]
    lines = (head + p.item_text[p.e_cat[kept]]).tolist() if len(kept) else []
    ku = p.e_u[kept]
    bounds = np.searchsorted(ku, np.arange(n_users + 1)).tolist()
    texts = ["\n".join(lines[bounds[i]:bounds[i + 1]]) for i in range(n_users)]
    n_items = np.diff(np.asarray(bounds))
    tok = np.bincount(ku, weights=p.e_tok[kept], minlength=n_users).astype(np.int64)
    n_tok = np.where(n_items > 0, tok + p.nl * (n_items - 1), 0)
    cats = p.e_cat[kept]
    return texts, n_tok, n_items, [cats[bounds[i]:bounds[i + 1]] for i in range(n_users)]


def _trim_exact(parts: _Parts, fits: np.ndarray, counter: TokenCounter, budget: np.ndarray,
                report: NarrativeReport, texts: list[str], n_tok: np.ndarray, n_items: np.ndarray,
                lines_of: list[np.ndarray]) -> None:
    """Exact mode: re-tokenize every text whole; drop the lowest-scored entry until it fits (in place)."""
    n_tok[:] = counter.encode_lengths(texts)
    p = parts
    for i in np.flatnonzero(n_tok > budget):
        mine = np.flatnonzero(fits & (p.e_u == i))
        mine = mine[np.lexsort((p.id_rank[mine], -p.e_ts[mine], -p.e_score[mine]))]  # best first
        while n_tok[i] > budget[i] and len(mine):
            mine = mine[:-1]
            report.entries_over_budget += 1
            t, _, _, cats = _assemble(p, mine, len(n_tok))
            texts[i], n_items[i], lines_of[i] = t[i], len(mine), cats[i]
            n_tok[i] = counter.encode_lengths([t[i]])[0] if t[i] else 0


# --- One user ------------------------------------------------------------------------------------


def render_narrative(history: UserHistory, items: dict[str, Item], as_of: datetime | pd.Timestamp | None,
                     config: NarrativeConfig | None = None, tokenizer: Any = None,
                     report: NarrativeReport | None = None) -> Narrative:
    """One user's narrative; the same code path as `render_narratives` (a one-user batch)."""
    events = pd.DataFrame(
        {
            "user_id": [history.user_id] * len(history.events),
            "item_id": [e.item_id for e in history.events],
            "timestamp": pd.to_datetime([e.timestamp for e in history.events], utc=True),
            "behavior": [e.behavior for e in history.events],
        }
    )
    if as_of is None and not history.events:
        raise ValueError(f"user {history.user_id!r} has no events: pass as_of for an empty narrative")
    needed = {e.item_id: items[e.item_id] for e in history.events if e.item_id in items}
    cut = pd.Series([as_of], index=[history.user_id]) if as_of is not None else None
    return render_narratives(events, items_frame(needed), cut, config, tokenizer, report)[0]


def items_frame(items: Mapping[str, Item]) -> pd.DataFrame:
    """`Dataset.item_index`-style records -> the items table the batch path reads."""
    ids = sorted(items)
    return pd.DataFrame(
        {
            "item_id": ids,
            "title": [items[i].title for i in ids],
            "genres": [list(items[i].genres) for i in ids],
            "year": pd.array([items[i].year for i in ids], dtype="Int32"),
        }
    )
