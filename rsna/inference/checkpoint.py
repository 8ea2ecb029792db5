"""A checkpoint made ready for inference: the network, its preprocessing and its fallback.

Every setting that decides a prediction comes from the checkpoint, never from the current
``params.yaml``: the architecture (``params["model"]``), the preprocessing of the training
volumes (``params["preprocess"]``), the model input window (``params["train"]["input_shape"]``)
and the training-set prevalence per label (``train_prevalence``), which is the prediction for
a series that cannot be read. :func:`params_differences` lists where a params file disagrees,
so that the caller can log it.
"""

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rsna.labels import LABEL_COLUMNS
from rsna.model import ModelConfigError, ModelSettings
from rsna.preprocess.settings import VolumeSpec
from rsna.training.checkpoint import CheckpointError, differing_params, model_from_checkpoint
from rsna.training.settings import RUNTIME_MODEL_KEYS, plain

logger = logging.getLogger(__name__)

VOLUME_SPEC_KEYS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(VolumeSpec))
# Model settings that change the computed function. Gradient checkpointing, channels-last,
# compilation and the initial weights do not.
MODEL_KEYS: tuple[str, ...] = tuple(
    field.name
    for field in dataclasses.fields(ModelSettings)
    if field.name not in RUNTIME_MODEL_KEYS and field.name != "init_weights"
)


@dataclasses.dataclass(frozen=True)
class InferenceModel:
    """A trained network in eval mode on ``device`` with the settings it was trained with.

    ``spec`` is the preprocessing of the training volumes. ``input_shape`` is the
    ``(z, y, x)`` window the network was trained on, or None for the whole volume.
    ``prevalence`` is float32 ``(14,)`` in :data:`rsna.labels.LABEL_COLUMNS` order: the
    fraction of positive training series per label. ``params`` is the checkpoint's
    ``params`` field as saved.
    """

    network: nn.Module
    path: Path
    device: torch.device
    spec: VolumeSpec
    input_shape: tuple[int, int, int] | None
    prevalence: np.ndarray
    params: dict[str, Any]
    epoch: int


def read_inference_model(path: str | os.PathLike, *, device: torch.device) -> InferenceModel:
    """Load a checkpoint onto ``device`` with everything inference needs.

    Raises :class:`rsna.training.checkpoint.CheckpointError` naming the file and the
    problem when the checkpoint is missing, unreadable, or lacks the preprocessing
    settings or the training prevalence.
    """
    path = Path(path)
    try:
        network, checkpoint = model_from_checkpoint(path, device=device)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ModelConfigError, RuntimeError) as error:
        # KeyError and TypeError come from missing or unknown model settings, RuntimeError
        # from weights whose names or shapes do not fit the architecture.
        raise CheckpointError(
            f"checkpoint {path} cannot be rebuilt into a network: {error}; "
            "use a checkpoint written by the train stage of this package"
        ) from error

    model = InferenceModel(
        network=network,
        path=path,
        device=device,
        spec=_volume_spec(checkpoint, path),
        input_shape=_input_shape(checkpoint, path),
        prevalence=_prevalence(checkpoint, path),
        params=checkpoint["params"],
        epoch=int(checkpoint["epoch"]),
    )
    _log_settings(model)
    return model


def inference_params(model: InferenceModel) -> dict[str, Any]:
    """Return the checkpoint settings that decide predictions, as plain nested dicts.

    The layout is ``{"preprocess": {...}, "model": {...}, "train": {"input_shape": ...}}``,
    the layout of :func:`current_inference_params`.
    """
    return {
        "preprocess": dict(zip(VOLUME_SPEC_KEYS, plain(_spec_values(model.spec)), strict=True)),
        "model": {key: model.params["model"].get(key) for key in MODEL_KEYS},
        "train": {"input_shape": plain(model.input_shape)},
    }


def current_inference_params(
    *,
    spec: VolumeSpec | None,
    model: ModelSettings | None,
    input_shape: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """Return settings from a params file in the layout of :func:`inference_params`.

    A None ``spec`` or ``model`` leaves that section out (the params file has none), and
    the ``train`` section comes with ``model``.
    """
    current: dict[str, Any] = {}
    if spec is not None:
        current["preprocess"] = dict(zip(VOLUME_SPEC_KEYS, plain(_spec_values(spec)), strict=True))
    if model is not None:
        current["model"] = {key: getattr(model, key) for key in MODEL_KEYS}
        current["train"] = {"input_shape": plain(input_shape)}
    return current


def params_differences(model: InferenceModel, *, current: dict[str, Any]) -> list[str]:
    """Return ``"section.key: checkpoint value -> current value"`` for each differing setting.

    Only the sections present in ``current`` are compared.
    """
    saved = inference_params(model)
    return differing_params({section: saved[section] for section in current}, current)


def _spec_values(spec: VolumeSpec) -> list[Any]:
    return [getattr(spec, key) for key in VOLUME_SPEC_KEYS]


def _volume_spec(checkpoint: dict[str, Any], path: Path) -> VolumeSpec:
    saved = checkpoint["params"].get("preprocess")
    if not isinstance(saved, dict) or any(key not in saved for key in VOLUME_SPEC_KEYS):
        raise CheckpointError(
            f"checkpoint {path} stores preprocessing settings {saved!r}, but inference needs "
            f"{list(VOLUME_SPEC_KEYS)}; use a checkpoint written by the train stage"
        )
    try:
        return VolumeSpec(**{key: tuple(saved[key]) for key in VOLUME_SPEC_KEYS})
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} has invalid preprocessing settings {saved!r}: {error}"
        ) from error


def _input_shape(checkpoint: dict[str, Any], path: Path) -> tuple[int, int, int] | None:
    train = checkpoint["params"].get("train")
    if not isinstance(train, dict) or "input_shape" not in train:
        raise CheckpointError(
            f"checkpoint {path} lacks params.train.input_shape (the model input window); "
            "use a checkpoint written by the train stage"
        )
    shape = train["input_shape"]
    if shape is None:
        return None
    if len(shape) != 3 or any(not isinstance(size, int) or size < 1 for size in shape):
        raise CheckpointError(
            f"checkpoint {path} has input_shape {shape!r}; expected null or three positive "
            "integers (z, y, x)"
        )
    return (shape[0], shape[1], shape[2])


def _prevalence(checkpoint: dict[str, Any], path: Path) -> np.ndarray:
    saved = checkpoint.get("train_prevalence")
    if saved is None:
        raise CheckpointError(
            f"checkpoint {path} lacks train_prevalence, the fallback prediction for "
            "unreadable series; retrain with the current train stage, which stores it"
        )
    prevalence = np.asarray(saved, dtype=np.float32)
    if prevalence.shape != (len(LABEL_COLUMNS),) or not np.all(
        (prevalence >= 0) & (prevalence <= 1)
    ):
        raise CheckpointError(
            f"checkpoint {path} has train_prevalence {saved!r}; expected "
            f"{len(LABEL_COLUMNS)} fractions in [0, 1] in the order of rsna.labels.LABEL_COLUMNS"
        )
    return prevalence


def _log_settings(model: InferenceModel) -> None:
    spec = model.spec
    logger.info(
        "Inference uses the preprocessing stored in %s: spacing_mm %s, shape %s, "
        "ct_window_hu %s, mr_percentiles %s; model input %s",
        model.path,
        list(spec.spacing_mm),
        list(spec.shape),
        list(spec.ct_window_hu),
        list(spec.mr_percentiles),
        "the whole volume" if model.input_shape is None else list(model.input_shape),
    )
