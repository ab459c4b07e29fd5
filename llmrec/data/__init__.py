"""The data layer: datasets by name, generic import, download, and the one leave-one-out split.

`datasets` holds the canonical tables (events, items, users, queries) and the built-in loaders; `behaviors` the
dataset's behaviour vocabulary and value meaning; `ingest` imports any CSV/Parquet/JSON-lines log into them; `download` fetches public datasets with checksums; `split` builds the
evaluation split every model shares.
"""

from llmrec.data.datasets import (
    HOME_ENV,
    ML100K_ENV,
    ML100K_EXPECTED,
    ML100K_GENRES,
    YEAR_SUFFIX,
    Dataset,
    ItemVocab,
    LoadReport,
    llmrec_home,
    load_dataset_dir,
    load_ml100k,
    ml100k_dir,
    ratings_to_behaviors,
    resolve_dataset,
    sort_events,
    strip_year,
    user_sequences,
)
from llmrec.data.behaviors import BehaviorSpec, BehaviorVocab, EventMeaning
from llmrec.errors import DataError

__all__ = ["BehaviorSpec", "BehaviorVocab", "EventMeaning", "HOME_ENV", "ML100K_ENV", "ML100K_EXPECTED", "ML100K_GENRES", "YEAR_SUFFIX", "DataError", "Dataset", "ItemVocab", "LoadReport", "llmrec_home",
           "load_dataset_dir", "load_ml100k", "ml100k_dir", "ratings_to_behaviors", "resolve_dataset", "sort_events",
           "strip_year", "user_sequences"]
