"""Per-label AUROC and the challenge score.

The challenge score is the weighted mean of column-wise ROC AUCs with weight 13 for
``Aneurysm Present`` and 1 for each of the 13 locations, which equals
``0.5 * (AUC(Aneurysm Present) + mean of the 13 location AUCs)``. A label whose targets
hold a single class in the evaluated series has no AUROC: it is reported as ``None``,
left out of the location mean and named in a warning.
"""

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.classification import MultilabelAUROC
from torchmetrics.functional.classification import binary_roc

from rsna.labels import ANEURYSM_PRESENT, LABEL_COLUMNS, LOCATION_COLUMNS

logger = logging.getLogger(__name__)


def _as_tensors(
    probabilities: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.as_tensor(np.asarray(probabilities, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(targets)).to(torch.int64)
    if scores.ndim != 2 or scores.shape != labels.shape or scores.shape[1] != len(LABEL_COLUMNS):
        raise ValueError(
            f"expected probabilities and targets of shape (N, {len(LABEL_COLUMNS)}), "
            f"got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if not torch.isin(labels, torch.tensor([0, 1])).all():
        raise ValueError("targets must be 0 or 1")
    return scores, labels


def single_class_labels(targets: np.ndarray | torch.Tensor) -> list[str]:
    """Return the names of labels whose targets ``(N, 14)`` are all 0 or all 1."""
    labels = torch.as_tensor(np.asarray(targets))
    positives = labels.sum(dim=0)
    return [
        name
        for name, count in zip(LABEL_COLUMNS, positives.tolist(), strict=True)
        if count == 0 or count == labels.shape[0]
    ]


def per_label_auroc(
    probabilities: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor
) -> dict[str, float | None]:
    """Return the AUROC of each label, ``None`` where the targets hold a single class.

    ``probabilities`` and ``targets`` have shape ``(N, 14)`` in
    :data:`rsna.labels.LABEL_COLUMNS` order; targets are 0 or 1. The AUROC is exact
    (``torchmetrics`` ``MultilabelAUROC`` without thresholds).
    """
    scores, labels = _as_tensors(probabilities, targets)
    undefined = set(single_class_labels(labels))

    metric = MultilabelAUROC(num_labels=len(LABEL_COLUMNS), average=None, thresholds=None)
    with warnings.catch_warnings():
        # torchmetrics warns about single-class labels, which are reported as None below.
        warnings.simplefilter("ignore", UserWarning)
        values = metric(scores, labels).tolist()

    return {
        name: None if name in undefined else float(value)
        for name, value in zip(LABEL_COLUMNS, values, strict=True)
    }


def challenge_score(aucs: dict[str, float | None], *, context: str = "") -> float | None:
    """Return ``0.5 * (AUC(Aneurysm Present) + mean of the defined location AUCs)``.

    Undefined (``None``) location AUCs are left out of the mean and named in a warning.
    Returns ``None``, with a warning, when the ``Aneurysm Present`` AUC or every location
    AUC is undefined. ``context`` (such as ``"val"`` or ``"test CTA"``) prefixes the warning.
    """
    prefix = f"{context}: " if context else ""
    undefined = [name for name in LABEL_COLUMNS if aucs.get(name) is None]
    if undefined:
        logger.warning(
            "%sAUROC undefined (targets of a single class) and left out of the score: %s",
            prefix,
            ", ".join(undefined),
        )

    locations = [aucs[name] for name in LOCATION_COLUMNS if aucs.get(name) is not None]
    present = aucs.get(ANEURYSM_PRESENT)
    if present is None or not locations:
        logger.warning("%schallenge score undefined: too few labels with both classes", prefix)
        return None

    return 0.5 * (present + float(np.mean(locations)))


def score_predictions(
    probabilities: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    *,
    context: str = "",
) -> tuple[float | None, dict[str, float | None]]:
    """Return the challenge score and the per-label AUROC of ``(N, 14)`` predictions."""
    aucs = per_label_auroc(probabilities, targets)
    return challenge_score(aucs, context=context), aucs


def roc_curves(
    probabilities: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    *,
    labels: Sequence[str] = LABEL_COLUMNS,
) -> list[dict[str, str | float]]:
    """Return ROC curve points ``{label, fpr, tpr}`` for each label with both classes.

    Points of one label are in order of decreasing threshold, from (0, 0) to (1, 1).
    """
    scores, target_tensor = _as_tensors(probabilities, targets)
    undefined = set(single_class_labels(target_tensor))

    rows: list[dict[str, str | float]] = []
    for column, name in enumerate(LABEL_COLUMNS):
        if name not in labels or name in undefined:
            continue
        fpr, tpr, _ = binary_roc(scores[:, column], target_tensor[:, column], thresholds=None)
        for false_rate, true_rate in zip(fpr.tolist(), tpr.tolist(), strict=True):
            rows.append({"label": name, "fpr": false_rate, "tpr": true_rate})
    return rows
