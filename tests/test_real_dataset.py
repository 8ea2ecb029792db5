"""The real DICOM series laid out as a small Kaggle-layout dataset, through two stages.

Each case folder of the shared real test data becomes one series of a made-up
``train.csv``; the manifest and preprocess functions of the pipeline then run over it.
Every series must end as a volume or as a rejection with a reason: nothing is lost.
"""

import collections
import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from rsna.fileio import read_jsonl
from rsna.labels import LOCATION_COLUMNS, TRAIN_CSV_COLUMNS
from rsna.manifest import build_manifest
from rsna.preprocess.runner import jobs_from_manifest, preprocess_dataset
from rsna.preprocess.settings import PreprocessParams

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "dicom" / "real"
REJECTED_VERDICTS = {"reject_not_a_volume", "reject_duplicate_position", "decode_only"}
SHAPE = (16, 32, 32)

pytestmark = pytest.mark.skipif(
    not (REAL_DATA / "expected.json").is_file(),
    reason=f"real DICOM test data not found at {REAL_DATA}; place ../shared beside the repository",
)


def _main_series_uid(folder: Path) -> str:
    """Return the SeriesInstanceUID that most files of ``folder`` carry."""
    counts = collections.Counter()
    for path in sorted(folder.iterdir()):
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "SeriesInstanceUID" in header:
            counts[header.SeriesInstanceUID] += 1
    return counts.most_common(1)[0][0]


def _csv_row(uid: str, dicom_modality: str, positive: bool) -> dict:
    row = dict.fromkeys(TRAIN_CSV_COLUMNS, 0)
    row.update(
        SeriesInstanceUID=uid,
        PatientAge=60,
        PatientSex="Female",
        Modality="CTA" if dicom_modality != "MR" else "MRA",
    )
    if positive:
        row[LOCATION_COLUMNS[6]] = 1
        row["Aneurysm Present"] = 1
    return row


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory):
    """Build the dataset; return its root and the expected verdict of each UID."""
    root = tmp_path_factory.mktemp("real") / "data"
    expected = json.loads((REAL_DATA / "expected.json").read_text())
    verdicts, rows = {}, []
    for case, facts in expected.items():
        uid = _main_series_uid(REAL_DATA / case)
        if uid in verdicts:
            # The four codec copies of one MR series share a UID; one of them is enough.
            continue
        verdicts[uid] = (case, facts["verdict"])
        series_dir = root / "series" / uid
        series_dir.mkdir(parents=True)
        for source in sorted((REAL_DATA / case).iterdir()):
            (series_dir / source.name).symlink_to(source)
        first_group = facts["groups"][0] if facts.get("groups") else {}
        rows.append(_csv_row(uid, first_group.get("modality", "CT"), positive=len(rows) % 2 == 0))

    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TRAIN_CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (root / "train_localizers.csv").write_text(
        "SeriesInstanceUID,SOPInstanceUID,coordinates,location\n"
    )
    return root, verdicts


@pytest.fixture(scope="module")
def stage_outputs(real_dataset, tmp_path_factory):
    root, _ = real_dataset
    out = tmp_path_factory.mktemp("outputs")
    build_manifest(
        data_root=root,
        out_path=out / "manifest.jsonl",
        rejects_path=out / "manifest_rejects.jsonl",
        workers=1,
    )
    params = PreprocessParams(
        spacing_mm=(1.0, 1.0, 1.0),
        shape=SHAPE,
        ct_window_hu=(-100.0, 600.0),
        mr_percentiles=(1.0, 99.0),
    )
    preprocess_dataset(
        jobs_from_manifest(read_jsonl(out / "manifest.jsonl"), data_root=root),
        out_dir=out / "volumes",
        index_path=out / "index.jsonl",
        rejects_path=out / "preprocess_rejects.jsonl",
        spec=params.volume_spec(),
        workers=1,
        threads_per_worker=1,
    )
    return out


def _outcomes(out: Path) -> tuple[dict, dict]:
    volumes = {record["SeriesInstanceUID"]: record for record in read_jsonl(out / "index.jsonl")}
    rejects = {}
    for name in ("manifest_rejects.jsonl", "preprocess_rejects.jsonl"):
        for record in read_jsonl(out / name):
            rejects[record["SeriesInstanceUID"]] = record["reason"]
    return volumes, rejects


def test_every_series_is_volume_or_rejected(real_dataset, stage_outputs):
    _, verdicts = real_dataset
    volumes, rejects = _outcomes(stage_outputs)

    assert set(volumes).isdisjoint(rejects)
    assert set(volumes) | set(rejects) == set(verdicts)


@pytest.mark.parametrize("kind", ["volume", "rejected"])
def test_outcome_matches_expected_verdict(real_dataset, stage_outputs, kind):
    _, verdicts = real_dataset
    volumes, rejects = _outcomes(stage_outputs)

    for uid, (case, verdict) in verdicts.items():
        rejected = verdict in REJECTED_VERDICTS
        if kind == "rejected" and rejected:
            assert uid in rejects, f"{case} ({verdict}) was not rejected"
            assert rejects[uid].strip(), f"{case} was rejected without a reason"
        if kind == "volume" and not rejected:
            assert uid in volumes, f"{case} ({verdict}) was rejected: {rejects.get(uid)}"


def test_volumes_have_target_shape_and_range(stage_outputs):
    volumes, _ = _outcomes(stage_outputs)

    assert volumes
    for record in volumes.values():
        array = np.load(stage_outputs / "volumes" / record["file"])
        assert array.dtype == np.float16
        assert array.shape == SHAPE
        assert np.isfinite(array).all()
        assert float(array.min()) >= 0.0
        assert float(array.max()) <= 1.0
