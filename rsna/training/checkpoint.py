"""Checkpoint files: atomic saving, safe loading, params fingerprints and model rebuilding.

A checkpoint is a ``torch.save`` file of plain containers and tensors, so
``torch.load(weights_only=True)`` reads it without running any pickled code. Fields:

- ``format``: :data:`CHECKPOINT_FORMAT`; ``kind``: ``"last"`` or ``"best"``.
- ``model``: state dict of the plain network (no ``module.`` or ``_orig_mod.`` prefixes).
- ``optimizer``, ``scheduler``, ``scaler``: their state dicts (``"last"`` only; ``None``
  in ``"best"``, which is meant for evaluation and inference).
- ``params``: ``{"model": ..., "train": ..., "preprocess": ...}``, the settings the
  weights were trained with, as plain dicts. ``params["model"]`` contains the keyword
  arguments of :func:`rsna.model.build_model`. ``params["preprocess"]`` contains the
  voxel settings of the volumes (spacing_mm, shape, ct_window_hu, mr_percentiles).
- ``fingerprint``: SHA-256 of the settings that decide the weights plus the data
  fingerprint; ``data_fingerprint``: SHA-256 of the training and validation series,
  their labels and volume keys.
- ``epoch``: completed epochs; ``batches_done``: batches of the next epoch already
  trained (a checkpoint written mid-epoch); ``global_step``: optimizer steps;
  ``finished``: whether the run completed.
- ``sampler``: ``{"seed", "epoch", "start"}``; ``rng``: ``{"torch", "cuda"}`` generator states.
- ``epoch_loss_sum``, ``epoch_loss_count``: training loss accumulated in the current epoch.
- ``history``: one dict per completed epoch (epoch, train_loss, val_loss, val_score, lr);
  ``activation_rows``: recorded activation statistics; ``best``: ``{"score", "epoch",
  "auc"}`` of the best validation epoch so far.
- ``label_columns``: the 14 label names in logit order; ``train_prevalence``: fraction of
  positive training series per label (the fallback prediction for unreadable series);
  ``pos_weight``: the BCE positive weights used.
- ``wandb_run_id``: the Weights & Biases run to continue, or ``None``; ``torch_version``.
"""

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsna import fileio
from rsna.labels import LABEL_COLUMNS
from rsna.model import build_model

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
REQUIRED_FIELDS = ("format", "kind", "model", "params", "fingerprint", "epoch", "label_columns")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or lacks required fields."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint trained with other params than the ones it is used with."""


def fingerprint(payload: Any) -> str:
    """Return the SHA-256 hex digest of ``payload`` as canonical JSON (sorted keys)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return nested mappings as ``{"section.key": value}``."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def differing_params(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Return ``"key: saved -> current"`` for every dotted key whose value differs."""
    old, new = flatten_params(saved), flatten_params(current)
    missing = "(absent)"
    return [
        f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]


def check_compatible(
    checkpoint: dict[str, Any], *, params: dict[str, Any], path: str | os.PathLike
) -> None:
    """Raise :class:`IncompatibleCheckpointError` naming each param that differs.

    ``params`` has the layout of the checkpoint's ``params`` field restricted to the
    sections and keys to compare (for example only ``{"preprocess": ...}``).
    """
    saved = {section: checkpoint["params"].get(section, {}) for section in params}
    differences = differing_params(saved, params)
    if differences:
        raise IncompatibleCheckpointError(
            f"checkpoint {path} was trained with other params: {'; '.join(differences)}. "
            "Use a checkpoint trained with these params, or retrain"
        )


def canonical_copy(value: Any, strings: dict[str, str] | None = None) -> Any:
    """Return a copy of nested containers in which equal strings are one object.

    Pickle writes a repeated object as a reference to its first occurrence, so whether
    two equal strings are one object or two changes the bytes of ``torch.save``. After
    this copy the bytes depend on the content alone, and a resumed run writes the same
    checkpoint file as an uninterrupted one. Tensors are kept as they are.
    """
    strings = {} if strings is None else strings
    if isinstance(value, str):
        return strings.setdefault(value, value)
    if isinstance(value, dict):
        return {
            canonical_copy(key, strings): canonical_copy(item, strings)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(canonical_copy(item, strings) for item in value)
    return value


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a kill leaves the old file or the new one.

    The same content always gives the same bytes (see :func:`canonical_copy`).
    """
    with fileio.atomic_path(path) as temporary:
        torch.save(canonical_copy(payload), temporary)


def load_checkpoint(path: str | os.PathLike, *, map_location: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its fields."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; run the train stage first")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        IndexError,
        KeyError,
        pickle.UnpicklingError,
    ) as error:
        # torch's own message may advise weights_only=False, which would run arbitrary code
        # from the file; only the error type is shown.
        raise CheckpointError(
            f"checkpoint {path} is not a checkpoint written by this package "
            f"({type(error).__name__} while loading it with weights_only=True); "
            "pass the models/best.pt or models/last.pt of a train run"
        ) from error

    missing = [
        field for field in REQUIRED_FIELDS if not isinstance(payload, dict) or field not in payload
    ]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks fields {missing}; it was not written by this package"
        )
    if payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {payload['format']}, this code reads format "
            f"{CHECKPOINT_FORMAT}; retrain or use a matching version of the code"
        )
    if list(payload["label_columns"]) != list(LABEL_COLUMNS):
        raise CheckpointError(
            f"checkpoint {path} predicts labels {payload['label_columns']}, "
            f"expected {list(LABEL_COLUMNS)}"
        )
    return payload


def model_from_checkpoint(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network from a checkpoint; return it in eval mode and the checkpoint.

    The architecture comes from ``checkpoint["params"]["model"]``, never from the current
    params.yaml. Gradient checkpointing, ``torch.compile`` and the initial-weights file
    of training are left out: they do not change the computed function.
    """
    checkpoint = load_checkpoint(path)
    settings = dict(checkpoint["params"]["model"])
    settings.update(gradient_checkpointing=False, compile=False, init_weights=None)

    model = build_model(**settings)
    model.load_state_dict(checkpoint["model"])
    model.to(device)
    model.eval()

    logger.info(
        "Loaded %s checkpoint %s (epoch %d, %s width %d)",
        checkpoint["kind"],
        path,
        checkpoint["epoch"],
        settings["name"],
        settings["width"],
    )
    return model, checkpoint
