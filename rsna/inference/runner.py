"""Scoring many series: parallel reading, batched forward passes, fallback rows, output files.

Series are read and preprocessed by a ``DataLoader`` (in ``workers`` processes, or in this
one), and the images of a batch that share a shape go through the network together, by
way of :func:`rsna.evaluation.predict_probabilities`, the function the evaluate stage
uses. A series that fails gets the checkpoint's training prevalence and its reason.
"""

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from rsna import fileio
from rsna.evaluation import predict_probabilities
from rsna.inference.checkpoint import InferenceModel
from rsna.inference.series import STATUS_OK, PreparedSeries, prepare_series
from rsna.labels import LABEL_COLUMNS
from rsna.logs import progress_disabled

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS: tuple[str, ...] = ("SeriesInstanceUID", *LABEL_COLUMNS, "status")
OUTPUT_FORMATS: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
NON_FINITE_STATUS = "model output is NaN or infinite"


class OutputFormatError(ValueError):
    """An output file name whose extension names no supported format."""


@dataclasses.dataclass(frozen=True)
class SeriesPrediction:
    """The 14 probabilities of one series, float32 in LABEL_COLUMNS order, and its status.

    ``status`` is ``"ok"``, or the reason the probabilities are the training prevalence.
    """

    series_dir: str
    series_uid: str
    probabilities: np.ndarray
    status: str


class _SeriesFolders(Dataset):
    def __init__(
        self,
        series_dirs: Sequence[Path],
        *,
        model: InferenceModel,
    ) -> None:
        self.series_dirs = list(series_dirs)
        # Only the settings travel to worker processes, never the network.
        self.spec = model.spec
        self.input_shape = model.input_shape

    def __len__(self) -> int:
        return len(self.series_dirs)

    def __getitem__(self, index: int) -> PreparedSeries:
        return prepare_series(self.series_dirs[index], spec=self.spec, input_shape=self.input_shape)


def _keep_list(batch: list[PreparedSeries]) -> list[PreparedSeries]:
    return batch


def _limit_worker_threads(worker_id: int) -> None:
    # Each worker resamples one series at a time; more threads per worker would
    # oversubscribe the cores that the other workers and the forward pass use.
    torch.set_num_threads(1)


def score_prepared(
    model: InferenceModel,
    prepared: Sequence[PreparedSeries],
    *,
    tta_flip: bool,
    dtype: torch.dtype = torch.float32,
) -> list[SeriesPrediction]:
    """Score prepared series, one forward pass per group of equal image shapes.

    Failed series, and series whose output is not finite, get ``model.prevalence``.
    """
    predictions: list[SeriesPrediction | None] = [None] * len(prepared)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, series in enumerate(prepared):
        if series.image is None:
            predictions[index] = _fallback(model, series, series.status)
        else:
            groups.setdefault(tuple(series.image.shape), []).append(index)

    for indices in groups.values():
        images = torch.cat([prepared[index].image for index in indices])
        probabilities = predict_probabilities(
            model.network, images, tta_flip=tta_flip, device=model.device, dtype=dtype
        ).numpy()
        for index, row in zip(indices, probabilities, strict=True):
            predictions[index] = _scored(model, prepared[index], row)
    return predictions


def _scored(model: InferenceModel, series: PreparedSeries, row: np.ndarray) -> SeriesPrediction:
    if not np.all(np.isfinite(row)):
        logger.warning("Series %s: %s", series.series_uid, NON_FINITE_STATUS)
        return _fallback(model, series, NON_FINITE_STATUS)
    return SeriesPrediction(series.series_dir, series.series_uid, row, STATUS_OK)


def _fallback(model: InferenceModel, series: PreparedSeries, status: str) -> SeriesPrediction:
    return SeriesPrediction(series.series_dir, series.series_uid, model.prevalence.copy(), status)


def predict_series_dirs(
    model: InferenceModel,
    series_dirs: Sequence[str | os.PathLike],
    *,
    batch_size: int = 1,
    workers: int = 0,
    tta_flip: bool = True,
    dtype: torch.dtype = torch.float32,
) -> list[SeriesPrediction]:
    """Return one prediction per series folder, in the order of ``series_dirs``.

    ``batch_size`` series go through the network together; ``workers`` processes read
    and preprocess series in parallel (0: this process). Every folder gets a row:
    a series that cannot be read gets the training prevalence and its reason.
    """
    if batch_size < 1 or workers < 0:
        raise ValueError(f"need batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
    loader = DataLoader(
        _SeriesFolders([Path(folder) for folder in series_dirs], model=model),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_keep_list,
        worker_init_fn=_limit_worker_threads if workers > 0 else None,
        prefetch_factor=2 if workers > 0 else None,
    )

    predictions: list[SeriesPrediction] = []
    with tqdm(
        total=len(series_dirs), desc="predict", unit="series", disable=progress_disabled()
    ) as progress:
        for batch in loader:
            predictions.extend(score_prepared(model, batch, tta_flip=tta_flip, dtype=dtype))
            progress.update(len(batch))

    failed = sum(prediction.status != STATUS_OK for prediction in predictions)
    logger.info(
        "Scored %d of %d series; %d got the fallback prediction (training prevalence)",
        len(predictions) - failed,
        len(predictions),
        failed,
    )
    return predictions


def predictions_frame(predictions: Sequence[SeriesPrediction]) -> pd.DataFrame:
    """Return one row per prediction with the columns of :data:`OUTPUT_COLUMNS`."""
    rows = [
        [prediction.series_uid, *prediction.probabilities.tolist(), prediction.status]
        for prediction in predictions
    ]
    frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    return frame.astype({name: "float64" for name in LABEL_COLUMNS})


def output_format(path: str | os.PathLike) -> str:
    """Return ``"csv"`` or ``"parquet"`` from the extension of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise OutputFormatError(
            f"output file {path} has extension {suffix!r}; use one of {sorted(OUTPUT_FORMATS)}"
        )
    return OUTPUT_FORMATS[suffix]


def write_predictions(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` as CSV or parquet, chosen by the extension of ``path``, atomically."""
    file_format = output_format(path)
    with fileio.atomic_path(path) as temporary:
        if file_format == "csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False)
