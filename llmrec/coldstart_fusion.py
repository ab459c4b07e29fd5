"""Cold start's imagined histories rejoin the normal path (see `llmrec.coldstart`): early fusion (imagined events
before the real ones, one sequence), late fusion (one sequence per imagined item), and the imagined items' vectors.
Imagined events have the type `llmrec.coldstart.imagined_behavior` names (the dataset's main positive one)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np

from llmrec.coldstart import Catalogue, ImaginedHistory, content_text, imagined_behavior
from llmrec.config import ColdStartConfig
from llmrec.data.behaviors import BehaviorVocab
from llmrec.schema import Event, UserHistory


def _imagined_events(user_id: str, imagined: ImaginedHistory, real: Sequence[Event], config: ColdStartConfig,
                     anchor: datetime | None, behaviors: BehaviorVocab | None = None) -> list[Event]:
    """Matched imagined items as events, `spacing_hours` apart, the last one before the first real event."""
    if real:
        anchor = min(e.timestamp for e in real)
    elif anchor is None:
        raise ValueError(f"user {user_id}: no real events, so an `anchor` time is needed to place imagined ones")
    seen, ids = {e.item_id for e in real}, []
    for i in imagined.items:  # unmatched items have no event; repeats of real or imagined items are dropped
        if i.item_id is not None and i.item_id not in seen:
            seen.add(i.item_id)
            ids.append(i.item_id)
    step, behavior = timedelta(hours=config.spacing_hours), imagined_behavior(config, behaviors)
    return [Event(user_id=user_id, item_id=item_id, timestamp=anchor - step * (len(ids) - n), behavior=behavior)
            for n, item_id in enumerate(ids)]


def early_fusion(history: UserHistory, imagined: ImaginedHistory, config: ColdStartConfig,
                 anchor: datetime | None = None, behaviors: BehaviorVocab | None = None) -> UserHistory:
    """One sequence: imagined events (matched items, of `imagined_behavior`) before the real ones."""
    events = _imagined_events(history.user_id, imagined, history.events, config, anchor, behaviors)
    return history.model_copy(update={"events": tuple(events) + tuple(history.events)})


def late_fusion_sequences(history: UserHistory, imagined: ImaginedHistory, config: ColdStartConfig,
                          anchor: datetime | None = None, behaviors: BehaviorVocab | None = None) -> list[UserHistory]:
    """One sequence per matched imagined item: that item, then the real events (vectors averaged later)."""
    events = _imagined_events(history.user_id, imagined, history.events, config, anchor, behaviors)
    return [history.model_copy(update={"events": (e.model_copy(update={"timestamp": events[-1].timestamp}),) + tuple(history.events)})
            for e in events]


def fuse(history: UserHistory, imagined: ImaginedHistory, config: ColdStartConfig,
         anchor: datetime | None = None, behaviors: BehaviorVocab | None = None) -> list[UserHistory]:
    """`config.fusion`: "early" -> [one sequence], "late" -> one sequence per imagined item."""
    if config.fusion == "early":
        return [early_fusion(history, imagined, config, anchor, behaviors)]
    return late_fusion_sequences(history, imagined, config, anchor, behaviors)


def imagined_vectors(imagined: ImaginedHistory, catalogue: Catalogue) -> np.ndarray:
    """[k, D]: the matched item's catalogue vector, or the imagined item's own content vector."""
    if not imagined.items:
        return np.zeros((0, catalogue.vectors.shape[1]), np.float32)
    own = catalogue.encode([content_text(i.title, i.year, i.genres) for i in imagined.items])
    rows = [catalogue.vectors[catalogue.index[i.item_id]] if i.item_id in catalogue.index else own[n]
            for n, i in enumerate(imagined.items)]
    return np.stack(rows).astype(np.float32)
