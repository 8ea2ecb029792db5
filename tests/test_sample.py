"""Tests of the synthetic sample dataset: layout, determinism, DICOM content, localizers."""

import ast
import csv
import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    MRImageStorage,
    RLELossless,
)

from rsna import cli
from rsna.labels import LOCALIZER_CSV_COLUMNS, LOCATION_COLUMNS, MODALITIES, TRAIN_CSV_COLUMNS
from rsna.sample import write_sample_dataset
from rsna.sample.anatomy import place_aneurysm
from rsna.sample.plan import plan_dataset, quota_assignment

REPO = Path(__file__).resolve().parents[1]
TINY = {"series": 12, "seed": 7, "matrix": 32, "slices": 16}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "data"
    write_sample_dataset(root, **TINY, workers=1)
    return root


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _headers_by_series(root: Path) -> dict[str, list[pydicom.Dataset]]:
    return {
        folder.name: [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
        for folder in sorted((root / "series").iterdir())
    }


def test_csv_columns_in_challenge_order(tiny_root: Path) -> None:
    train_columns, train_rows = _read_csv(tiny_root / "train.csv")
    localizer_columns, localizer_rows = _read_csv(tiny_root / "train_localizers.csv")

    assert tuple(train_columns) == TRAIN_CSV_COLUMNS
    assert tuple(localizer_columns) == LOCALIZER_CSV_COLUMNS
    assert len(train_rows) == 12
    assert len(localizer_rows) > 0


def test_train_rows_hold_valid_values(tiny_root: Path) -> None:
    _, rows = _read_csv(tiny_root / "train.csv")
    for row in rows:
        assert row["PatientAge"].isdigit()
        assert row["PatientSex"] in ("Female", "Male")
        assert row["Modality"] in MODALITIES
        locations = [int(row[name]) for name in LOCATION_COLUMNS]
        assert set(locations) <= {0, 1}
        assert int(row["Aneurysm Present"]) == int(any(locations))
    positives = [row for row in rows if row["Aneurysm Present"] == "1"]
    for row in positives:
        assert sum(int(row[name]) for name in LOCATION_COLUMNS) in (3, 4)


def test_same_seed_gives_identical_files(tmp_path: Path, tiny_root: Path) -> None:
    again = tmp_path / "again"
    write_sample_dataset(again, **TINY, workers=2)

    assert _digests(again) == _digests(tiny_root)


def test_other_seed_gives_other_dataset(tmp_path: Path, tiny_root: Path) -> None:
    other = tmp_path / "other"
    write_sample_dataset(other, **{**TINY, "seed": 8}, workers=1)

    assert (other / "train.csv").read_bytes() != (tiny_root / "train.csv").read_bytes()


def test_series_cover_every_dicom_variant(tiny_root: Path) -> None:
    series = _headers_by_series(tiny_root)
    firsts = [datasets[0] for datasets in series.values()]

    sop_classes = {dataset.SOPClassUID for dataset in firsts}
    assert sop_classes == {
        CTImageStorage,
        MRImageStorage,
        EnhancedCTImageStorage,
        EnhancedMRImageStorage,
    }
    assert RLELossless in {dataset.file_meta.TransferSyntaxUID for dataset in firsts}
    orientations = {
        tuple(float(v) for v in dataset.ImageOrientationPatient)
        for dataset in firsts
        if "ImageOrientationPatient" in dataset
    }
    assert (0.0, 1.0, 0.0, 0.0, 0.0, -1.0) in orientations  # sagittal
    assert (1.0, 0.0, 0.0, 0.0, 0.0, -1.0) in orientations  # coronal
    patient_ids = [dataset.PatientID for dataset in firsts]
    assert len(set(patient_ids)) < len(patient_ids)


def test_files_match_requested_grid(tiny_root: Path) -> None:
    for datasets in _headers_by_series(tiny_root).values():
        first = datasets[0]
        frames = int(first.get("NumberOfFrames", 1))
        assert len(datasets) * frames == 16
        assert (first.Rows, first.Columns) == (32, 32)
        assert first.pixel_array.shape[-2:] == (32, 32)


def test_ct_has_rescale_and_mr_has_none(tiny_root: Path) -> None:
    for datasets in _headers_by_series(tiny_root).values():
        first = datasets[0]
        if first.SOPClassUID == CTImageStorage:
            assert {"RescaleSlope", "RescaleIntercept"} <= set(first.dir())
        elif first.SOPClassUID == EnhancedCTImageStorage:
            shared = first.SharedFunctionalGroupsSequence[0]
            assert "RescaleIntercept" in shared.PixelValueTransformationSequence[0]
        else:
            assert first.Modality == "MR"
            assert "RescaleSlope" not in first
            assert "RescaleIntercept" not in first


def test_enhanced_files_carry_geometry_per_frame(tiny_root: Path) -> None:
    for datasets in _headers_by_series(tiny_root).values():
        first = datasets[0]
        if "NumberOfFrames" not in first:
            continue
        assert "ImagePositionPatient" not in first
        assert "ImageOrientationPatient" not in first
        positions = [
            tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient)
            for item in first.PerFrameFunctionalGroupsSequence
        ]
        assert len(set(positions)) == 16


def test_headers_agree_with_train_csv(tiny_root: Path) -> None:
    _, rows = _read_csv(tiny_root / "train.csv")
    series = _headers_by_series(tiny_root)
    for row in rows:
        first = series[row["SeriesInstanceUID"]][0]
        assert first.PatientSex == row["PatientSex"][0]
        assert first.PatientAge == f"{int(row['PatientAge']):03d}Y"
        assert first.Modality == ("CT" if row["Modality"] == "CTA" else "MR")
        assert first.PatientID.startswith("ID_")


def _stored_frame(path: Path, frame: int | None) -> np.ndarray:
    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array
    return pixels[frame] if frame is not None else pixels


def test_localizers_point_at_brightest_voxel(tmp_path: Path) -> None:
    root = tmp_path / "clean"
    write_sample_dataset(root, series=6, seed=11, matrix=64, slices=40, noise=0.0, workers=1)
    _, rows = _read_csv(root / "train_localizers.csv")
    assert len(rows) >= 3

    for row in rows:
        point = ast.literal_eval(row["coordinates"])
        path = root / "series" / row["SeriesInstanceUID"] / f"{row['SOPInstanceUID']}.dcm"
        pixels = _stored_frame(path, point.get("f")).astype(float)
        column, line = round(point["x"]), round(point["y"])
        window = pixels[line - 4 : line + 5, column - 4 : column + 5]
        peak_row, peak_column = np.unravel_index(np.argmax(window), window.shape)
        # The peak lies within one pixel of the point in each direction.
        assert abs(peak_row - 4) <= 1, row["location"]
        assert abs(peak_column - 4) <= 1, row["location"]


def test_localizer_rows_name_existing_files(tiny_root: Path) -> None:
    _, rows = _read_csv(tiny_root / "train_localizers.csv")
    for row in rows:
        point = ast.literal_eval(row["coordinates"])
        path = tiny_root / "series" / row["SeriesInstanceUID"] / f"{row['SOPInstanceUID']}.dcm"
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        frames = int(dataset.get("NumberOfFrames", 1))
        assert ("f" in point) == (frames > 1)
        assert 0 <= point.get("f", 0) < frames


@pytest.mark.parametrize("location", LOCATION_COLUMNS)
def test_location_side_matches_label(location: str) -> None:
    rng = np.random.default_rng(0)
    x_mm = [place_aneurysm(location, rng).centre_mm[0] for _ in range(50)]
    if location.startswith("Left "):
        assert min(x_mm) > 0  # LPS: +x is the patient's left
    elif location.startswith("Right "):
        assert max(x_mm) < 0
    elif location != "Other Posterior Circulation":
        assert max(abs(x) for x in x_mm) < 5


def test_locations_are_separated() -> None:
    rng = np.random.default_rng(0)
    centroids = {
        location: np.mean([place_aneurysm(location, rng).centre_mm for _ in range(100)], axis=0)
        for location in LOCATION_COLUMNS
    }
    distances = [
        np.linalg.norm(centroids[a] - centroids[b])
        for a, b in itertools.combinations(LOCATION_COLUMNS, 2)
    ]
    # Four voxels at the default 2 mm spacing.
    assert min(distances) > 8.0


@pytest.mark.parametrize(
    ("count", "shares", "expected"),
    [
        (10, (0.4, 0.3, 0.2, 0.1), [4, 3, 2, 1]),
        (12, (0.4, 0.3, 0.2, 0.1), [5, 4, 2, 1]),
        (4, (0.76, 0.12, 0.12), [2, 1, 1]),
        (2, (0.9, 0.1), [1, 1]),
    ],
)
def test_quota_assignment_counts(count: int, shares: tuple, expected: list[int]) -> None:
    labels = quota_assignment(np.random.default_rng(0), count, shares)
    assert np.bincount(labels, minlength=len(shares)).tolist() == expected


def test_default_plan_balances_locations() -> None:
    plans = plan_dataset(series=300, seed=2025)
    counts = {location: 0 for location in LOCATION_COLUMNS}
    for plan in plans:
        for aneurysm in plan.patient.aneurysms:
            counts[aneurysm.location] += 1
    positive = sum(bool(plan.patient.aneurysms) for plan in plans)

    assert 0.55 <= positive / 300 <= 0.65
    assert min(counts.values()) >= 0.8 * max(counts.values())


def test_dataset_replaces_old_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "stale.txt").write_text("old")
    write_sample_dataset(root, series=2, seed=1, matrix=16, slices=8, workers=1)

    assert not (root / "stale.txt").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


def test_zero_series_writes_headers_only(tmp_path: Path) -> None:
    summary = write_sample_dataset(tmp_path / "empty", series=0, seed=1)

    assert summary.files == 0
    assert (tmp_path / "empty" / "train.csv").read_text().strip() == ",".join(TRAIN_CSV_COLUMNS)
    assert list((tmp_path / "empty" / "series").iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"series": -1}, "series must be >= 0"),
        ({"series": 2, "matrix": 8}, "matrix must be >= 16"),
        ({"series": 2, "slices": 2}, "slices must be >= 8"),
        ({"series": 2, "noise": -0.5}, "noise must be >= 0"),
        ({"series": 2, "workers": -1}, "workers must be >= 0"),
    ],
)
def test_invalid_arguments_raise(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_sample_dataset(tmp_path / "data", seed=1, **arguments)
    assert not (tmp_path / "data").exists()


def test_sample_command_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = _params_file(tmp_path, 300)
    status = cli.main(
        ["sample", str(tmp_path / "data"), "--series", "3", "--seed", "5", "--matrix", "16",
         "--slices", "8", "--workers", "1", "--params", str(params)]
    )  # fmt: skip

    assert status == 0
    assert '"series": 3' in capsys.readouterr().out
    assert len(_read_csv(tmp_path / "data" / "train.csv")[1]) == 3


def test_sample_command_rejects_bad_option(tmp_path: Path) -> None:
    status = cli.main(["sample", str(tmp_path / "data"), "--series", "2", "--matrix", "4"])

    assert status == 2
    assert not (tmp_path / "data").exists()


def _params_file(folder: Path, series: int) -> Path:
    path = folder / "params.yaml"
    path.write_text(f"sample:\n  series: {series}\n  seed: 3\n  workers: 1\n", encoding="utf-8")
    return path


def _run_stage(params: Path, out: Path, data_root: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "stages" / "sample.py"), "--params", str(params)]
    command += ["--out", str(out), "--data-root", str(data_root)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_sample_stage_skips_when_root_differs(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    result = _run_stage(_params_file(tmp_path, 300), out, tmp_path / "kaggle")

    assert result.returncode == 0, result.stderr
    assert "writing an empty sample" in result.stderr
    assert len(_read_csv(out / "train.csv")[1]) == 0


def test_sample_stage_writes_configured_series(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    result = _run_stage(_params_file(tmp_path, 2), out, out)

    assert result.returncode == 0, result.stderr
    assert len(_read_csv(out / "train.csv")[1]) == 2


def test_sample_stage_reads_data_root_from_params(tmp_path: Path) -> None:
    params = _params_file(tmp_path, 2)
    params.write_text(params.read_text() + f"data:\n  root: {tmp_path / 'kaggle'}\n")
    out = tmp_path / "sample"
    command = [sys.executable, str(REPO / "stages" / "sample.py"), "--params", str(params)]
    command += ["--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    assert "writing an empty sample" in result.stderr
    assert len(_read_csv(out / "train.csv")[1]) == 0


def test_sample_stage_rejects_unknown_param(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("sample:\n  series: 2\n  seed: 3\n  sead: 4\n", encoding="utf-8")
    result = _run_stage(params, tmp_path / "sample", tmp_path / "sample")

    assert result.returncode == 1
    assert "unknown keys ['sead']" in result.stderr


def test_sample_command_keeps_unrelated_folder(tmp_path: Path) -> None:
    notes = tmp_path / "data" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("keep me", encoding="utf-8")

    status = cli.main(["sample", str(tmp_path / "data"), "--series", "2"])

    assert status == 2
    assert notes.read_text(encoding="utf-8") == "keep me"
