"""Evaluation of a trained checkpoint: predictions, per-label and per-modality AUROC, ROC data.

Every prediction goes through :func:`predict_probabilities`, which the inference command
uses too: for a preprocessed volume ``(z, y, x)`` call :func:`prepare_image` and then
:func:`predict_probabilities`, or :func:`predict_volume` for both. With ``tta_flip`` the
prediction is the mean of the volume's and its left-right mirror's probabilities, the
mirror's Left/Right labels swapped back.
"""

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rsna import fileio
from rsna.data import (
    SPLITS,
    EpochSampler,
    VolumeDataset,
    VolumeRecord,
    count_preprocess_rejected,
    extract_window,
    load_split_records,
    make_loader,
    screen_volumes,
    window_start,
)
from rsna.labels import LABEL_COLUMNS, left_right_permutation
from rsna.logs import progress_disabled
from rsna.metrics import challenge_score, per_label_auroc, roc_curves
from rsna.training.checkpoint import check_compatible, model_from_checkpoint
from rsna.training.distributed import resolve_device
from rsna.training.optimization import PRECISION_DTYPES
from rsna.training.reporting import write_rows_csv

logger = logging.getLogger(__name__)

ROC_COLUMNS: tuple[str, ...] = ("label", "fpr", "tpr")
PREDICTION_COLUMNS: tuple[str, ...] = ("SeriesInstanceUID", *LABEL_COLUMNS)


@dataclasses.dataclass(frozen=True)
class EvaluateSettings:
    """The ``evaluate`` section of params.yaml; params.yaml documents each key."""

    split: str = "test"
    tta_flip: bool = True
    batch_size: int = 4
    num_workers: int = 0
    device: str = "auto"
    precision: str = "float32"
    threads: int = 0
    check_values: bool = True
    max_bad_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} is invalid; valid choices: {list(SPLITS)}")
        if self.precision not in PRECISION_DTYPES:
            raise ValueError(
                f"precision {self.precision!r} is invalid; "
                f"valid choices: {sorted(PRECISION_DTYPES)}"
            )
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(
                "need batch_size >= 1 and num_workers >= 0, "
                f"got {self.batch_size} and {self.num_workers}"
            )
        if self.threads < 0:
            raise ValueError(f"threads must be an integer >= 0, got {self.threads}")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


def prepare_image(volume: np.ndarray, *, input_shape: Sequence[int] | None) -> torch.Tensor:
    """Return a volume ``(z, y, x)`` as the model input ``(1, 1, z, y, x)`` float32.

    The volume is centre-cropped or zero-padded to ``input_shape`` as in validation;
    ``None`` keeps its shape.
    """
    shape = tuple(input_shape) if input_shape is not None else volume.shape
    starts = [
        window_start(size, target, rng=None, max_shift=0)
        for size, target in zip(volume.shape, shape, strict=True)
    ]
    window = extract_window(volume, starts, shape)
    return torch.from_numpy(window)[None, None]


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    *,
    tta_flip: bool,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Return probabilities ``(N, 14)`` float32 on the CPU for images ``(N, 1, z, y, x)``.

    ``model`` must be in eval mode on ``device``. ``dtype`` other than float32 runs the
    model under autocast. Label order is :data:`rsna.labels.LABEL_COLUMNS`.
    """
    device = torch.device(device)
    images = images.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        probabilities = torch.sigmoid(model(images).float())
        if tta_flip:
            mirrored = torch.sigmoid(model(torch.flip(images, dims=[-1])).float())
            probabilities = 0.5 * (probabilities + mirrored[:, left_right_permutation()])
    return probabilities.cpu()


def predict_volume(
    model: nn.Module,
    volume: np.ndarray,
    *,
    input_shape: Sequence[int] | None,
    tta_flip: bool,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Return the 14 probabilities (float32) of one preprocessed volume ``(z, y, x)``."""
    image = prepare_image(np.asarray(volume), input_shape=input_shape)
    return predict_probabilities(model, image, tta_flip=tta_flip, device=device)[0].numpy()


def predict_dataset(
    model: nn.Module,
    dataset: VolumeDataset,
    *,
    batch_size: int,
    num_workers: int,
    tta_flip: bool,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Return probabilities ``(len(dataset), 14)`` in the dataset's order."""
    sampler = EpochSampler(dataset, seed=0, shuffle=False)
    loader = make_loader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2,
        drop_last=False,
    )
    parts = []
    for batch in tqdm(loader, desc="predict", unit="batch", disable=progress_disabled()):
        parts.append(
            predict_probabilities(
                model, batch["image"], tta_flip=tta_flip, device=device, dtype=dtype
            )
        )
    return torch.cat(parts).numpy()


def modality_report(
    records: Sequence[VolumeRecord], probabilities: np.ndarray, targets: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Return, per train.csv modality: series count, challenge score and per-label AUROC."""
    modalities = np.array([record.modality for record in records])
    report = {}
    for modality in sorted(set(modalities)):
        rows = modalities == modality
        aucs = per_label_auroc(probabilities[rows], targets[rows])
        report[modality] = {
            "series": int(rows.sum()),
            "challenge_score": challenge_score(aucs, context=f"test {modality}"),
            "auc": aucs,
        }
    return report


def evaluate_checkpoint(
    *,
    checkpoint_path: str | os.PathLike,
    volume_spec: dict[str, Any],
    volumes_dir: str | os.PathLike,
    index_path: str | os.PathLike,
    splits_path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    metrics_path: str | os.PathLike,
    roc_path: str | os.PathLike,
    predictions_path: str | os.PathLike,
    split: str = "test",
    fold: int | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    tta_flip: bool = True,
    device: str = "auto",
    precision: str = "float32",
    threads: int = 0,
    check_values: bool = True,
    max_bad_fraction: float = 0.05,
) -> dict[str, Any]:
    """Predict the series of ``split`` with a checkpoint and write metrics, ROC and predictions.

    ``volume_spec`` is the preprocessing of the volumes on disk; a checkpoint trained on
    other preprocessing raises :class:`rsna.training.checkpoint.IncompatibleCheckpointError`
    naming the settings that differ. With ``fold`` the series of cross-validation fold
    ``k`` are evaluated instead of ``split`` (see :func:`rsna.data.select_series`).
    ``threads`` > 0 sets the torch thread count, because CPU results differ in the last
    bits between thread counts. Returns the metrics written.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    model, checkpoint = model_from_checkpoint(checkpoint_path, device=torch_device)
    check_compatible(checkpoint, params={"preprocess": _plain(volume_spec)}, path=checkpoint_path)

    if fold is not None:
        split = "val"
    records = load_split_records(
        split=split,
        fold=fold,
        volumes_dir=volumes_dir,
        index_path=index_path,
        splits_path=splits_path,
        manifest_path=manifest_path,
    )
    usable = screen_volumes(
        records,
        split=split,
        expected_shape=tuple(volume_spec["shape"]),
        check_values=check_values,
        max_bad_fraction=max_bad_fraction,
    )
    dataset = VolumeDataset(
        usable, input_shape=checkpoint["params"]["train"]["input_shape"], augment=None
    )
    probabilities = predict_dataset(
        model,
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        tta_flip=tta_flip,
        device=torch_device,
        dtype=PRECISION_DTYPES[precision],
    )

    metrics = _metrics(
        dataset,
        probabilities,
        checkpoint=checkpoint,
        tta_flip=tta_flip,
        skipped=len(records) - len(usable),
        preprocess_rejected=count_preprocess_rejected(records),
    )
    _write_outputs(
        dataset,
        probabilities,
        metrics=metrics,
        metrics_path=metrics_path,
        roc_path=roc_path,
        predictions_path=predictions_path,
    )
    return metrics


def _metrics(
    dataset: VolumeDataset,
    probabilities: np.ndarray,
    *,
    checkpoint: dict[str, Any],
    tta_flip: bool,
    skipped: int,
    preprocess_rejected: int,
) -> dict[str, Any]:
    """Return the content of the metrics JSON.

    ``skipped_series`` counts every series of the split left out, and
    ``preprocess_rejected_series`` those of them that the preprocess stage rejected.
    """
    targets = dataset.labels_array()
    aucs = per_label_auroc(probabilities, targets)
    score = challenge_score(aucs, context="test")
    logger.info(
        "Challenge score %s on %d series",
        "undefined" if score is None else f"{score:.4f}",
        len(dataset),
    )
    return {
        "challenge_score": score,
        "auc": aucs,
        "series": len(dataset),
        "skipped_series": skipped,
        "preprocess_rejected_series": preprocess_rejected,
        "tta_flip": tta_flip,
        "checkpoint_epoch": checkpoint["epoch"],
        "modality": modality_report(dataset.records, probabilities, targets),
    }


def _write_outputs(
    dataset: VolumeDataset,
    probabilities: np.ndarray,
    *,
    metrics: dict[str, Any],
    metrics_path: str | os.PathLike,
    roc_path: str | os.PathLike,
    predictions_path: str | os.PathLike,
) -> None:
    predictions = [
        {
            "SeriesInstanceUID": record.SeriesInstanceUID,
            **dict(zip(LABEL_COLUMNS, row.tolist(), strict=True)),
        }
        for record, row in zip(dataset.records, probabilities, strict=True)
    ]
    write_rows_csv(predictions_path, predictions, columns=PREDICTION_COLUMNS)
    write_rows_csv(roc_path, roc_curves(probabilities, dataset.labels_array()), columns=ROC_COLUMNS)
    fileio.write_json(metrics_path, metrics)
    logger.info("Wrote %s, %s and %s", Path(metrics_path), Path(roc_path), Path(predictions_path))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
