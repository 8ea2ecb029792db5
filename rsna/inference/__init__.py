"""Inference: aneurysm probabilities for DICOM series from a trained checkpoint.

Two entry points share one per-series path (read and preprocess with the checkpoint's
settings, crop or pad as in evaluation, forward pass with optional left-right flip):

- :func:`predict`, the challenge's contract: called once per series folder, it returns a
  one-row ``pandas.DataFrame`` with the 14 columns of :data:`rsna.labels.LABEL_COLUMNS`.
  The model comes from :func:`load_model`, or on the first call from the checkpoint file
  named by the ``RSNA_CHECKPOINT`` environment variable, and is loaded once per process.
- :func:`rsna.inference.runner.predict_series_dirs`, behind ``rsna predict``: many series
  with parallel reading and batched forward passes.

Both average with the left-right mirror by default, as the evaluate stage does with its
default ``evaluate.tta_flip: true``, so that their probabilities match its predictions.

A series that cannot be read gets the training-set prevalence of each label, stored in the
checkpoint, and a WARNING with the reason, so one bad series never aborts a submission.
"""

import dataclasses
import logging
import os
import threading

import pandas as pd
import torch

from rsna.inference.checkpoint import InferenceModel, read_inference_model
from rsna.inference.runner import (
    OUTPUT_COLUMNS,
    SeriesPrediction,
    predict_series_dirs,
    predictions_frame,
    score_prepared,
    write_predictions,
)
from rsna.inference.series import STATUS_OK, find_series_dirs, prepare_series
from rsna.labels import LABEL_COLUMNS
from rsna.training.checkpoint import CheckpointError
from rsna.training.distributed import resolve_device
from rsna.training.optimization import PRECISION_DTYPES

logger = logging.getLogger(__name__)

CHECKPOINT_VARIABLE = "RSNA_CHECKPOINT"

__all__ = [
    "CHECKPOINT_VARIABLE",
    "OUTPUT_COLUMNS",
    "STATUS_OK",
    "InferenceModel",
    "SeriesPrediction",
    "current_model",
    "find_series_dirs",
    "load_model",
    "predict",
    "predict_series_dirs",
    "predictions_frame",
    "unload_model",
    "write_predictions",
]


@dataclasses.dataclass(frozen=True)
class _ProcessModel:
    model: InferenceModel
    tta_flip: bool
    dtype: torch.dtype


_lock = threading.Lock()
_process_model: _ProcessModel | None = None


def load_model(
    path: str | os.PathLike,
    *,
    device: str = "auto",
    tta_flip: bool = True,
    precision: str = "float32",
) -> InferenceModel:
    """Load a checkpoint as the model of :func:`predict` in this process and return it.

    ``device`` is ``auto`` (a GPU when available), ``cpu``, ``cuda`` or ``cuda:N``. With
    ``tta_flip`` each prediction is the mean over the volume and its left-right mirror,
    as in the evaluate stage.
    ``precision`` other than ``float32`` runs the network under autocast. Raises
    :class:`rsna.training.checkpoint.CheckpointError` for an unusable checkpoint.
    """
    if precision not in PRECISION_DTYPES:
        raise ValueError(
            f"precision {precision!r} is invalid; valid choices: {sorted(PRECISION_DTYPES)}"
        )
    model = read_inference_model(path, device=resolve_device(device))
    global _process_model
    with _lock:
        _process_model = _ProcessModel(model, tta_flip, PRECISION_DTYPES[precision])
    return model


def unload_model() -> None:
    """Forget the process model; the next :func:`predict` loads ``RSNA_CHECKPOINT`` again."""
    global _process_model
    with _lock:
        _process_model = None


def current_model() -> InferenceModel:
    """Return the process model, loading ``RSNA_CHECKPOINT`` on the first call.

    A model loaded from ``RSNA_CHECKPOINT`` uses the defaults of :func:`load_model`.
    """
    return _get_process_model().model


def _get_process_model() -> _ProcessModel:
    global _process_model
    with _lock:
        if _process_model is None:
            path = os.environ.get(CHECKPOINT_VARIABLE, "")
            if not path:
                raise CheckpointError(
                    "no inference model is loaded: set the environment variable "
                    f"{CHECKPOINT_VARIABLE} to a checkpoint file, or call "
                    "rsna.inference.load_model(path) first"
                )
            model = read_inference_model(path, device=resolve_device("auto"))
            _process_model = _ProcessModel(model, tta_flip=True, dtype=torch.float32)
        return _process_model


def predict(series_path: str) -> pd.DataFrame:
    """Return a one-row DataFrame with the 14 label probabilities of one series folder.

    Columns are :data:`rsna.labels.LABEL_COLUMNS` in order, values float64 in [0, 1];
    there is no ID column. A series that cannot be read gets the training prevalence of
    each label, and the reason is logged as a WARNING.
    """
    process_model = _get_process_model()
    model = process_model.model

    prepared = prepare_series(series_path, spec=model.spec, input_shape=model.input_shape)
    [prediction] = score_prepared(
        model, [prepared], tta_flip=process_model.tta_flip, dtype=process_model.dtype
    )
    return pd.DataFrame([prediction.probabilities.tolist()], columns=list(LABEL_COLUMNS))
