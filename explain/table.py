"""The explanation lookup table the API reads: keyed by (interest, item, evidence ids), see `explain.facts`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from explain.facts import ExplainFacts, facts_key
from llmrec.config import ExplainConfig
from llmrec.errors import DataError
from llmrec.io import package_version
from llmrec.llm.prompts import prompt_hash
from llmrec.schema import Explanation

PROMPT = "explain"
TABLE_FILE = "explanations.parquet"
TABLE_SCHEMA = pa.schema(
    [
        pa.field("interest", pa.string(), nullable=False),  # "" when no interest matched the item
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("evidence", pa.list_(pa.string()), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("faithful", pa.bool_(), nullable=False),
        pa.field("flagged", pa.bool_(), nullable=False),
    ]
)


def explanation_key(e: Explanation) -> tuple[str, str, tuple[str, ...]]:
    return facts_key(e.interest, e.item_id, e.evidence)


class ExplanationTable:
    """Explanations keyed by `facts_key`; a Parquet file plus config and manifest."""

    def __init__(self, explanations: Iterable[Explanation] = ()):
        self._rows: dict[tuple[str, str, tuple[str, ...]], Explanation] = {}
        self.update(explanations)

    def update(self, explanations: Iterable[Explanation]) -> None:
        for e in explanations:
            self._rows[explanation_key(e)] = e

    def get(self, interest: str | None, item_id: str, evidence: Iterable[str] = ()) -> Explanation | None:
        return self._rows.get(facts_key(interest, item_id, evidence))

    def lookup(self, facts: ExplainFacts) -> Explanation | None:
        """The row written from exactly these facts, if the batch job made one."""
        return self.get(facts.interest, facts.item.item_id, facts.evidence_ids)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, facts: ExplainFacts) -> bool:
        return self.lookup(facts) is not None

    def coverage(self, facts: Iterable[ExplainFacts]) -> float:
        """Share of served facts the table answers (the rest get a template on the request path)."""
        facts = list(facts)
        return sum(f in self for f in facts) / len(facts) if facts else 0.0

    def to_frame(self) -> pd.DataFrame:
        rows = [{**e.model_dump(), "evidence": list(e.evidence)} for e in self._rows.values()]
        return pd.DataFrame(rows, columns=TABLE_SCHEMA.names)

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
                "key": "interest, item_id, evidence", "prompt_hashes": {PROMPT: prompt_hash(PROMPT)},
                "package_version": package_version(), **(manifest or {})}
        tmp = out / ".manifest.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n")
        tmp.replace(out / "manifest.json")
        return out

    @classmethod
    def load(cls, path: str | Path) -> ExplanationTable:
        """Read a folder written by `save` (or a bare Parquet file, e.g. a job shard); every row is re-validated."""
        path = Path(path)
        file = path / TABLE_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no explanation table")
        return cls(explanations_from_frame(pq.read_table(file).to_pandas(), str(file)))


def explanations_from_frame(frame: pd.DataFrame, where: str) -> list[Explanation]:
    """Validated rows of a table or job frame; a table written before evidence existed reads as no evidence."""
    if "evidence" not in frame.columns:
        frame = frame.assign(evidence=[[] for _ in range(len(frame))])
    missing = set(TABLE_SCHEMA.names) - set(frame.columns)
    if missing:
        raise DataError(f"{where}: missing columns {sorted(missing)}")
    rows = []
    for n, r in enumerate(frame[TABLE_SCHEMA.names].to_dict("records")):
        try:
            rows.append(Explanation(**{**r, "evidence": tuple(str(e) for e in r["evidence"])}))
        except ValidationError as e:
            raise DataError(f"{where}: row {n}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from e
    return rows

