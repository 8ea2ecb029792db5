"""Tests of the patient-level split and fold assignment."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rsna.fileio import write_jsonl
from rsna.labels import MODALITIES
from rsna.split import (
    SPLIT_COLUMNS,
    SplitError,
    deal_labels,
    make_splits,
    split_counts,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = {"val_fraction": 0.15, "test_fraction": 0.15, "folds": 5, "seed": 17}


def _record(uid: str, patient: str | None, modality: str, positive: bool) -> dict:
    labels = [0] * 14
    if positive:
        labels[0] = labels[-1] = 1
    return {"SeriesInstanceUID": uid, "PatientID": patient, "Modality": modality, "labels": labels}


def _records(patients: int = 80) -> list[dict]:
    """Patients with 1 to 3 series; every 5th patient has a series of a second modality."""
    records = []
    for number in range(patients):
        modality = MODALITIES[number % 4]
        positive = number % 2 == 0
        for series in range(number % 3 + 1):
            other = series == 1 and number % 5 == 0
            chosen = MODALITIES[(number + 1) % 4] if other else modality
            records.append(_record(f"1.2.{number}.{series}", f"P{number:03d}", chosen, positive))
    return records


def _patient_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.groupby("PatientID").agg(splits=("split", "nunique"), folds=("fold", "nunique"))


def test_no_patient_in_two_splits() -> None:
    frame = make_splits(records=_records(), **DEFAULTS)
    per_patient = _patient_frame(frame)

    assert list(frame.columns) == list(SPLIT_COLUMNS)
    assert (per_patient["splits"] == 1).all()
    assert (per_patient["folds"] == 1).all()


def test_split_sizes_follow_fractions() -> None:
    frame = make_splits(records=_records(80), **DEFAULTS)
    patients = frame.drop_duplicates("PatientID")["split"].value_counts().to_dict()

    assert patients == {"train": 56, "val": 12, "test": 12}


def test_split_is_stratified() -> None:
    # 40 positive CTA patients and 40 negative MRA patients, one series each.
    records = [_record(f"1.2.{n}", f"P{n}", "CTA", True) for n in range(40)]
    records += [_record(f"1.3.{n}", f"Q{n}", "MRA", False) for n in range(40)]
    frame = make_splits(records=records, **DEFAULTS)
    frame["stratum"] = frame["PatientID"].str[0]

    counts = frame.groupby(["stratum", "split"]).size().unstack().to_dict("index")
    assert counts == {
        "P": {"test": 6, "train": 28, "val": 6},
        "Q": {"test": 6, "train": 28, "val": 6},
    }


def test_folds_cover_train_and_val_exactly() -> None:
    frame = make_splits(records=_records(), **DEFAULTS)
    development = frame[frame["split"] != "test"]
    test = frame[frame["split"] == "test"]

    assert sorted(development["fold"].unique()) == [0, 1, 2, 3, 4]
    assert (test["fold"] == -1).all()
    patients_per_fold = development.drop_duplicates("PatientID")["fold"].value_counts()
    assert patients_per_fold.max() - patients_per_fold.min() <= 1
    assert patients_per_fold.sum() == development["PatientID"].nunique()


def test_folds_are_stratified() -> None:
    records = [_record(f"1.2.{n}", f"P{n}", "CTA", True) for n in range(50)]
    records += [_record(f"1.3.{n}", f"Q{n}", "MRA", False) for n in range(50)]
    frame = make_splits(records=records, val_fraction=0.0, test_fraction=0.0, folds=5, seed=3)
    frame["stratum"] = frame["PatientID"].str[0]

    counts = frame.groupby(["stratum", "fold"]).size()
    assert counts.tolist() == [10] * 10


def test_same_seed_same_split() -> None:
    first = make_splits(records=_records(), **DEFAULTS)
    again = make_splits(records=_records(), **DEFAULTS)
    other = make_splits(records=_records(), **{**DEFAULTS, "seed": 18})

    pd.testing.assert_frame_equal(first, again)
    assert not first["split"].equals(other["split"])


def test_series_without_patient_id_is_its_own_patient() -> None:
    anonymous = [_record("1.9.1", None, "CTA", True), _record("1.9.2", None, "CTA", True)]
    records = [*_records(20), *anonymous]
    frame = make_splits(records=records, **DEFAULTS).set_index("SeriesInstanceUID")

    assert frame.loc["1.9.1", "PatientID"] == ""
    assert frame.loc["1.9.2", "PatientID"] == ""
    assert len(frame) == len(records)


@pytest.mark.parametrize(
    ("patients", "expected"),
    [
        (100, {"test": 15, "val": 15, "train": 70}),
        (7, {"test": 1, "val": 1, "train": 5}),
        (3, {"test": 1, "val": 1, "train": 1}),
    ],
)
def test_split_counts(patients: int, expected: dict) -> None:
    assert split_counts(patients, val_fraction=0.15, test_fraction=0.15) == expected


def test_split_counts_need_a_training_patient() -> None:
    with pytest.raises(SplitError, match="2 patient"):
        split_counts(2, val_fraction=0.15, test_fraction=0.15)


def test_deal_labels_spreads_evenly() -> None:
    sequence = deal_labels({"test": 2, "val": 2, "train": 6})

    assert sequence == [
        "train", "test", "train", "val", "train", "train", "test", "train", "val", "train",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"val_fraction": 1.2}, r"val_fraction is 1.2, expected a fraction in \[0, 1\)"),
        ({"test_fraction": -0.1}, r"test_fraction is -0.1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction is 1.0"),
        ({"folds": 1}, r"folds is 1, expected an integer >= 2"),
    ],
)
def test_invalid_settings_raise(settings: dict, message: str) -> None:
    with pytest.raises(SplitError, match=message):
        make_splits(records=_records(), **{**DEFAULTS, **settings})


def test_too_few_patients_for_folds_raise() -> None:
    with pytest.raises(
        SplitError, match=re.escape("4 train and val patient(s) cannot fill 5 folds")
    ):
        make_splits(records=_records(5), **{**DEFAULTS, "folds": 5})


def test_split_stage_writes_csv(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "manifest.jsonl", _records(30))
    params = tmp_path / "params.yaml"
    params.write_text(
        "split:\n  val_fraction: 0.15\n  test_fraction: 0.15\n  folds: 5\n  seed: 17\n",
        encoding="utf-8",
    )
    command = [sys.executable, str(REPO / "stages" / "split.py"), "--params", str(params)]
    command += ["--manifest", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "s.csv")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    text = (tmp_path / "s.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "SeriesInstanceUID,PatientID,split,fold"
    written = pd.read_csv(tmp_path / "s.csv", dtype={"SeriesInstanceUID": str})
    pd.testing.assert_frame_equal(written, make_splits(records=_records(30), **DEFAULTS))


def test_split_stage_fails_on_bad_params(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "manifest.jsonl", _records(30))
    params = tmp_path / "params.yaml"
    params.write_text("split:\n  folds: 1\n", encoding="utf-8")
    command = [sys.executable, str(REPO / "stages" / "split.py"), "--params", str(params)]
    command += ["--manifest", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "s.csv")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 1
    assert "folds is 1, expected an integer >= 2" in result.stderr
    assert not (tmp_path / "s.csv").exists()
