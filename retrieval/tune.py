"""A small validation search for the three-tower retriever, so a new dataset gets sensible settings.

The defaults were tuned on ML-100K; a larger catalogue wanted a longer budget and other step sizes (see
`retrieval.stopping`). `tune_towers` trains one model per grid point with early stopping (which also picks
each point's epoch budget) and scores it on the VALIDATION targets only (`fit_towers` never reads the test
targets). The winner's config is returned with every trial, JSON-able, so `llmrec evaluate` can store the
search next to the numbers it reports. Retraining the winner with the same seed reproduces its trial.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from llmrec.config import DEFAULT_TOWER_GRID, TowerConfig
from llmrec.data import Dataset
from llmrec.data.split import Split
from llmrec.errors import DataError
from retrieval.item_init import ItemEmbeddings
from retrieval.train import fit_towers

log = logging.getLogger(__name__)

DEFAULT_GRID = DEFAULT_TOWER_GRID


@dataclass
class TuneResult:
    """The best config (by validation NDCG@10 of the user tower) and every trial, in grid order."""

    config: TowerConfig
    trials: list[dict] = field(default_factory=list)
    best_trial: int = 0

    def to_dict(self) -> dict:
        """JSON-able record for a settings file: the grid's winning settings and all trials."""
        return {"best": self.trials[self.best_trial]["settings"], "best_trial": self.best_trial,
                "trials": self.trials}


def grid_settings(base: TowerConfig, grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values (keys sorted), each checked by building the TowerConfig.

    Raises DataError naming the key or value when a key is not a TowerConfig field, a value list is
    empty, or a combination is not a valid config.
    """
    if not grid:
        raise DataError("tune grid is empty: give at least one TowerConfig field and its values")
    keys = sorted(grid)
    for key in keys:
        if key not in TowerConfig.model_fields:
            raise DataError(f"tune grid key {key!r} is not a TowerConfig field")
        if isinstance(grid[key], (str, bytes)) or not len(grid[key]):
            raise DataError(f"tune grid key {key!r} needs a non-empty list of values, got {grid[key]!r}")
    combos = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    for settings in combos:
        try:
            TowerConfig.model_validate({**base.model_dump(), **settings})
        except ValidationError as err:
            raise DataError(f"tune grid setting {settings} is not a valid TowerConfig: {err}") from err
    return combos


def tune_towers(split: Split, dataset: Dataset, base_config: TowerConfig,
                grid: Mapping[str, Sequence[Any]] | None = None,
                llm_tags: Mapping[str, Sequence[str]] | None = None,
                item_embeddings: ItemEmbeddings | None = None,
                progress: Callable[[dict], None] | None = None) -> TuneResult:
    """Train one tower per grid point (default: lr x dropout) and keep the best on validation NDCG@10.

    Ties go to the earlier trial in grid order. `progress`, if given, receives each finished trial.
    """
    trials: list[dict] = []
    for settings in grid_settings(base_config, grid if grid is not None else DEFAULT_GRID):
        config = TowerConfig.model_validate({**base_config.model_dump(), **settings})
        t0 = time.perf_counter()
        fit = fit_towers(dataset, split, config, llm_tags=llm_tags, item_embeddings=item_embeddings)
        trial = {"settings": settings, "valid_ndcg@10": round(fit.best_valid_ndcg, 6),
                 "best_epoch": fit.best_epoch, "epochs_run": len(fit.history), "softmax": fit.softmax,
                 "seconds": round(time.perf_counter() - t0, 1)}
        trials.append(trial)
        log.info("tower trial %d: %s", len(trials), trial)
        if progress is not None:
            progress(trial)
    best = max(range(len(trials)), key=lambda j: (trials[j]["valid_ndcg@10"], -j))
    config = TowerConfig.model_validate({**base_config.model_dump(), **trials[best]["settings"]})
    return TuneResult(config=config, trials=trials, best_trial=best)
