"""The one results convention for every benchmark and report.

A result file is a JSON list of flat records `{"benchmark", "metric", "value", "unit"}` plus context keys
where they apply (`model`, `slice`, `seed`, `k`, `n`, ...), written by default to
`reports/bench/NAME.json` under the current project folder, so every figure can be compared and
plotted the same way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

REQUIRED_KEYS = ("benchmark", "metric", "value", "unit")
DEFAULT_DIR = Path("reports") / "bench"


def record(benchmark: str, metric: str, value: float, unit: str, **context: Any) -> dict[str, Any]:
    """One flat record; context values must be scalars (str, int, float, bool or None)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(float(value)):
        raise ValueError(f"record {benchmark}/{metric}: value must be a finite number, got {value!r}")
    for key, v in context.items():
        if key in REQUIRED_KEYS:
            raise ValueError(f"record {benchmark}/{metric}: context key {key!r} clashes with a required key")
        if not (v is None or isinstance(v, (str, int, float, bool))):
            raise ValueError(f"record {benchmark}/{metric}: context {key}={v!r} is not a flat scalar")
    return {"benchmark": benchmark, "metric": metric, "value": float(value), "unit": unit, **context}


def write_records(records: list[dict[str, Any]], name: str, out: str | Path | None = None) -> Path:
    """Validate and write records to `out` (default reports/bench/NAME.json); returns the path."""
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"record {i} of {name}: missing keys {missing}")
        record(**r)  # re-validates value and context types
    path = Path(out) if out is not None else DEFAULT_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    tmp.replace(path)
    return path


def read_records(path: str | Path) -> list[dict[str, Any]]:
    records = json.loads(Path(path).read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"{path}: record {i} misses keys {missing}")
    return records
