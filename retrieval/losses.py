"""The three-tower training losses as named pure functions (STYLE 15), each with its shapes.

Candidates. A step scores every query against one shared candidate set: the distinct positives of the batch
(in-batch negatives, drawn with probability ~ popularity) plus, with mixed negatives on, S items drawn
uniformly from 1..N (Yang et al. 2020, "Mixed Negative Sampling"). The set is de-duplicated, so each item is
one column and no positive is ever also a negative of its own row.

logQ correction (Yi et al. 2019). In-batch sampling over-represents popular items as negatives, so the model
learns to push them down. Subtracting log q(i) from every logit, where q(i) is the probability that item i is
in the candidate set, makes the sampled softmax an unbiased estimate of the full one. With B positives drawn
from the training popularity p and S uniform draws over N items, an item is *absent* with probability
(1 - p_i)^B (1 - 1/N)^S, so

    q_i = 1 - (1 - p_i)^B * (1 - 1/N)^S            (`candidate_log_q`; S = 0 without mixed negatives)
    corrected logit = s(u, i) / tau - log q_i       (`correct_logq`)

Similarity is cosine over a temperature tau, learnable through log tau and clipped to [0.01, 100], so every
logit is bounded by 1/tau in magnitude (before the correction).

Full softmax. When the catalogue fits (`TowerConfig.softmax`, `resolve_softmax`), every item is a candidate
at every step: no sampling, so no logQ (q_i = 1 for all i, a constant shift that cancels in the softmax).
This is what SASRec+ does, and it is the sampled softmax's limit when the sample is the whole catalogue.

RecGPT's objective: L = L_col + alpha * L_tag + (1 - alpha) * L_cate, with L_col user -> next item, L_tag
tag -> the item it was derived from, and L_cate tag -> every candidate of the positive's category (a
multi-positive softmax: a tag describes a kind of item, not one item).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TEMPERATURE_MIN = 0.01
TEMPERATURE_MAX = 100.0


def clip_temperature(log_temperature: torch.Tensor) -> torch.Tensor:
    """tau = exp(log_tau) clipped to [0.01, 100] (a scalar tensor; gradient flows inside the range)."""
    return log_temperature.clamp(math.log(TEMPERATURE_MIN), math.log(TEMPERATURE_MAX)).exp()


def cosine_logits(queries: torch.Tensor, keys: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """[Q, M] cos(q, k) / tau for queries [Q, d] and keys [M, d]; |logit| <= 1 / tau."""
    q = F.normalize(queries, dim=-1)  # [Q, d]
    k = F.normalize(keys, dim=-1)  # [M, d]
    return q @ k.T / temperature  # [Q, M]


def sample_uniform(n_items: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n] item indices drawn uniformly with replacement from 1..n_items (0 is padding)."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    return torch.randint(1, n_items + 1, (n,), generator=generator)


def build_candidates(positives: torch.Tensor, uniform: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct candidate items and each positive's column.

    positives [P] item indices (repeats allowed), uniform [S] or None.
    Returns (candidates [M] sorted distinct item indices, labels [P] column of positives[p] in candidates).
    """
    pool = positives if uniform is None else torch.cat([positives, uniform])  # [P + S]
    candidates = torch.unique(pool)  # [M], sorted
    labels = torch.searchsorted(candidates, positives)  # [P]
    return candidates, labels


def candidate_log_q(pop_prob: torch.Tensor, batch_positives: int, n_uniform: int) -> torch.Tensor:
    """[N+1] log q_i = log(1 - (1 - p_i)^B (1 - 1/N)^S): the log-probability that item i is a candidate.

    pop_prob [N+1]: training popularity (column 0 = padding, 0); B = positives per step, S = uniform draws.
    """
    n_items = pop_prob.shape[0] - 1
    absent = (1.0 - pop_prob).clamp_min(0.0) ** batch_positives  # [N+1]
    if n_uniform > 0:
        absent = absent * (1.0 - 1.0 / n_items) ** n_uniform
    return torch.log((1.0 - absent).clamp_min(1e-12))  # [N+1]


def correct_logq(logits: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """[Q, M] logits - log q: each candidate column shifted by exactly minus its log sampling probability."""
    return logits - log_q[None, :]  # [Q, M] - [1, M]


def resolve_softmax(mode: str, n_items: int, max_items: int) -> str:
    """"full" or "sampled": mode "auto" picks full when the catalogue has at most `max_items` items."""
    if mode not in ("auto", "full", "sampled"):
        raise ValueError(f"softmax must be 'auto', 'full' or 'sampled', got {mode!r}")
    if mode != "auto":
        return mode
    return "full" if n_items <= max_items else "sampled"


def all_candidates(n_items: int, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidates [N] = 1..N, labels [P] = positives - 1): the whole catalogue as the candidate set."""
    if positives.numel() and (int(positives.min()) < 1 or int(positives.max()) > n_items):
        raise ValueError(f"positives must be item indices in 1..{n_items}")
    return torch.arange(1, n_items + 1), positives - 1


def full_softmax_loss(queries: torch.Tensor, item_table: torch.Tensor, positives: torch.Tensor,
                      temperature: torch.Tensor | float) -> torch.Tensor:
    """Mean cross-entropy of queries [P, d] over every item of item_table [N+1, d] (row 0 = padding, excluded).

    positives [P] item indices in 1..N. Logits are cos / tau against all N items ([P, N]).
    """
    cand, labels = all_candidates(item_table.shape[0] - 1, positives)
    return F.cross_entropy(cosine_logits(queries, item_table[cand], temperature), labels)  # [P, N] -> scalar


def sampled_softmax_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [P, M] against the one positive column labels [P]."""
    return F.cross_entropy(logits, labels)


def multi_positive_softmax_loss(logits: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    """Mean of -log(sum over positive columns of softmax(logits)) for logits [P, M], positive_mask [P, M] bool.

    Rows with no positive column are skipped (they carry no signal); at least one row must have one.
    """
    has_pos = positive_mask.any(dim=1)  # [P]
    if not bool(has_pos.any()):
        raise ValueError("multi_positive_softmax_loss: no row has a positive column")
    logits, positive_mask = logits[has_pos], positive_mask[has_pos]
    pos = logits.masked_fill(~positive_mask, float("-inf")).logsumexp(dim=1)  # [P']
    return (logits.logsumexp(dim=1) - pos).mean()


def same_category_mask(categories: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[P, M] True where candidate m has the category of positive p (categories [N+1] ids, -1 = none)."""
    pos_cat = categories[positives][:, None]  # [P, 1]
    return (categories[candidates][None, :] == pos_cat) & (pos_cat >= 0)  # [P, M]


def combine_losses(l_col: torch.Tensor, l_tag: torch.Tensor, l_cate: torch.Tensor, alpha: float) -> torch.Tensor:
    """RecGPT's L = L_col + alpha * L_tag + (1 - alpha) * L_cate."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return l_col + alpha * l_tag + (1.0 - alpha) * l_cate
