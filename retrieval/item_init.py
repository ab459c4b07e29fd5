"""Start the item tower's ID embedding from a trained SASRec+'s item embeddings (TowerConfig.init_item_embeddings).

SASRec+ learns one free vector per item with a full softmax; on larger catalogues it trains far longer than
the tower does before its validation metric stops moving. Copying those vectors into the tower's (otherwise
zero-initialised) ID embedding gives the collaborative part a warm start, while the content MLP still covers
items SASRec never saw (their rows stay zero). When the widths differ the vectors are projected onto their
top principal directions (wider source) or zero-padded (narrower source): a fixed linear map, so inner
products between items are kept as far as the narrower width allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmrec.config import TowerConfig
from llmrec.data import ItemVocab
from llmrec.errors import DataError, ModelError


@dataclass(frozen=True)
class ItemEmbeddings:
    """Item vectors [n, d], row j belonging to item id `ids[j]` (no padding row)."""

    ids: tuple[str, ...]
    vectors: np.ndarray  # [n, d] float32

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.ids):
            raise DataError(f"item embeddings: {len(self.ids)} ids but vectors of shape {self.vectors.shape}; "
                            "need [n_items, d]")
        if len(set(self.ids)) != len(self.ids):
            raise DataError("item embeddings: duplicate item ids")
        if not np.isfinite(self.vectors).all():
            raise DataError("item embeddings: vectors contain NaN or inf")


def sasrec_item_embeddings(scorer) -> ItemEmbeddings:
    """The item embeddings of a trained `retrieval.sasrec.SASRecScorer` (its padding row dropped)."""
    weights = scorer.model.item_emb.weight.detach().cpu().numpy()[1:]  # [N, hidden]
    return ItemEmbeddings(ids=tuple(str(i) for i in scorer.vocab.ids), vectors=weights.astype(np.float32))


def align_item_embeddings(embeddings: ItemEmbeddings, vocab: ItemVocab) -> tuple[np.ndarray, int]:
    """([vocab.size, d] rows in vocabulary order, row 0 and unknown items zero; number of vocabulary items found)."""
    out = np.zeros((vocab.size, embeddings.vectors.shape[1]), dtype=np.float32)
    row = {i: j for j, i in enumerate(embeddings.ids)}
    found = 0
    for n, item in enumerate(vocab.ids, start=1):
        j = row.get(str(item))
        if j is not None:
            out[n] = embeddings.vectors[j]
            found += 1
    if found == 0:
        raise DataError("item embeddings share no item id with the dataset's catalogue")
    return out, found


def project_embeddings(vectors: np.ndarray, dim: int) -> np.ndarray:
    """[R, dim] from [R, d]: unchanged if d == dim, zero-padded if d < dim, else onto the top-`dim` right
    singular vectors (uncentred, so zero rows stay zero)."""
    d = vectors.shape[1]
    if d == dim:
        return vectors.astype(np.float32)
    if d < dim:
        return np.pad(vectors, ((0, 0), (0, dim - d))).astype(np.float32)
    _, _, vt = np.linalg.svd(vectors.astype(np.float64), full_matrices=False)  # vt [d, d]
    return (vectors @ vt[:dim].T).astype(np.float32)  # [R, dim]


def init_id_embeddings(model, config: TowerConfig, embeddings: ItemEmbeddings | None) -> int:
    """Copy `embeddings` into `model.item_tower.ids` as the config asks; returns the number of items set."""
    if config.init_item_embeddings == "none":
        if embeddings is not None:
            raise ModelError("item embeddings were given but TowerConfig.init_item_embeddings is 'none'; "
                             "set it to 'sasrec' to use them")
        return 0
    if embeddings is None:
        raise ModelError(f"TowerConfig.init_item_embeddings={config.init_item_embeddings!r} needs item "
                         "embeddings: train SASRec+ first and pass sasrec_item_embeddings(scorer)")
    table, found = align_item_embeddings(embeddings, model.vocab)
    with torch.no_grad():
        model.item_tower.ids.weight.copy_(torch.from_numpy(project_embeddings(table, config.dim)))
    return found
