"""The rows of the offline comparison: their names, what each trains with, and the tower scorer.

A row's config (`row_config`) is frozen into the settings file; `--resume` takes a finished (row, seed)
over only when that config and the split hash are unchanged (`resumable_rows`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from llmrec.config import EvaluateConfig

LLM_TAG_ROWS = {"three_tower_llm_tags": "llm_tags", "three_tower_llm_lora_tags": "llm_lora_tags",
                "three_tower_llm_self_tags": "llm_self_tags", "three_tower_llm_self2_tags": "llm_self2_tags"}
# logQ and mixed negatives exist only under the sampled softmax (the full softmax scores every item), so those
# ablations train sampled, against three_tower_sampled_softmax as their reference.
ABLATIONS = {"three_tower_sampled_softmax": {"softmax": "sampled"},
             "three_tower_no_logq": {"softmax": "sampled", "logq": False},
             "three_tower_no_mixed_negatives": {"softmax": "sampled", "mixed_negatives": False},
             "three_tower_fixed_temperature": {"learnable_temperature": False}}
BASELINE_ROWS = ("popularity", "item_knn")  # deterministic: scored once, the score stands for every seed
# SASRec rows: the SASRecConfig fields each sets. sasrec_ce_content gets the towers' item content (attribution).
SASREC_ROWS = {"sasrec_bce": {"loss": "bce"}, "sasrec_ce": {"loss": "ce"},
               "sasrec_ce_content": {"loss": "ce", "content_features": True}}
# Towers without text and profile (ids, genres, year only), user tower alone: what the content adds.
ID_TOWER_ROWS = {"three_tower_ids_only": {"text_features": False, "profile_features": False, "id_embedding": True}}
COLDSTART_ROWS = {"coldstart_none": None, "coldstart_early_fusion": "early", "coldstart_late_fusion": "late"}
# Rows trained from the base three-tower model (one training per seed serves all of them).
BASE_TOWER_ROWS = ("three_tower_notag", "three_tower_heuristic_tags", "three_tower_llm_rerank", *COLDSTART_ROWS)
REFERENCE_ROW = "sasrec_ce"  # SASRec+: every row's paired NDCG difference is taken against it
# Listwise LLM ranker over a retriever's top-K (llmrec.listwise), lambda chosen on validation: row -> retriever row.
RANKER_ROWS = {"sasrec_ce_llm_ranker": "sasrec_ce", "three_tower_llm_ranker": "three_tower_heuristic_tags"}
LLM_CALLING_ROWS = ("three_tower_llm_rerank", "coldstart_early_fusion", "coldstart_late_fusion", *RANKER_ROWS)
# Each LLM row and the same model without its LLM stage: what the LLM adds is the paired difference between them.
LLM_COUNTERPARTS = {**{row: "three_tower_heuristic_tags" for row in (*LLM_TAG_ROWS, "three_tower_llm_rerank")},
                    **{row: "coldstart_none" for row, fusion in COLDSTART_ROWS.items() if fusion is not None},
                    **RANKER_ROWS}
# Self-trained tags (round 1: three_tower_llm_self_tags, round 2: ..._self2_tags) against the tags of the SFT
# adapter they started from (round 0), and a later round against the round before: what self-training adds.
ROUND_ROWS = {"three_tower_llm_lora_tags": 0, "three_tower_llm_self_tags": 1, "three_tower_llm_self2_tags": 2}
_LATEST_FIRST = sorted(ROUND_ROWS, key=ROUND_ROWS.get, reverse=True)
# Each self-trained row -> the rows of the earlier rounds, latest first (derived: ROUND_ROWS is the one list)
ROUND_COUNTERPARTS = {row: tuple(e for e in _LATEST_FIRST if ROUND_ROWS[e] < n) for row, n in ROUND_ROWS.items() if n}


def planned_pairs(rows: Sequence[str], config: EvaluateConfig) -> int:
    """The (row, seed) pairs a complete run finishes: the progress bar's total.

    Baselines are scored once for all seeds and the LLM re-ranking/ranker rows on the first seed only;
    ablations run on `ablation_seeds`; every other row once per seed.
    """
    once = {*BASELINE_ROWS, *RANKER_ROWS, "three_tower_llm_rerank"}
    n_ablation = len(set(config.ablation_seeds or config.seeds) & set(config.seeds))
    return sum(1 if r in once else n_ablation if r in ABLATIONS else len(config.seeds) for r in rows)


class TowerScorer:
    """A three-tower model at a fixed beta with fixed user tags T_u (beta = 1: the user tower alone)."""

    def __init__(self, name: str, model, beta: float, tags: Mapping[str, Sequence[str]] | None = None):
        self.name, self.model, self.beta, self.tags = name, model, beta, dict(tags or {})

    def score(self, histories: Sequence[np.ndarray], user_ids: Sequence[str]) -> np.ndarray:
        return self.model.score(histories, user_ids, user_tags=self.tags, beta=self.beta)


def row_config(model: str, config: EvaluateConfig) -> dict:
    """The config a row trains with (seed set per run): what the settings file freezes for it."""
    if model in SASREC_ROWS:
        sasrec = config.sasrec.model_copy(update=SASREC_ROWS[model]).model_dump(mode="json")
        if model == "sasrec_ce_content":  # the content features come from the towers' encoder settings
            sasrec["features"] = {k: getattr(config.towers, k) for k in ("encoder", "year_bucket")}
        return sasrec
    if model == "popularity":
        return {}
    if model == "item_knn":
        return {"neighbors": config.knn_neighbors, "shrink": config.knn_shrink}
    switch = {**ABLATIONS.get(model, {}), **ID_TOWER_ROWS.get(model, {})}
    towers = config.towers.model_copy(update=switch).model_dump(mode="json")
    if model in LLM_TAG_ROWS:
        key = LLM_TAG_ROWS[model]
        valid = getattr(config, f"{key}_valid")
        return {"towers": towers, "tags": getattr(config, key), **({"tags_valid": valid} if valid else {})}
    if model == "three_tower_llm_rerank":
        return {"towers": towers, "rerank": config.rerank.model_dump(mode="json"), "top": config.rerank_top,
                "users": config.rerank_users, "llm": config.llm.model_dump(mode="json"),
                "narrative": config.narrative.model_dump(mode="json")}
    if model in RANKER_ROWS:
        base = row_config(RANKER_ROWS[model], config)
        return {"base": base, "listwise": config.listwise.model_dump(mode="json"), "adapter": config.ranker_adapter,
                "users": config.ranker_users, "llm": config.llm.model_dump(mode="json"),
                "narrative": config.narrative.model_dump(mode="json")}
    if model in COLDSTART_ROWS:
        return {"towers": towers, "beta": 1.0, "coldstart": config.coldstart.model_copy(
            update={"fusion": COLDSTART_ROWS[model] or config.coldstart.fusion}).model_dump(mode="json"),
            "users": config.coldstart_users, "llm": config.llm.model_dump(mode="json")}
    return {"towers": towers,
            "beta": 1.0 if model in ("three_tower_notag", *ID_TOWER_ROWS) else "chosen on validation"}


# Row-config fields that set how many prompts go to the LLM per call: how fast a row runs, not what it scores
# (ML-100K cold start: the same imagined items for all 100 users at 8 per call and in one call). A run that
# differs from an earlier one only in these takes the earlier pairs over.
SPEED_FIELDS = {"coldstart": "batch_size", "listwise": "batch_size", "rerank": "batch_size"}


def without_speed_fields(row_cfg: Mapping) -> dict:
    """A frozen row config less its `SPEED_FIELDS`: what must be equal for `--resume` to take a pair over."""
    return {key: ({f: x for f, x in value.items() if f != SPEED_FIELDS[key]}
                  if key in SPEED_FIELDS and isinstance(value, Mapping) else value)
            for key, value in row_cfg.items()}


def resumable_rows(settings: Mapping, split_hash: str, configs: Mapping[str, dict]) -> list[list]:
    """The [model, seed] pairs of an earlier run's settings that a new run may take over unchanged.

    Nothing when the split differs; per row, only when its config (as `row_config` freezes it) is equal, speed
    fields aside (`without_speed_fields`).
    """
    if settings.get("split_hash") != split_hash:
        return []
    before = settings.get("model_configs", {})
    return [[m, s] for m, s in settings.get("finished", [])
            if m in configs and m in before and without_speed_fields(before[m]) == without_speed_fields(configs[m])]


def absent_rows(config: EvaluateConfig) -> dict[str, str]:
    """Rows of `config.models` that cannot run, with the reason the report gives."""
    absent = {}
    for row, key in LLM_TAG_ROWS.items():
        if row in config.models and getattr(config, key) is None:
            absent[row] = (f"no mined-tags Parquet given (--{key.replace('_', '-')}; produce one with "
                           "`llmrec mine-interests`)")
    if not config.use_llm:
        for row in LLM_CALLING_ROWS:
            if row in config.models:
                absent[row] = "run with --no-llm (use_llm=False): rows that call the LLM were skipped"
        if "coldstart_none" in config.models:
            absent["coldstart_none"] = "compared only with the LLM cold-start rows, which --no-llm skipped"
    return absent
