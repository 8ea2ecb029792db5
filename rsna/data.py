"""Training data: preprocessed volumes with their labels, augmentations and the sampler.

Inputs are the outputs of the earlier stages: ``data/volumes/<SeriesInstanceUID>.npy``
(float16, ``(z, y, x)``, values in [0, 1], canonical LPS orientation, so ``x`` increases
toward the patient's left), ``data/volumes_index.jsonl``, ``data/splits.csv`` and the
labels in ``data/manifest.jsonl``. A sample is a dict with ``image`` (float32 tensor
``(1, z, y, x)``), ``labels`` (float32 tensor ``(14,)`` in
:data:`rsna.labels.LABEL_COLUMNS` order) and the metadata ``SeriesInstanceUID``,
``Modality``, ``index``, ``flipped`` and ``localizers``: float32 ``(16, 4)`` rows
``(z, y, x, label)`` of the localizer points in voxel coordinates of ``image``, where
``label`` indexes :data:`rsna.labels.LABEL_COLUMNS` and is -1 on padding rows.

Augmentation randomness is drawn from a generator seeded by the sampler for each sample,
never from global state, so a given seed and epoch give the same batches for any number
of DataLoader workers, and a resumed run reads the same samples as an uninterrupted one.
"""

import csv
import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from rsna.fileio import read_jsonl
from rsna.labels import ANEURYSM_PRESENT, LABEL_COLUMNS, left_right_permutation
from rsna.logs import progress_disabled
from rsna.uid import InvalidUIDError, validate_uid

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Localizer rows per sample. Real series have at most a few aneurysms; extra points are
# dropped with a warning, so that samples batch into one tensor.
MAX_LOCALIZERS = 16
# A sampler item: (index into the dataset, seed of that sample's augmentation generator).
SampleKey = tuple[int, int]
# Path of the preprocess stage's rejects file: each rejected series with its reason.
PREPROCESS_REJECTS = "reports/preprocess_rejects.jsonl"


class TooManyBadVolumesError(RuntimeError):
    """Too many volumes of a split are missing or unusable, or none is usable."""


class SplitsFileError(ValueError):
    """A ``data/splits.csv`` that lacks a required column or the requested fold."""


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """Training-time augmentations; evaluation uses none of them.

    ``shift_voxels`` is the largest random translation (z, y, x) of the crop window, in
    voxels. ``intensity_scale`` and ``intensity_shift`` are the half-widths of the uniform
    ranges of a multiplicative factor ``1 + a`` and an additive offset ``b`` applied to the
    whole volume. ``flip_probability`` is the chance of a left-right flip.
    """

    flip_probability: float = 0.5
    shift_voxels: tuple[int, int, int] = (0, 0, 0)
    intensity_scale: float = 0.0
    intensity_shift: float = 0.0


@dataclasses.dataclass(frozen=True)
class VolumeRecord:
    """One series of a split: its volume file, labels (14, 0 or 1) and train.csv modality.

    ``indexed`` is False when the volume index has no line for the series, which means
    the preprocess stage rejected it; ``volume_sha256`` is then empty, and otherwise the
    index's SHA-256 of the volume file. ``localizers`` are the aneurysm points
    ``(z, y, x, label)`` in voxel coordinates of the saved volume, ``label`` indexing
    :data:`rsna.labels.LABEL_COLUMNS`.
    """

    SeriesInstanceUID: str
    path: Path
    labels: tuple[int, ...]
    modality: str
    volume_sha256: str = ""
    localizers: tuple[tuple[float, float, float, int], ...] = ()
    indexed: bool = True


@dataclasses.dataclass(frozen=True)
class SplitAssignment:
    """A series' line of ``data/splits.csv``: its split and its cross-validation fold."""

    split: str
    fold: int


def read_splits(path: str | os.PathLike) -> dict[str, SplitAssignment]:
    """Return ``{SeriesInstanceUID: SplitAssignment}`` from ``data/splits.csv``."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"SeriesInstanceUID", "split", "fold"} <= set(rows[0]):
        raise SplitsFileError(
            f"{path} must have columns SeriesInstanceUID, split and fold, found "
            f"{sorted(rows[0])}; rerun the split stage to rewrite it"
        )
    return {
        row["SeriesInstanceUID"]: SplitAssignment(split=row["split"], fold=int(row["fold"]))
        for row in rows
    }


def select_series(
    assignments: dict[str, SplitAssignment], *, role: str, fold: int | None
) -> list[str]:
    """Return the sorted UIDs that play ``role`` (train, val or test).

    Without ``fold`` the role is the split itself. With cross-validation fold ``k``,
    ``train`` is every train or val series whose fold is not ``k``, ``val`` is fold ``k``
    and ``test`` stays the held-out test split.
    """
    if role not in SPLITS:
        raise ValueError(f"unknown split {role!r}; valid choices: {list(SPLITS)}")
    if fold is None or role == "test":
        return sorted(uid for uid, entry in assignments.items() if entry.split == role)

    folds = {entry.fold for entry in assignments.values() if entry.split != "test"}
    if fold not in folds:
        raise SplitsFileError(
            f"fold {fold} not found in splits.csv; folds present: {sorted(folds)}. "
            "Choose one of them, or rerun the split stage with more split.folds"
        )
    in_fold = role == "val"
    return sorted(
        uid
        for uid, entry in assignments.items()
        if entry.split != "test" and (entry.fold == fold) == in_fold
    )


def load_split_records(
    *,
    split: str,
    volumes_dir: str | os.PathLike,
    index_path: str | os.PathLike,
    splits_path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    fold: int | None = None,
) -> list[VolumeRecord]:
    """Return the records of the series that play ``split`` (see :func:`select_series`).

    Records are sorted by SeriesInstanceUID. A series with no line in the volume index
    (rejected by the preprocess stage) gets ``indexed=False`` and the expected file name,
    and :func:`screen_volumes` skips it and counts it apart from unusable volumes.
    """
    volumes_dir = Path(volumes_dir)
    uids = select_series(read_splits(splits_path), role=split, fold=fold)
    index = {record["SeriesInstanceUID"]: record for record in read_jsonl(index_path)}
    manifest = {record["SeriesInstanceUID"]: record for record in read_jsonl(manifest_path)}

    records = []
    for uid in uids:
        try:
            validate_uid(uid)
        except InvalidUIDError as error:
            logger.warning("Series %r of splits.csv skipped: %s", uid, error)
            continue
        if uid not in manifest:
            logger.warning("Series %s skipped: in splits.csv but not in the manifest", uid)
            continue
        entry = index.get(uid, {})
        file_name = entry.get("file", f"{uid}.npy")
        records.append(
            VolumeRecord(
                SeriesInstanceUID=uid,
                path=volumes_dir / Path(file_name).name,
                labels=tuple(int(value) for value in manifest[uid]["labels"]),
                modality=str(entry.get("Modality", manifest[uid].get("Modality"))),
                volume_sha256=str(entry.get("sha256", "")),
                localizers=localizer_points(entry.get("localizers_zyx", []), uid=uid),
                indexed=uid in index,
            )
        )
    where = "" if fold is None else f" (cross-validation fold {fold})"
    logger.info("Split %s%s: %d series", split, where, len(records))
    return records


def localizer_points(
    points: Sequence[dict], *, uid: str
) -> tuple[tuple[float, float, float, int], ...]:
    """Return index points ``{z, y, x, location}`` as ``(z, y, x, label index)`` tuples.

    A point whose location is not a label name is skipped with a warning naming the series.
    """
    result = []
    for point in points:
        location = point.get("location")
        if location not in LABEL_COLUMNS:
            logger.warning(
                "Series %s: localizer location %r is not a label; skipped", uid, location
            )
            continue
        result.append(
            (float(point["z"]), float(point["y"]), float(point["x"]), LABEL_COLUMNS.index(location))
        )
    if len(result) > MAX_LOCALIZERS:
        logger.warning(
            "Series %s: %d localizers, only the first %d are used",
            uid,
            len(result),
            MAX_LOCALIZERS,
        )
    return tuple(result[:MAX_LOCALIZERS])


def check_volume(path: Path, *, expected_shape: tuple[int, ...], check_values: bool) -> str | None:
    """Return why the ``.npy`` volume at ``path`` is unusable, or ``None`` when it is fine.

    The header is read through a memory map, so shape and dtype cost no pixel reads.
    With ``check_values`` every voxel is read once to reject NaN and infinite values.
    """
    if not path.is_file():
        return f"volume file {path} not found, although the volume index lists it"
    try:
        volume = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        return f"volume file {path} is not a readable .npy file: {error}"

    if tuple(volume.shape) != tuple(expected_shape):
        return (
            f"volume shape {tuple(volume.shape)} differs from the expected {tuple(expected_shape)}"
        )
    if not np.issubdtype(volume.dtype, np.floating):
        return f"volume dtype {volume.dtype} is not floating point"
    if check_values and not np.isfinite(volume).all():
        return "volume contains NaN or infinite values"
    return None


def screen_volumes(
    records: Sequence[VolumeRecord],
    *,
    split: str,
    expected_shape: tuple[int, ...],
    check_values: bool,
    max_bad_fraction: float,
) -> list[VolumeRecord]:
    """Return the records whose volumes are usable; log and count the others.

    Two kinds of series are skipped, each with one WARNING naming the series. Series the
    volume index does not list were rejected by the preprocess stage. They do not count
    against ``max_bad_fraction``, because rerunning that stage cannot bring them back.
    Series the index lists whose file is missing, unreadable, of another shape or not
    finite are unusable. Raises :class:`TooManyBadVolumesError` when the unusable fraction
    of the indexed series exceeds ``max_bad_fraction``, or when nothing usable is left.
    """
    rejected = [record for record in records if not record.indexed]
    for record in rejected:
        logger.warning(
            "Series %s skipped from %s: rejected by the preprocess stage (not in the volume "
            "index); the reason is in %s",
            record.SeriesInstanceUID,
            split,
            PREPROCESS_REJECTS,
        )

    indexed = [record for record in records if record.indexed]
    usable = _usable_volumes(
        indexed, split=split, expected_shape=expected_shape, check_values=check_values
    )

    bad = len(indexed) - len(usable)
    fraction = bad / len(indexed) if indexed else 0.0
    if not usable:
        raise TooManyBadVolumesError(
            _nothing_usable_message(split, total=len(records), rejected=len(rejected), bad=bad)
        )
    if fraction > max_bad_fraction:
        raise TooManyBadVolumesError(
            f"{bad} of {len(indexed)} {split} volumes listed in the volume index are missing "
            f"or unusable ({fraction:.1%} > max_bad_fraction {max_bad_fraction:.1%}); check "
            "the warnings above, then rerun the preprocess stage (dvc repro preprocess) to "
            "rewrite missing or damaged volumes, or raise max_bad_fraction to skip them"
        )
    if bad or rejected:
        logger.warning(
            "Split %s: %d of %d series skipped: %d rejected by the preprocess stage, "
            "%d with an unusable volume",
            split,
            bad + len(rejected),
            len(records),
            len(rejected),
            bad,
        )
    return usable


def count_preprocess_rejected(records: Sequence[VolumeRecord]) -> int:
    """Return how many of ``records`` the volume index does not list (rejected by preprocess)."""
    return sum(not record.indexed for record in records)


def _usable_volumes(
    records: Sequence[VolumeRecord],
    *,
    split: str,
    expected_shape: tuple[int, ...],
    check_values: bool,
) -> list[VolumeRecord]:
    usable = []
    for record in tqdm(
        records, desc=f"check {split} volumes", unit="volume", disable=progress_disabled()
    ):
        reason = check_volume(record.path, expected_shape=expected_shape, check_values=check_values)
        if reason is None:
            usable.append(record)
        else:
            logger.warning("Series %s skipped from %s: %s", record.SeriesInstanceUID, split, reason)
    return usable


def _nothing_usable_message(split: str, *, total: int, rejected: int, bad: int) -> str:
    if total == 0:
        return (
            f"the {split} split has no series in splits.csv; rerun the split stage with more "
            "series in the manifest or a larger fraction for this split"
        )
    if bad == 0:
        return (
            f"all {total} {split} series were rejected by the preprocess stage (reasons in "
            f"{PREPROCESS_REJECTS}); fix or replace those series, or add series, so that the "
            f"{split} split has at least one usable volume"
        )
    return (
        f"no usable {split} volume: {bad} of {total} series have a missing or unusable volume "
        f"and {rejected} were rejected by the preprocess stage (reasons in "
        f"{PREPROCESS_REJECTS}); check the warnings above, then rerun the preprocess stage "
        "(dvc repro preprocess) to rewrite missing or damaged volumes"
    )


def window_start(size: int, target: int, *, rng: np.random.Generator | None, max_shift: int) -> int:
    """Return where a window of ``target`` voxels starts along an axis of ``size`` voxels.

    The window is centred, and with ``rng`` shifted by a uniform random integer in
    ``[-max_shift, max_shift]``: a random crop when the volume is larger, a random pad
    when it is smaller. Positions outside the volume are zero-filled by
    :func:`extract_window`. The shift stays small on purpose, because in canonically
    oriented volumes the position of a finding carries its location label.
    """
    start = (size - target) // 2
    if rng is not None and max_shift > 0:
        start += int(rng.integers(-max_shift, max_shift + 1))
    return start


def extract_window(volume: np.ndarray, starts: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Return the ``shape`` window of ``volume`` beginning at ``starts``, zero outside it.

    ``volume`` is ``(z, y, x)``; the result is float32 ``(z, y, x)`` with ``shape``.
    """
    window = np.zeros(tuple(shape), dtype=np.float32)
    source, target = [], []
    for start, size, length in zip(starts, volume.shape, shape, strict=True):
        begin, end = max(start, 0), min(start + length, size)
        if begin >= end:
            return window
        source.append(slice(begin, end))
        target.append(slice(begin - start, end - start))
    window[tuple(target)] = volume[tuple(source)]
    return window


def flip_left_right(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a ``(..., z, y, x)`` image along ``x`` and swap every Left/Right label.

    In the canonical LPS volume ``x`` runs toward the patient's left, so reversing it
    turns the patient's left side into the right side.
    """
    flipped = np.ascontiguousarray(image[..., ::-1])
    return flipped, labels[..., left_right_permutation()]


def flip_localizers(localizers: np.ndarray, *, width: int) -> np.ndarray:
    """Return localizer rows ``(z, y, x, label)`` mirrored along ``x`` of an image ``width``
    voxels wide, with each Left/Right label swapped. Padding rows (label -1) stay as they are.
    """
    flipped = localizers.copy()
    real = flipped[:, 3] >= 0
    flipped[real, 2] = width - 1 - flipped[real, 2]
    permutation = np.asarray(left_right_permutation())
    flipped[real, 3] = permutation[flipped[real, 3].astype(np.int64)]
    return flipped


class VolumeDataset(Dataset):
    """Memory-mapped preprocessed volumes of one split.

    An item key is an index (no augmentation) or a ``(index, seed)`` :data:`SampleKey`
    from :class:`EpochSampler` (augmented with a generator seeded by ``seed`` when
    ``augment`` is set). Volumes are cropped or zero-padded to ``input_shape`` (z, y, x);
    ``None`` keeps each volume's own shape.
    """

    def __init__(
        self,
        records: Sequence[VolumeRecord],
        *,
        input_shape: tuple[int, int, int] | None,
        augment: AugmentSettings | None,
    ) -> None:
        self.records = list(records)
        self.input_shape = input_shape
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def labels_array(self) -> np.ndarray:
        """Return the labels of all records, int64 ``(N, 14)``."""
        return np.array([record.labels for record in self.records], dtype=np.int64).reshape(
            -1, len(LABEL_COLUMNS)
        )

    def __getitem__(self, key: int | SampleKey) -> dict:
        index, seed = (key, None) if isinstance(key, int) else key
        record = self.records[index]
        rng = np.random.default_rng(seed) if seed is not None and self.augment else None

        volume = np.load(record.path, mmap_mode="r", allow_pickle=False)
        image, starts = self._crop(volume, rng)
        labels = np.asarray(record.labels, dtype=np.float32)
        localizers = self._localizers(record, starts)
        flipped = False
        if rng is not None:
            image, labels, localizers, flipped = self._augment(image, labels, localizers, rng)

        return {
            "image": torch.from_numpy(image[np.newaxis]),
            "labels": torch.from_numpy(labels),
            "SeriesInstanceUID": record.SeriesInstanceUID,
            "Modality": record.modality,
            "index": index,
            "flipped": flipped,
            "localizers": torch.from_numpy(localizers),
        }

    def _crop(
        self, volume: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, list[int]]:
        shape = self.input_shape or volume.shape
        shifts = self.augment.shift_voxels if self.augment else (0, 0, 0)
        starts = [
            window_start(size, target, rng=rng, max_shift=shift)
            for size, target, shift in zip(volume.shape, shape, shifts, strict=True)
        ]
        return extract_window(volume, starts, shape), starts

    @staticmethod
    def _localizers(record: VolumeRecord, starts: Sequence[int]) -> np.ndarray:
        rows = np.full((MAX_LOCALIZERS, 4), -1.0, dtype=np.float32)
        for row, (z, y, x, label) in enumerate(record.localizers):
            rows[row] = (z - starts[0], y - starts[1], x - starts[2], label)
        return rows

    def _augment(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        localizers: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        settings = self.augment
        flipped = bool(rng.random() < settings.flip_probability)
        if flipped:
            image, labels = flip_left_right(image, labels)
            localizers = flip_localizers(localizers, width=image.shape[-1])

        scale = 1.0 + rng.uniform(-settings.intensity_scale, settings.intensity_scale)
        offset = rng.uniform(-settings.intensity_shift, settings.intensity_shift)
        image = (image * np.float32(scale) + np.float32(offset)).astype(np.float32)

        return image, labels, localizers, flipped


def positive_sampling_weights(labels: np.ndarray, *, positive_fraction: float) -> np.ndarray:
    """Return per-sample weights so that ``positive_fraction`` of draws are positive series.

    ``labels`` is ``(N, 14)``; a series is positive when ``Aneurysm Present`` is 1. When
    one class is absent the weights are uniform.
    """
    if not 0.0 < positive_fraction < 1.0:
        raise ValueError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
    positive = labels[:, LABEL_COLUMNS.index(ANEURYSM_PRESENT)] == 1
    count = int(positive.sum())
    if count in (0, len(positive)):
        return np.full(len(positive), 1.0 / len(positive))
    return np.where(
        positive, positive_fraction / count, (1.0 - positive_fraction) / (len(positive) - count)
    )


class EpochSampler(DistributedSampler):
    """Distributed sampler that yields ``(index, seed)`` keys, optionally weighted.

    The global order of an epoch depends only on ``seed`` and the epoch: a permutation
    (``shuffle``), sampling with replacement by ``weights``, or the identity. Each rank
    takes every ``num_replicas``-th key, as :class:`torch.utils.data.DistributedSampler`
    does; the list is padded by repeating its start so that ranks get equal counts.
    Each key carries the seed of that sample's augmentation. :meth:`set_start` skips
    the first keys of this rank, to resume in the middle of an epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        seed: int,
        shuffle: bool,
        weights: np.ndarray | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.start = 0

    def set_start(self, position: int) -> None:
        """Skip the first ``position`` keys of this rank in the current epoch."""
        self.start = position

    def epoch_keys(self) -> list[SampleKey]:
        """Return this rank's keys of the current epoch, before the start offset."""
        size = len(self.dataset)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            order = rng.choice(size, size=size, replace=True, p=self.weights / self.weights.sum())
        elif self.shuffle:
            order = rng.permutation(size)
        else:
            order = np.arange(size)
        seeds = rng.integers(0, 2**62, size=size)

        keys = [(int(i), int(s)) for i, s in zip(order, seeds, strict=True)]
        if self.drop_last:
            keys = keys[: self.total_size]
        else:
            repeats = math.ceil(self.total_size / len(keys))
            keys = (keys * repeats)[: self.total_size]
        return keys[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[SampleKey]:
        return iter(self.epoch_keys()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def _limit_worker_threads(worker_id: int) -> None:
    # Workers only read and crop arrays; more threads per worker would oversubscribe cores.
    torch.set_num_threads(1)


def make_loader(
    dataset: VolumeDataset,
    *,
    sampler: EpochSampler,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    prefetch_factor: int,
    drop_last: bool,
) -> DataLoader:
    """Return a DataLoader over ``dataset`` in the order of ``sampler``.

    The loader draws its worker seeds from a generator of its own: the global torch
    generator stays untouched, so it is the same in a resumed run as in an
    uninterrupted one.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        worker_init_fn=_limit_worker_threads if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
    )
