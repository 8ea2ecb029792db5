"""Aggregation of K-fold cross-validation metrics into one summary.

Each fold ``k`` trains on the train+val series whose ``fold`` column in ``data/splits.csv``
differs from ``k`` and is evaluated on fold ``k``. Its evaluate stage writes a metrics JSON
in the format of ``metrics/evaluate.json``: a top-level ``challenge_score`` (number or
null) and ``auc``, a mapping of the 14 label names to AUROC or null. The summary gives, for
the challenge score and for each label's AUROC, the mean, the sample standard deviation
(``ddof=1``, the spread between folds), the minimum, the maximum and the number of folds
where the value is defined.
"""

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rsna import fileio
from rsna.labels import LABEL_COLUMNS
from rsna.pictures.curves import plot_fold_scores, read_history

logger = logging.getLogger(__name__)

FOLD_PLACEHOLDER = "{fold}"


def summarize(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Return mean, sample std (``ddof=1``), min, max and count of the defined values.

    None entries (undefined metrics) are left out and ``count`` is how many remain.
    Statistics of no value are None, and ``std`` is None below two values.
    """
    defined = [float(value) for value in values if value is not None]
    count = len(defined)
    if count == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "count": 0}

    mean = math.fsum(defined) / count
    std = None
    if count > 1:
        std = math.sqrt(math.fsum((value - mean) ** 2 for value in defined) / (count - 1))
    return {"mean": mean, "std": std, "min": min(defined), "max": max(defined), "count": count}


def fold_paths(pattern: str, folds: Sequence[int]) -> dict[int, Path]:
    """Expand a path pattern containing ``{fold}`` into one path per fold.

    Raises ValueError when the pattern lacks the placeholder, the folds repeat or a fold is
    negative.
    """
    if FOLD_PLACEHOLDER not in pattern:
        raise ValueError(
            f"path pattern {pattern!r} lacks {FOLD_PLACEHOLDER}; e.g. cv/evaluate/fold{{fold}}.json"
        )
    folds = [int(fold) for fold in folds]
    if len(set(folds)) != len(folds) or any(fold < 0 for fold in folds):
        raise ValueError(f"folds {folds} are invalid: expected distinct integers >= 0")
    return {fold: Path(pattern.replace(FOLD_PLACEHOLDER, str(fold))) for fold in folds}


def read_fold_metrics(paths: Mapping[int, str | os.PathLike]) -> dict[int, dict[str, Any]]:
    """Read each fold's evaluate metrics JSON; raise naming the file when it is unusable."""
    metrics = {}
    for fold, path in sorted(paths.items()):
        try:
            with open(path, encoding="utf-8") as handle:
                payload = json.load(handle)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"metrics of fold {fold} not found at {path}; run `dvc repro cv/dvc.yaml` "
                "to train and evaluate every fold"
            ) from error
        except json.JSONDecodeError as error:
            raise ValueError(
                f"metrics of fold {fold} at {path} are not valid JSON: {error}"
            ) from error
        _check_fold_metrics(payload, fold=fold, path=path)
        metrics[fold] = payload
    return metrics


def aggregate_fold_metrics(fold_metrics: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Combine per-fold evaluate metrics into the cross-validation summary.

    Returns ``{"folds": [...], "challenge_score": summary, "fold_challenge_score":
    {"fold0": score, ...}, "auc": {label: summary}}``, where each summary is the dict of
    :func:`summarize`. Folds with an undefined (null) score are logged and left out of the
    statistics; raises ValueError when no fold has a defined challenge score.
    """
    if not fold_metrics:
        raise ValueError("no fold metrics to aggregate; expected at least one fold")
    folds = sorted(fold_metrics)
    scores = {fold: fold_metrics[fold]["challenge_score"] for fold in folds}
    for fold, score in scores.items():
        if score is None:
            logger.warning(
                "fold %d has an undefined challenge score; it is left out of the mean", fold
            )

    score_summary = summarize(list(scores.values()))
    if score_summary["count"] == 0:
        raise ValueError(
            f"no fold among {folds} has a defined challenge_score; check each fold's evaluate log"
        )
    if score_summary["count"] < 2:
        logger.warning(
            "only %d fold has a defined score; the spread between folds is undefined",
            score_summary["count"],
        )

    auc = {
        label: summarize([fold_metrics[fold]["auc"].get(label) for fold in folds])
        for label in LABEL_COLUMNS
    }
    return {
        "folds": folds,
        "challenge_score": score_summary,
        "fold_challenge_score": {f"fold{fold}": scores[fold] for fold in folds},
        "auc": auc,
    }


def write_cv_summary(
    *,
    folds: Sequence[int],
    fold_metrics_pattern: str,
    summary_path: str | os.PathLike,
    auc_path: str | os.PathLike,
    picture_path: str | os.PathLike,
    fold_history_pattern: str | None = None,
) -> dict[str, Any]:
    """Read every fold's metrics, write the summary JSONs and a PNG of the fold scores.

    ``summary_path`` receives the folds, the challenge score summary and each fold's score:
    a few columns for ``dvc exp show``. ``auc_path`` receives the per-label AUROC summaries
    (``{"auc": {label: summary}}``), 70 values that would crowd that table.
    ``fold_metrics_pattern`` and ``fold_history_pattern`` are paths containing ``{fold}``
    (see :func:`fold_paths`). Histories are optional; with them the picture also shows each
    fold's validation score per epoch. Returns the whole summary of
    :func:`aggregate_fold_metrics`.
    """
    fold_metrics = read_fold_metrics(fold_paths(fold_metrics_pattern, folds))
    summary = aggregate_fold_metrics(fold_metrics)
    fileio.write_json(summary_path, {key: value for key, value in summary.items() if key != "auc"})
    fileio.write_json(auc_path, {"auc": summary["auc"]})

    histories = None
    if fold_history_pattern is not None:
        history_paths = fold_paths(fold_history_pattern, folds)
        histories = {fold: read_history(path) for fold, path in history_paths.items()}
    plot_fold_scores(
        fold_scores={fold: metrics["challenge_score"] for fold, metrics in fold_metrics.items()},
        score_mean=summary["challenge_score"]["mean"],
        score_std=summary["challenge_score"]["std"],
        destination=picture_path,
        fold_histories=histories,
    )

    score = summary["challenge_score"]
    logger.info(
        "cross-validation over %d folds: challenge score mean %.4f, std %s, min %.4f, max %.4f",
        len(fold_metrics),
        score["mean"],
        "undefined" if score["std"] is None else f"{score['std']:.4f}",
        score["min"],
        score["max"],
    )
    return summary


def _check_fold_metrics(payload: Any, *, fold: int, path: str | os.PathLike) -> None:
    if not isinstance(payload, dict) or "challenge_score" not in payload or "auc" not in payload:
        raise ValueError(
            f"metrics of fold {fold} at {path} lack challenge_score or auc; expected the format "
            "of metrics/evaluate.json"
        )
    score = payload["challenge_score"]
    if score is not None and not (isinstance(score, int | float) and math.isfinite(score)):
        raise ValueError(
            f"metrics of fold {fold} at {path}: challenge_score {score!r} is not a number or null"
        )
    if not isinstance(payload["auc"], dict):
        raise ValueError(
            f"metrics of fold {fold} at {path}: auc must map label names to AUROC, "
            f"got {payload['auc']!r}"
        )
    unknown = sorted(set(payload["auc"]) - set(LABEL_COLUMNS))
    if unknown:
        raise ValueError(f"metrics of fold {fold} at {path}: unknown labels in auc {unknown}")
