"""Tiny synthetic preprocessed datasets and params files for the training tests.

A dataset has the layout the train and evaluate stages read: ``volumes/<uid>.npy``
(float16, ``(z, y, x)``, values in [0, 1]), ``volumes_index.jsonl``, ``splits.csv`` and
``manifest.jsonl``. Positive series get one bright cube per labelled location: on the
patient's left half (high ``x``) for Left locations and on the right half for Right
ones. A small network can learn these labels, and a flip must swap them.
"""

import csv
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from rsna.labels import ANEURYSM_PRESENT, LABEL_COLUMNS, LOCATION_COLUMNS
from rsna.training import TrainPaths
from rsna.training.checkpoint import BEST_NAME
from rsna.training.settings import train_settings_from_section
from rsna.training.trainer import run_training

SHAPE = (16, 32, 32)
MODALITIES = ("CTA", "MRA")


def location_centre(name: str, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Return the voxel (z, y, x) where the cube of location ``name`` is drawn."""
    z_size, y_size, x_size = shape
    index = LOCATION_COLUMNS.index(name)
    z = 3 + (index % 4) * (z_size - 6) // 3
    y = 4 + (index // 4) * (y_size - 8) // 3
    if name.startswith("Left "):
        x = x_size - 6
    elif name.startswith("Right "):
        x = 5
    else:
        x = x_size // 2
    return z, y, x


def synthetic_volume(labels: np.ndarray, rng: np.random.Generator, shape=SHAPE) -> np.ndarray:
    """Return a float16 volume (z, y, x) of faint noise with a cube per positive location."""
    volume = rng.uniform(0.0, 0.2, size=shape).astype(np.float32)
    for name, value in zip(LABEL_COLUMNS, labels, strict=True):
        if value and name in LOCATION_COLUMNS:
            z, y, x = location_centre(name, shape)
            volume[z - 1 : z + 2, y - 2 : y + 3, x - 2 : x + 3] = 1.0
    return volume.astype(np.float16)


def random_labels(rng: np.random.Generator, *, positive: bool) -> np.ndarray:
    """Return 14 labels: up to two locations for a positive series, none otherwise."""
    labels = np.zeros(len(LABEL_COLUMNS), dtype=np.int64)
    if positive:
        for index in rng.choice(len(LOCATION_COLUMNS), size=rng.integers(1, 3), replace=False):
            labels[index] = 1
        labels[LABEL_COLUMNS.index(ANEURYSM_PRESENT)] = 1
    return labels


def localizers_of(labels: np.ndarray, shape: tuple[int, int, int]) -> list[dict]:
    """Return the index's localizer points: the centre of each positive location's cube."""
    points = []
    for name, value in zip(LABEL_COLUMNS, labels, strict=True):
        if value and name in LOCATION_COLUMNS:
            z, y, x = location_centre(name, shape)
            points.append({"z": float(z), "y": float(y), "x": float(x), "location": name})
    return points


def uid_of(number: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{number + 1}"


def write_dataset(
    root: Path,
    *,
    counts: dict[str, int] | None = None,
    shape: tuple[int, int, int] = SHAPE,
    seed: int = 0,
    folds: int = 2,
) -> dict[str, Path]:
    """Write a synthetic dataset under ``root`` and return the paths the stages take."""
    counts = counts or {"train": 24, "val": 12, "test": 12}
    rng = np.random.default_rng(seed)
    paths = {
        "volumes": root / "volumes",
        "index": root / "volumes_index.jsonl",
        "splits": root / "splits.csv",
        "manifest": root / "manifest.jsonl",
    }
    paths["volumes"].mkdir(parents=True, exist_ok=True)

    index, splits, manifest = [], [], []
    number = 0
    for split, count in counts.items():
        for position in range(count):
            uid = uid_of(number)
            labels = random_labels(rng, positive=position % 2 == 0)
            np.save(paths["volumes"] / f"{uid}.npy", synthetic_volume(labels, rng, shape))
            modality = MODALITIES[(position // 2) % len(MODALITIES)]
            index.append(
                {
                    "SeriesInstanceUID": uid,
                    "file": f"{uid}.npy",
                    "shape": list(shape),
                    "Modality": modality,
                    "sha256": f"sha256-{uid}",
                    "localizers_zyx": localizers_of(labels, shape),
                }
            )
            fold = -1 if split == "test" else number % folds
            splits.append(
                {"SeriesInstanceUID": uid, "PatientID": f"P{number}", "split": split, "fold": fold}
            )
            manifest.append(
                {"SeriesInstanceUID": uid, "Modality": modality, "labels": labels.tolist()}
            )
            number += 1

    _write_jsonl(paths["index"], index)
    _write_jsonl(paths["manifest"], manifest)
    with open(paths["splits"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["SeriesInstanceUID", "PatientID", "split", "fold"]
        )
        writer.writeheader()
        writer.writerows(splits)
    return paths


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def tiny_train_section(**overrides) -> dict:
    """Return a ``train`` section for a fast CPU run on :data:`SHAPE` volumes."""
    section = {
        "model": {"name": "resnet10", "width": 4, "norm": "batch", "norm_groups": 2},
        "augment": {
            "flip_probability": 0.5,
            "shift_voxels": [1, 2, 2],
            "intensity_scale": 0.1,
            "intensity_shift": 0.05,
        },
        "seed": 3,
        "epochs": 2,
        "batch_size": 4,
        "lr": 0.003,
        "min_lr": 0.0001,
        "warmup_epochs": 0.5,
        "input_shape": None,
        "device": "cpu",
        "threads": 1,
        "num_workers": 0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            section[key] = {**section.get(key, {}), **value}
        else:
            section[key] = value
    return section


def preprocess_section(shape: tuple[int, int, int] = SHAPE) -> dict:
    """Return a ``preprocess`` section whose shape matches the synthetic volumes."""
    return {
        "spacing_mm": [2.0, 2.0, 2.0],
        "shape": list(shape),
        "ct_window_hu": [-100.0, 600.0],
        "mr_percentiles": [1.0, 99.0],
    }


def write_params(path: Path, *, train: dict, evaluate: dict | None = None, shape=SHAPE) -> Path:
    """Write a params file with train, preprocess and evaluate sections."""
    params = {
        "preprocess": preprocess_section(shape),
        "train": train,
        "evaluate": evaluate or {"batch_size": 4, "device": "cpu", "tta_flip": True},
    }
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def stage_arguments(paths: dict[str, Path], out: Path) -> list[str]:
    """Return the data and output arguments of stages/train.py for a dataset and output folder."""
    return [
        "--volumes",
        str(paths["volumes"]),
        "--index",
        str(paths["index"]),
        "--splits",
        str(paths["splits"]),
        "--manifest",
        str(paths["manifest"]),
        "--models-dir",
        str(out / "models"),
        "--metrics",
        str(out / "metrics" / "train.json"),
        "--history",
        str(out / "plots" / "history.csv"),
        "--activations",
        str(out / "plots" / "activations.csv"),
    ]


def train_checkpoint(
    root: Path, data: dict[str, Path], *, train_section: dict, volume_spec: dict
) -> Path:
    """Train on ``data`` (from :func:`write_dataset`) into ``root/models``; return best.pt.

    Training turns on deterministic algorithms and sets the torch thread count for the
    whole process, so both are restored for the tests that run after it.
    """
    paths = TrainPaths(
        volumes_dir=data["volumes"],
        index=data["index"],
        splits=data["splits"],
        manifest=data["manifest"],
        models_dir=root / "models",
        metrics=root / "train.json",
        history=root / "history.csv",
    )
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()

    run_training(
        settings=train_settings_from_section(train_section),
        volume_spec=volume_spec,
        paths=paths,
    )

    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)
    return root / "models" / BEST_NAME
