"""The PNG plots of the offline comparison: NDCG@k per slice, and NDCG@k against the history a model saw."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from llmrec.eval.tables import history_length, slices_of, table_values  # noqa: E402


def plot_ndcg_by_slice(records: Sequence[dict], path: str | Path, k: int = 10) -> Path:
    """Grouped bars: NDCG@k per slice (x) for every model (bars), error bars = std over seeds."""
    values = table_values(records, f"ndcg@{k}")
    slices = [s for s in slices_of(records) if s != "valid"]  # test numbers only
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(slices)), 5))
    width = 0.8 / max(len(values), 1)
    colors = plt.get_cmap("tab20").colors
    for j, (model, row) in enumerate(values.items()):
        have = [i for i, s in enumerate(slices) if s in row]
        ax.bar([i + j * width for i in have], [row[slices[i]]["value"] for i in have], width,
               yerr=[row[slices[i]]["std"] for i in have], label=model, color=colors[j % len(colors)])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(slices))], slices)
    ax.set_ylabel(f"NDCG@{k} (test)")
    ax.set_title(f"NDCG@{k} per slice per model")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_ndcg_by_history(records: Sequence[dict], path: str | Path, k: int = 10) -> Path:
    """NDCG@k against the events a model saw: held-out users' first N (left), warm users' last N and all (right)."""
    values, slices = table_values(records, f"ndcg@{k}"), slices_of(records)
    panels = [("cold users: first N events", sorted((s for s in slices if s.startswith("cold_user_")),
                                                    key=history_length)),
              ("warm users: last N events", sorted((s for s in slices if s.startswith("short_")),
                                                   key=history_length) + ["all"])]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    colors = plt.get_cmap("tab20").colors
    for ax, (title, points) in zip(axes, panels):
        for j, (model, row) in enumerate(values.items()):
            if sum(s in row for s in points) > 1:  # a missing point (NaN) breaks the line instead of bridging it
                nan = float("nan")
                ax.errorbar(range(len(points)), [row[s]["value"] if s in row else nan for s in points],
                            yerr=[row[s]["std"] if s in row else nan for s in points], marker="o", label=model,
                            capsize=2, color=colors[j % len(colors)])
        ax.set_xticks(range(len(points)), [s if s == "all" else str(history_length(s)) for s in points])
        ax.set_xlabel("events of history shown to the model")
        ax.set_title(title)
    axes[0].set_ylabel(f"NDCG@{k} (test)")
    handles = {}  # one legend for both panels: a model may have points in one panel only
    for ax in axes:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    if handles:
        axes[1].legend(list(handles.values()), list(handles), fontsize=7, ncol=2)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
