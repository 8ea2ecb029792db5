"""Patient-level train/val/test split and K-fold assignment over train and val.

All series of a patient land in one split and one fold, so no patient is seen in
training and in evaluation. Patients are stratified on whether any of their series is
positive and on their main modality (the most frequent ``Modality`` of their series).
Within each stratum patients are shuffled with the seed, then dealt out so that every
split, and every fold, receives its share of each stratum.
"""

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsna.fileio import atomic_open, read_jsonl
from rsna.labels import LOCATION_COLUMNS, MODALITIES

logger = logging.getLogger(__name__)

SPLIT_COLUMNS = ("SeriesInstanceUID", "PatientID", "split", "fold")
SPLITS = ("train", "val", "test")
TEST_FOLD = -1


class SplitError(ValueError):
    """Settings or records that cannot be split as requested."""


@dataclass(frozen=True)
class SplitSettings:
    """The ``split`` section of params.yaml."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    folds: int = 5
    seed: int = 17

    def __post_init__(self) -> None:
        validate_split_settings(
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            folds=self.folds,
        )


@dataclass(frozen=True)
class PatientGroup:
    """The series of one patient and the stratum it is drawn from."""

    key: str
    series: tuple[str, ...]
    positive: bool
    modality: str


def validate_split_settings(*, val_fraction: float, test_fraction: float, folds: int) -> None:
    """Raise SplitError unless the fractions leave patients to train on and folds >= 2."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise SplitError(f"{name} is {value}, expected a fraction in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise SplitError(
            f"val_fraction + test_fraction is {val_fraction + test_fraction}, expected < 1 "
            "so that some patients train"
        )
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise SplitError(f"folds is {folds!r}, expected an integer >= 2")


def group_patients(records: list[dict]) -> list[PatientGroup]:
    """Return one group per PatientID, sorted by key; a series without one is its own patient.

    A patient is positive when any of its series has ``Aneurysm Present`` = 1 (the last
    label). Its modality is the most frequent among its series, ties going to the first
    in :data:`rsna.labels.MODALITIES`.
    """
    series_of: dict[str, list[dict]] = {}
    for record in records:
        key = record.get("PatientID") or f"series:{record['SeriesInstanceUID']}"
        series_of.setdefault(key, []).append(record)

    groups = []
    for key in sorted(series_of):
        members = series_of[key]
        counts = Counter(member["Modality"] for member in members)
        modality = max(MODALITIES, key=lambda name: (counts[name], -MODALITIES.index(name)))
        groups.append(
            PatientGroup(
                key=key,
                series=tuple(member["SeriesInstanceUID"] for member in members),
                positive=any(member["labels"][-1] for member in members),
                modality=modality,
            )
        )
    return groups


def split_counts(patients: int, *, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Return the number of patients per split: rounded shares, at least one per nonzero fraction.

    Raises SplitError when no patient would be left to train on.
    """
    counts = {}
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        counts[name] = max(1, round(fraction * patients)) if fraction > 0 else 0
    counts["train"] = patients - counts["test"] - counts["val"]
    if counts["train"] < 1:
        raise SplitError(
            f"{patients} patient(s) are too few for val_fraction {val_fraction} and "
            f"test_fraction {test_fraction}: no patient would be left to train on; "
            "add series or lower the fractions"
        )
    return counts


def deal_labels(counts: dict[str, int]) -> list[str]:
    """Return a sequence holding each label ``counts[label]`` times, spread evenly.

    At every prefix of length ``i`` each label has been dealt within one of its share
    ``counts[label] * i / total``: the next label is the one furthest below its share,
    ties going to the first in ``counts``. Dealt over patients ordered stratum by
    stratum, this gives each split its share of every stratum.
    """
    total = sum(counts.values())
    dealt = dict.fromkeys(counts, 0)
    sequence = []
    for position in range(1, total + 1):
        label = max(counts, key=lambda name: counts[name] * position - dealt[name] * total)
        dealt[label] += 1
        sequence.append(label)
    return sequence


def stratified_order(groups: list[PatientGroup], rng: np.random.Generator) -> list[PatientGroup]:
    """Return the patients stratum by stratum, shuffled within each stratum.

    Positive strata come first, then MODALITIES order.
    """
    strata: dict[tuple[bool, int], list[PatientGroup]] = {}
    for group in groups:
        strata.setdefault((not group.positive, MODALITIES.index(group.modality)), []).append(group)
    ordered = []
    for key in sorted(strata):
        members = strata[key]
        ordered.extend(members[index] for index in rng.permutation(len(members)))
    return ordered


def make_splits(
    *,
    records: list[dict],
    val_fraction: float,
    test_fraction: float,
    folds: int,
    seed: int,
) -> pd.DataFrame:
    """Assign each series of ``records`` (manifest records) a split and a fold.

    Returns a frame with :data:`SPLIT_COLUMNS`, one row per record in input order:
    ``split`` is train, val or test, ``fold`` is 0 to ``folds - 1`` for train and val
    patients (dealt evenly per stratum) and -1 for test. ``PatientID`` is empty for
    series whose headers had none. The same records and seed give the same frame.
    """
    validate_split_settings(val_fraction=val_fraction, test_fraction=test_fraction, folds=folds)
    if not records:
        raise SplitError("no manifest records to split; check the manifest stage's rejects")
    groups = group_patients(records)
    rng = np.random.default_rng(seed)

    counts = split_counts(len(groups), val_fraction=val_fraction, test_fraction=test_fraction)
    ordered = stratified_order(groups, rng)
    split_of = {group.key: label for group, label in zip(ordered, deal_labels(counts), strict=True)}

    development = [group for group in groups if split_of[group.key] != "test"]
    if len(development) < folds:
        raise SplitError(
            f"{len(development)} train and val patient(s) cannot fill {folds} folds; "
            "lower split.folds or add series"
        )
    fold_order = stratified_order(development, rng)
    fold_of = {group.key: position % folds for position, group in enumerate(fold_order)}

    rows = []
    for record in records:
        key = record.get("PatientID") or f"series:{record['SeriesInstanceUID']}"
        split = split_of[key]
        fold = TEST_FOLD if split == "test" else fold_of[key]
        rows.append((record["SeriesInstanceUID"], record.get("PatientID") or "", split, fold))
    return pd.DataFrame(rows, columns=list(SPLIT_COLUMNS))


def _log_summary(frame: pd.DataFrame, records: list[dict]) -> None:
    """Log series, patients and positives per split; warn about locations absent from test."""
    labels = {record["SeriesInstanceUID"]: record["labels"] for record in records}
    for split in SPLITS:
        members = frame[frame["split"] == split]
        positives = sum(labels[uid][-1] for uid in members["SeriesInstanceUID"])
        logger.info(
            "%s: %d series of %d patients, %d positive",
            split,
            len(members),
            members["PatientID"].nunique(),
            positives,
        )
    test_uids = frame.loc[frame["split"] == "test", "SeriesInstanceUID"]
    for index, location in enumerate(LOCATION_COLUMNS):
        if len(test_uids) and not any(labels[uid][index] for uid in test_uids):
            logger.warning("no positive %r in the test split: its test AUC is undefined", location)


def write_splits(
    *,
    manifest_path: str | os.PathLike,
    out_path: str | os.PathLike,
    val_fraction: float,
    test_fraction: float,
    folds: int,
    seed: int,
) -> pd.DataFrame:
    """Split the series of a manifest file and write the CSV of :data:`SPLIT_COLUMNS`.

    Returns the frame written. See :func:`make_splits` for the arguments.
    """
    records = read_jsonl(manifest_path)
    frame = make_splits(
        records=records,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        folds=folds,
        seed=seed,
    )
    with atomic_open(Path(out_path)) as handle:
        frame.to_csv(handle, index=False, lineterminator="\n")
    _log_summary(frame, records)
    logger.info("wrote %d series in %d folds to %s", len(frame), folds, out_path)
    return frame
