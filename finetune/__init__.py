"""LoRA fine-tuning of the LLM stages on event-derived targets: `build_sft` makes the data, `train_lora` trains.

`finetune_dataset` is the one path from a dataset to an adapter folder (used by `llmrec finetune`);
`finetune.self_train` evolves such an adapter's tags by RecGPT's self-training (`--task tags-self-train`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmrec.config import FinetuneConfig, MiningConfig, NarrativeConfig

log = logging.getLogger(__name__)
TINY_USERS = 20  # `--tiny`: the first 20 train users by id, a handful of optimizer steps


def tiny_config(**overrides: Any) -> FinetuneConfig:
    """A run of a few steps on short examples, for tests and smoke runs (seconds on an idle CPU)."""
    base = dict(narrative_max_tokens=64, n_tags=5, tag_horizon=5, max_seq_len=512,
                max_train_tokens=700, batch_size=2, max_valid_examples=2, eval_every_steps=1, warmup_steps=0,
                learning_rate=2e-3, valid_fraction=0.2)
    return FinetuneConfig(**{**base, **overrides})


def first_users(events: Any, max_users: int | None) -> Any:
    """The events of the first `max_users` users by id (all of them for None): tiny runs."""
    if max_users is None:
        return events
    keep = sorted(events["user_id"].unique(), key=lambda u: (len(u), u))[:max_users]
    return events[events["user_id"].isin(keep)]


def sft_split(dataset: Any, config: FinetuneConfig) -> Any:
    """The split SFT data comes from: leave-one-out minus the holdout users (the evaluation's true cold-start
    users with the default settings), whose events never reach the LLM's training data."""
    from llmrec.data.split import split_leave_one_out

    return split_leave_one_out(dataset.events, holdout_share=config.holdout_share, holdout_seed=config.holdout_seed,
                               targets=dataset.behavior_vocab.target_names())


def finetune_dataset(
    dataset: Any,
    config: FinetuneConfig,
    out: str | Path,
    *,
    model: str | Path | None = None,
    mining: MiningConfig | None = None,
    max_users: int | None = None,
) -> Any:
    """Split the dataset, build SFT examples from the TRAIN split only, train LoRA, save to `out`.

    Returns `finetune.train_lora.TrainResult`. `max_users` keeps the first N users by id (tiny runs).
    """
    from finetune.build_sft import build_sft_examples
    from finetune.train_lora import train_lora
    from llmrec.interests import PROMPTS
    from llmrec.llm.model import load_tokenizer, resolve_model
    from llmrec.llm.prompts import prompt_hashes

    mining = mining or MiningConfig()
    split = sft_split(dataset, config)
    train = first_users(split.train, max_users)
    tokenizer = load_tokenizer(resolve_model(model))
    from llmrec.vocab import vocabulary_of

    examples, report = build_sft_examples(train, dataset.item_index, dataset.items, config, tokenizer, mining,
                                          vocabulary_of(dataset), dataset.behavior_vocab, dataset.queries)
    log.info("SFT: %s examples from %s cuts of %s users; skipped %s", report.to_dict()["examples"], report.cuts,
             report.users, report.skipped)
    if not examples:
        raise ValueError(f"no SFT example could be built from {dataset.name}: {report.to_dict()}")
    extra = {
        "dataset": dataset.name,
        "split_hash": split.hash,
        "split_report": split.report,
        "prompt_hashes": prompt_hashes(PROMPTS),
        "mining_config": mining.model_dump(mode="json"),
        "narrative_config": NarrativeConfig(max_tokens=config.narrative_max_tokens or mining.narrative_tokens
                                            ).model_dump(mode="json"),
        "sft_report": report.to_dict(),
        "max_users": max_users,
    }
    return train_lora(examples, config, out, model=model, manifest_extra=extra)


RANKER_RETRIEVERS = ("popularity", "item_knn", "sasrec")


def finetune_ranker(
    dataset: Any,
    config: FinetuneConfig,
    out: str | Path,
    *,
    listwise: Any = None,
    retriever: str = "sasrec",
    model: str | Path | None = None,
    max_users: int | None = None,
) -> Any:
    """LoRA-tune the listwise ranker (`llmrec.listwise`) on the TRAIN split with `retriever`'s top-K negatives.

    `retriever` names the candidate generator trained on the same train split: popularity, item_knn or sasrec
    (SASRec+, full-softmax CE). Returns `finetune.train_lora.TrainResult`.
    """
    from finetune.build_ranker import build_ranker_examples
    from finetune.train_lora import train_lora
    from llmrec.config import ListwiseConfig, SASRecConfig
    from llmrec.data import ItemVocab
    from llmrec.listwise import PROMPT
    from llmrec.llm.model import load_tokenizer, resolve_model
    from llmrec.llm.prompts import prompt_hashes
    from retrieval.baselines import ItemKNNScorer, PopularityScorer

    if retriever not in RANKER_RETRIEVERS:
        raise ValueError(f"retriever must be one of {RANKER_RETRIEVERS}, got {retriever!r}")
    listwise = listwise or ListwiseConfig()
    split = sft_split(dataset, config)
    from llmrec.data.behaviors import training_events

    vocab = ItemVocab.from_items(dataset.items)
    positives = training_events(split.train, dataset.behavior_vocab)  # negative feedback is no positive
    if retriever == "sasrec":
        from retrieval.sasrec import train_sasrec

        scorer, _ = train_sasrec(split, vocab, SASRecConfig(loss="ce", seed=config.seed),
                                 behaviors=dataset.behavior_vocab)
    elif retriever == "item_knn":
        scorer = ItemKNNScorer.fit(positives, vocab)
    else:
        scorer = PopularityScorer.fit(positives, vocab)
    train = first_users(split.train, max_users)
    tokenizer = load_tokenizer(resolve_model(model))
    examples, report = build_ranker_examples(train, dataset.item_index, dataset.items, vocab, scorer, listwise,
                                             tokenizer, domain=getattr(dataset, "domain", None),
                                             behaviors=dataset.behavior_vocab, queries=dataset.queries)
    log.info("ranker SFT: %s examples from %s users; skipped %s", report.examples, report.users, report.skipped)
    if not examples:
        raise ValueError(f"no ranker example could be built from {dataset.name}: {report.to_dict()}")
    extra = {"task": "ranker", "dataset": dataset.name, "split_hash": split.hash, "retriever": retriever,
             "prompt_hashes": prompt_hashes([PROMPT]), "listwise_config": listwise.model_dump(mode="json"),
             "sft_report": report.to_dict(), "max_users": max_users}
    return train_lora(examples, config, out, model=model, manifest_extra=extra)
