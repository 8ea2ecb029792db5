"""Tests of the manifest: fields of a tiny synthetic dataset, privacy and bad input."""

import csv
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsna.fileio import read_jsonl
from rsna.labels import LABEL_COLUMNS
from rsna.manifest import ManifestError, build_manifest, parse_coordinates
from rsna.sample import write_sample_dataset
from rsna.sample.plan import plan_dataset
from rsna.sample.writer import INSTITUTION_NAME, PHYSICIAN_NAME

REPO = Path(__file__).resolve().parents[1]
TINY = {"series": 12, "seed": 7, "matrix": 32, "slices": 16}
RECORD_KEYS = [
    "SeriesInstanceUID",
    "PatientID",
    "PatientAge",
    "PatientSex",
    "Modality",
    "subtype",
    "subtype_note",
    "labels",
    "series_dir",
    "file_count",
    "frame_count",
    "rows",
    "columns",
    "pixel_spacing_mm",
    "orientation",
    "transfer_syntaxes",
    "localizers",
]
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifest") / "data"
    write_sample_dataset(root, **TINY, workers=1)
    return root


@pytest.fixture
def tiny_root(tiny_source: Path, tmp_path: Path) -> Path:
    """A copy of the tiny dataset that a test may damage."""
    return Path(shutil.copytree(tiny_source, tmp_path / "data"))


def _build(root: Path, tmp_path: Path) -> tuple[list[dict], list[dict]]:
    build_manifest(
        data_root=root,
        out_path=tmp_path / "manifest.jsonl",
        rejects_path=tmp_path / "rejects.jsonl",
        workers=1,
    )
    return read_jsonl(tmp_path / "manifest.jsonl"), read_jsonl(tmp_path / "rejects.jsonl")


def _rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def _write_rows(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def test_manifest_fields_of_tiny_dataset(tiny_root: Path, tmp_path: Path) -> None:
    records, rejects = _build(tiny_root, tmp_path)
    plans = {plan.SeriesInstanceUID: plan for plan in plan_dataset(**TINY)}

    assert rejects == []
    assert [record["SeriesInstanceUID"] for record in records] == list(plans)
    for record in records:
        plan = plans[record["SeriesInstanceUID"]]
        assert list(record) == RECORD_KEYS
        assert record["PatientID"] == plan.patient.PatientID
        assert record["PatientAge"] == plan.patient.PatientAge
        assert record["PatientSex"] == plan.patient.PatientSex
        assert record["Modality"] == plan.modality
        assert record["subtype"] == plan.modality
        assert record["subtype_note"] is None
        assert record["series_dir"] == f"series/{plan.SeriesInstanceUID}"
        assert record["file_count"] == (1 if plan.enhanced else 16)
        assert record["frame_count"] == 16
        assert (record["rows"], record["columns"]) == (32, 32)
        assert record["pixel_spacing_mm"] == list(plan.geometry.spacing_mm[1:])
        assert record["orientation"] == plan.plane
        syntax = RLE_LOSSLESS if plan.rle else EXPLICIT_VR_LITTLE_ENDIAN
        assert record["transfer_syntaxes"] == [syntax]


def test_manifest_labels_follow_train_csv(tiny_root: Path, tmp_path: Path) -> None:
    records, _ = _build(tiny_root, tmp_path)
    header, *rows = _rows(tiny_root / "train.csv")
    expected = {row[0]: [int(row[header.index(name)]) for name in LABEL_COLUMNS] for row in rows}

    for record in records:
        assert record["labels"] == expected[record["SeriesInstanceUID"]]


def test_manifest_localizers_follow_csv(tiny_root: Path, tmp_path: Path) -> None:
    records, _ = _build(tiny_root, tmp_path)
    _, *rows = _rows(tiny_root / "train_localizers.csv")
    points = {record["SeriesInstanceUID"]: record["localizers"] for record in records}

    assert sum(len(value) for value in points.values()) == len(rows)
    for uid, sop, coordinates, location in rows:
        x, y, frame = parse_coordinates(coordinates)
        expected = {"SOPInstanceUID": sop, "x": x, "y": y, "f": frame, "location": location}
        assert expected in points[uid]


def test_manifest_has_no_personal_data(
    tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _build(tiny_root, tmp_path)
    text = (tmp_path / "manifest.jsonl").read_text(encoding="utf-8") + caplog.text
    plans = plan_dataset(**TINY)

    for plan in plans:
        assert plan.patient.PatientName.split("^")[1] not in text
        assert plan.patient.PatientBirthDate not in text
    assert INSTITUTION_NAME not in text
    assert PHYSICIAN_NAME.split("^")[0] not in text
    for key in ("PatientName", "PatientBirthDate", "InstitutionName", "PhysicianName"):
        assert key not in text


def _damage_not_dicom(root: Path, uid: str) -> None:
    for path in (root / "series" / uid).iterdir():
        path.write_bytes(b"this is not a DICOM file\n")


def _damage_truncated(root: Path, uid: str) -> None:
    for path in (root / "series" / uid).iterdir():
        path.write_bytes(path.read_bytes()[:400])


def _damage_missing_folder(root: Path, uid: str) -> None:
    shutil.rmtree(root / "series" / uid)


def _set_cell(column: str, value: str):
    def damage(root: Path, uid: str) -> None:
        header, *rows = _rows(root / "train.csv")
        for row in rows:
            if row[0] == uid:
                row[header.index(column)] = value
        _write_rows(root / "train.csv", [header, *rows])

    return damage


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_damage_not_dicom, r"no CT or MR image .*not a readable DICOM file"),
        (_damage_truncated, r"no CT or MR image .*dropped: 16 x "),
        (
            _damage_missing_folder,
            r"^series folder series/\S+ not found in \S+; check that the download is "
            r"complete, or remove the row from train.csv$",
        ),
        (
            _set_cell("Basilar Tip", "2"),
            r"train.csv line 4: label 'Basilar Tip' is '2', expected 0 or 1; fix the value "
            r"in train.csv or remove the row$",
        ),
        (_set_cell("Aneurysm Present", "yes"), r"label 'Aneurysm Present' is 'yes'"),
        (_set_cell("PatientAge", "65Y"), r"PatientAge is '65Y', expected an integer"),
        (_set_cell("PatientSex", "F"), r"PatientSex is 'F', expected one of"),
        (_set_cell("Modality", "PET"), r"Modality is 'PET', expected one of"),
    ],
    ids=[
        "not-dicom",
        "truncated",
        "missing-folder",
        "label-2",
        "label-text",
        "age",
        "sex",
        "modality",
    ],
)
def test_bad_series_is_rejected(
    tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage, reason: str
) -> None:
    uid = _rows(tiny_root / "train.csv")[3][0]
    damage(tiny_root, uid)
    records, rejects = _build(tiny_root, tmp_path)

    assert len(records) == 11
    assert uid not in {record["SeriesInstanceUID"] for record in records}
    assert [reject["SeriesInstanceUID"] for reject in rejects] == [uid]
    assert rejects[0]["series_dir"] == f"series/{uid}"
    assert re.search(reason, rejects[0]["reason"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(uid in message and "rejected" in message for message in warnings)


def test_text_file_named_dcm_warned_series_kept(
    tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uid = _rows(tiny_root / "train.csv")[3][0]
    folder = tiny_root / "series" / uid
    (folder / "notes.dcm").write_text("exported with the wrong extension", encoding="utf-8")

    with caplog.at_level(logging.WARNING):
        records, rejects = _build(tiny_root, tmp_path)

    assert rejects == []
    assert uid in {record["SeriesInstanceUID"] for record in records}
    warnings = [r.getMessage() for r in caplog.records if r.name == "rsna.dicom.grouping"]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"series folder {folder}: left out 1 of 17 files that are not readable DICOM "
        "(notes.dcm). Run rsna inspect"
    )


@pytest.mark.parametrize("bad_uid", ["../x", "1.2.3/../../etc", "1.2.03", "1." + "2" * 70, ""])
def test_invalid_uid_never_becomes_a_path(tiny_root: Path, tmp_path: Path, bad_uid: str) -> None:
    header, *rows = _rows(tiny_root / "train.csv")
    rows[0][0] = bad_uid
    _write_rows(tiny_root / "train.csv", [header, *rows])
    records, rejects = _build(tiny_root, tmp_path)

    assert len(records) == 11
    assert len(rejects) == 1
    assert rejects[0]["SeriesInstanceUID"] == bad_uid
    assert rejects[0]["series_dir"] is None
    assert "train.csv line 2: SeriesInstanceUID" in rejects[0]["reason"]
    assert "is not a valid DICOM UID" in rejects[0]["reason"]


def test_repeated_row_is_rejected(tiny_root: Path, tmp_path: Path) -> None:
    header, *rows = _rows(tiny_root / "train.csv")
    _write_rows(tiny_root / "train.csv", [header, *rows, rows[2]])
    records, rejects = _build(tiny_root, tmp_path)

    assert len(records) == 12
    assert len(rejects) == 1
    assert "line 14: repeats an earlier row" in rejects[0]["reason"]


def test_location_without_aneurysm_present_is_rejected(tiny_root: Path, tmp_path: Path) -> None:
    header, *rows = _rows(tiny_root / "train.csv")
    negative = next(row for row in rows if row[-1] == "0")
    negative[header.index("Basilar Tip")] = "1"
    _write_rows(tiny_root / "train.csv", [header, *rows])
    _, rejects = _build(tiny_root, tmp_path)

    assert [reject["SeriesInstanceUID"] for reject in rejects] == [negative[0]]
    assert "Aneurysm Present is 0 but locations ['Basilar Tip'] are 1" in rejects[0]["reason"]


def test_localizer_of_unknown_series_is_ignored(
    tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _rows(tiny_root / "train_localizers.csv")
    unknown = "1.2.3.4.5"
    rows.append([unknown, "1.2.3.4.6", "{'x': 1.0, 'y': 2.0}", "Basilar Tip"])
    _write_rows(tiny_root / "train_localizers.csv", rows)
    records, rejects = _build(tiny_root, tmp_path)

    assert len(records) == 12
    assert rejects == []
    assert sum(len(record["localizers"]) for record in records) == len(rows) - 2
    assert f"name series {unknown}, which has no usable train.csv row" in caplog.text


@pytest.mark.parametrize(
    ("coordinates", "problem"),
    [
        ("__import__('os').system('true')", "not a Python dict literal"),
        ("{'x': 1.0}", "must be a dict with keys 'x', 'y'"),
        ("[1.0, 2.0]", "must be a dict"),
        ("{'x': -3.0, 'y': 2.0}", "expected a pixel coordinate >= 0"),
        ("{'x': 'a', 'y': 2.0}", "expected a finite number"),
        ("{'x': float('nan'), 'y': 2.0}", "not a Python dict literal"),
        ("{'x': 1.0, 'y': 2.0, 'f': 1.5}", "expected a 0-based frame index"),
        ("{'x': 1.0, 'y': 2.0, 'z': 3}", "must be a dict with keys"),
        ("{'x': " + "[" * 300 + "]" * 300 + ", 'y': 1}", "expected at most 200"),
    ],
)
def test_parse_coordinates_rejects(coordinates: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_coordinates(coordinates)


@pytest.mark.parametrize(
    ("coordinates", "expected"),
    [
        ("{'x': 258.36, 'y': 261.36}", (258.36, 261.36, None)),
        ("{'x': 10, 'y': 0.5, 'f': 3}", (10.0, 0.5, 3)),
        ("{'x': 1.0, 'y': 2.0, 'f': 4.0}", (1.0, 2.0, 4)),
    ],
)
def test_parse_coordinates_values(coordinates: str, expected: tuple) -> None:
    assert parse_coordinates(coordinates) == expected


def test_localizer_with_bad_frame_is_dropped(
    tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    header, *rows = _rows(tiny_root / "train_localizers.csv")
    rows[0][2] = "{'x': 5.0, 'y': 6.0, 'f': 99}"
    rows[1][1] = "1.2.3.999"
    _write_rows(tiny_root / "train_localizers.csv", [header, *rows])
    records, _ = _build(tiny_root, tmp_path)

    assert sum(len(record["localizers"]) for record in records) == len(rows) - 2
    assert "localizer of" in caplog.text


def test_no_usable_series_raises(tiny_root: Path, tmp_path: Path) -> None:
    shutil.rmtree(tiny_root / "series")
    (tmp_path / "manifest.jsonl").write_text("stale\n")

    with pytest.raises(ManifestError, match=r"no usable series in .*: 12 rejected"):
        _build(tiny_root, tmp_path)
    assert len(read_jsonl(tmp_path / "rejects.jsonl")) == 12
    assert not (tmp_path / "manifest.jsonl").exists()


def test_wrong_columns_raise(tiny_root: Path, tmp_path: Path) -> None:
    header, *rows = _rows(tiny_root / "train.csv")
    header[4], header[5] = header[5], header[4]
    _write_rows(tiny_root / "train.csv", [header, *rows])

    with pytest.raises(ManifestError, match=r"expected .* in this order"):
        _build(tiny_root, tmp_path)


def _run_stage(data_root: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    params = tmp_path / "params.yaml"
    params.write_text("manifest:\n  workers: 2\n", encoding="utf-8")
    command = [sys.executable, str(REPO / "stages" / "manifest.py"), "--params", str(params)]
    command += ["--data-root", str(data_root), "--out", str(tmp_path / "out" / "manifest.jsonl")]
    command += ["--rejects", str(tmp_path / "out" / "rejects.jsonl")]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_manifest_stage_writes_outputs(tiny_root: Path, tmp_path: Path) -> None:
    result = _run_stage(tiny_root, tmp_path)

    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "out" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12
    assert json.loads(lines[0])["frame_count"] == 16
    assert (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8") == ""


def test_manifest_stage_fails_on_empty_root(tmp_path: Path) -> None:
    result = _run_stage(tmp_path / "nowhere", tmp_path)

    assert result.returncode == 1
    assert "train.csv not found; check data.root" in result.stderr
