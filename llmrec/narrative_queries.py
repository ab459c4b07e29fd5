"""A user's recent search queries as the last line of their narrative (RecGPT feeds queries to the LLM).

A search names no item, so it is not an entry of the item lines (whose numbers the LLM cites as evidence):
it is one extra line after them, read by the LLM and never cited, never a retrieval target. Format::

    searched: "<query>" (<bucket>), "<query>" (<bucket>)

newest first, one mention per distinct query (its latest time), at most `MAX_QUERIES`, and only as many as
fit in `QUERY_SHARE` of the narrative's token budget: the item lines keep the rest. Leakage guard as for
events: only queries strictly before the user's as_of.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MAX_QUERIES = 10  # distinct queries shown per user
QUERY_SHARE = 0.25  # of NarrativeConfig.max_tokens, at most
MAX_QUERY_CHARS = 80  # a pasted paragraph is cut, not allowed to crowd out the items
SECOND_NS = 1_000_000_000


def render_query_line(queries: list[str], labels: list[str]) -> str:
    """`searched: "usb hub" (today), "earbuds" (3d ago)` for queries newest first."""
    parts = []
    for q, label in zip(queries, labels):
        text = " ".join(str(q).split())[:MAX_QUERY_CHARS].replace('"', "'")
        parts.append(f'"{text}" ({label})')
    return "searched: " + ", ".join(parts)


def query_lines(queries: pd.DataFrame, users: np.ndarray, cut_ns: np.ndarray, max_tokens: int, counter,
                label_of) -> tuple[list[str | None], np.ndarray]:
    """Per user (U,) the query line (None: no query before as_of) and its exact token count.

    Args:
        queries: user_id, timestamp, query (`Dataset.queries`).
        users, cut_ns: the narrative's users and their as_of in ns (only earlier queries are read).
        label_of: (ts_s, cut_s) -> the time-bucket label the item lines use.
    """
    lines: list[str | None] = [None] * len(users)
    tok = np.zeros(len(users), dtype=np.int64)
    if queries is None or not len(queries):
        return lines, tok
    pos = pd.Index(users).get_indexer(queries["user_id"].astype(str))
    ts_s = pd.to_datetime(queries["timestamp"], utc=True).array.as_unit("s").asi8
    keep = (pos >= 0) & (ts_s * SECOND_NS < cut_ns[np.maximum(pos, 0)])
    q = pd.DataFrame({"u": pos[keep], "ts": ts_s[keep], "query": queries["query"].astype(str).to_numpy()[keep]})
    q = q.sort_values(["u", "ts"], ascending=[True, False], kind="mergesort").drop_duplicates(["u", "query"])
    budget = int(max_tokens * QUERY_SHARE)
    for u, group in q.groupby("u", sort=True):
        group = group.head(MAX_QUERIES)
        cut_s = int(cut_ns[u] // SECOND_NS)
        labels = [label_of(int(t), cut_s) for t in group["ts"]]
        texts = group["query"].tolist()
        for n in range(len(texts), 0, -1):  # drop the oldest until the line fits its share
            line = render_query_line(texts[:n], labels[:n])
            count = int(counter.encode_lengths([line])[0])
            if count <= budget:
                lines[u], tok[u] = line, count
                break
    return lines, tok
