"""Files the train stage writes besides checkpoints: metrics JSON and per-epoch CSV tables."""

import csv
import os
from collections.abc import Sequence
from typing import Any

from rsna import fileio

HISTORY_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "val_score", "lr")


def write_rows_csv(
    path: str | os.PathLike, rows: Sequence[dict[str, Any]], *, columns: Sequence[str]
) -> None:
    """Write ``rows`` as CSV with a header of ``columns``, atomically.

    ``None`` becomes an empty cell; floats are written with ``repr``, so the same values
    always give the same bytes.
    """
    with fileio.atomic_open(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {column: "" if row.get(column) is None else row[column] for column in columns}
            )


def train_metrics(
    *,
    history: Sequence[dict[str, Any]],
    best: dict[str, Any],
    series: dict[str, int],
    skipped_series: int,
) -> dict[str, Any]:
    """Return the content of ``metrics/train.json``.

    ``best_val_score`` and ``best_epoch`` describe the checkpoint kept as best, and
    ``final_*`` the last completed epoch. ``best_val_auc`` maps each label to its
    validation AUROC at the best epoch (``None`` where undefined).
    """
    final = history[-1] if history else {}
    return {
        "best_val_score": best.get("score"),
        "best_epoch": best.get("epoch"),
        "epochs": len(history),
        "final_train_loss": final.get("train_loss"),
        "final_val_loss": final.get("val_loss"),
        "final_val_score": final.get("val_score"),
        "train_series": series.get("train"),
        "val_series": series.get("val"),
        "skipped_series": skipped_series,
        "best_val_auc": best.get("auc"),
    }
