"""Preprocessing of whole series and datasets, on tiny DICOM series written with pydicom."""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dicom_builders
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from rsna import cli
from rsna.fileio import read_jsonl, write_jsonl
from rsna.preprocess import fingerprint
from rsna.preprocess.runner import JOURNAL_NAME, jobs_from_manifest, preprocess_dataset
from rsna.preprocess.series import Localizer, SeriesJob, preprocess_series
from rsna.preprocess.settings import VolumeSpec
from rsna.preprocess.state import DEFAULT_STATE_NAME
from rsna.sample import write_sample_dataset

UID_ROOT = "1.2.826.0.1.3680043.10.2024."
REPOSITORY = Path(__file__).resolve().parents[1]
# Same spacing as the tiny series below, so the expected values need no interpolation.
SPEC = VolumeSpec(
    spacing_mm=(2.0, 2.0, 2.0),
    shape=(4, 4, 8),
    ct_window_hu=(-100.0, 600.0),
    mr_percentiles=(1.0, 99.0),
)


def write_series(
    folder: Path,
    stored: np.ndarray,
    *,
    series_uid: str,
    modality: str = "CT",
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0),
    **options,
) -> list[str]:
    """Write ``stored`` ``(z, y, x)`` as an axial series; return the SOPInstanceUIDs by z.

    Slice k sits at z = k * spacing (toward the head) and the images are not flipped, so
    the canonical LPS volume of the reader equals the modality LUT of ``stored``. CT files
    carry RescaleIntercept -1024, MR files no rescale tags.
    """
    files = dicom_builders.write_series(
        folder,
        stored=stored,
        spacing_mm=spacing_mm,
        first_position_mm=(0.0, 0.0, 0.0),
        modality=modality,
        series_uid=series_uid,
        rescale_slope=1.0 if modality == "CT" else None,
        rescale_intercept=-1024.0 if modality == "CT" else None,
        **options,
    )
    return list(files.sop_instance_uids)


def compress_rle(folder: Path) -> None:
    """Rewrite every file of ``folder`` with the RLE Lossless transfer syntax."""
    for path in folder.glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        dataset.compress(RLELossless, encoding_plugin="pydicom")
        dataset.save_as(path, enforce_file_format=True)


def ct_hu(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Return a head-like HU volume: air around, soft tissue and bright vessels inside."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, dtype=np.int16)
    z, y, x = shape
    hu[:, 1 : y - 1, 1 : x - 1] = rng.integers(-50, 500, size=(z, y - 2, x - 2))
    hu[:, y // 2, x // 2] = 1500
    return hu


def make_ct_series(
    root: Path, number: int, shape=(4, 6, 6), spacing_mm=(2.0, 2.0, 2.0)
) -> tuple[Path, str, np.ndarray]:
    series_uid = f"{UID_ROOT}{number}"
    hu = ct_hu(shape, seed=number)
    folder = root / series_uid
    write_series(folder, (hu + 1024).astype(np.int16), series_uid=series_uid, spacing_mm=spacing_mm)
    return folder, series_uid, hu


def expected_ct(hu: np.ndarray) -> np.ndarray:
    """Window (-100, 600) HU, crop y 6 -> 4 and pad x 6 -> 8 as SPEC does, in float16."""
    windowed = np.clip((hu.astype(np.float32) + np.float32(100.0)) / np.float32(700.0), 0, 1)
    saved = np.zeros(SPEC.shape, dtype=np.float16)
    saved[:, :, 1:7] = windowed[:, 1:5, :]
    return saved


def run(jobs, out_dir: Path, *, spec=SPEC, workers=1, force=False):
    return preprocess_dataset(
        jobs,
        out_dir=out_dir,
        index_path=out_dir / "index.jsonl",
        rejects_path=out_dir / "rejects.jsonl",
        spec=spec,
        workers=workers,
        threads_per_worker=1,
        force=force,
    )


# ---------------------------------------------------------------------------------------
# One series


def test_series_ct_values_exact(tmp_path):
    folder, series_uid, hu = make_ct_series(tmp_path, 1)

    saved, record = preprocess_series(SeriesJob(series_dir=folder, modality="CTA"), spec=SPEC)

    assert saved.dtype == np.float16
    assert saved.shape == (4, 4, 8)
    np.testing.assert_array_equal(saved, expected_ct(hu))
    assert record["SeriesInstanceUID"] == series_uid
    assert record["file"] == f"{series_uid}.npy"
    assert record["Modality"] == "CTA"
    assert record["dicom_modality"] == "CT"
    assert record["normalization"] == "ct_window_hu"
    assert record["source_shape"] == [4, 6, 6]
    assert record["source_spacing_mm"] == [2.0, 2.0, 2.0]
    assert record["spacing_mm"] == [2.0, 2.0, 2.0]


def test_series_mr_percentiles_over_cropped_voxels(tmp_path):
    series_uid = f"{UID_ROOT}2"
    stored = np.arange(4 * 6 * 6, dtype=np.uint16).reshape(4, 6, 6) * 10
    write_series(tmp_path / "mr", stored, series_uid=series_uid, modality="MR")

    saved, record = preprocess_series(SeriesJob(series_dir=tmp_path / "mr"), spec=SPEC)

    cropped = stored[:, 1:5, :].astype(np.float32)
    lower, upper = np.percentile(cropped, [1.0, 99.0])
    expected = np.zeros(SPEC.shape, dtype=np.float16)
    expected[:, :, 1:7] = np.clip((cropped - np.float32(lower)) / np.float32(upper - lower), 0, 1)
    assert record["dicom_modality"] == "MR"
    assert record["normalization"] == "mr_percentiles"
    assert record["intensity_range"] == [round(float(lower), 4), round(float(upper), 4)]
    np.testing.assert_array_equal(saved, expected)
    assert float(saved.max()) == 1.0


def test_series_resamples_to_target_spacing(tmp_path):
    folder, _, _ = make_ct_series(tmp_path, 3, shape=(8, 12, 12))
    spec = VolumeSpec(
        spacing_mm=(4.0, 3.0, 6.0),
        shape=(2, 8, 4),
        ct_window_hu=(-100, 600),
        mr_percentiles=(1, 99),
    )

    saved, record = preprocess_series(SeriesJob(series_dir=folder), spec=spec)

    # 8 x 2 mm / 4 mm = 4 slices, cropped to 2; 12 x 2 / 3 = 8 rows; 12 x 2 / 6 = 4 columns.
    assert saved.shape == (2, 8, 4)
    assert record["spacing_mm"] == [4.0, 3.0, 6.0]
    assert float(saved.min()) >= 0.0
    assert float(saved.max()) <= 1.0


def test_series_localizers_follow_crop_and_resampling(tmp_path):
    series_uid = f"{UID_ROOT}4"
    hu = ct_hu((8, 6, 6), seed=4)
    instance_uids = write_series(
        tmp_path / "s", (hu + 1024).astype(np.int16), series_uid=series_uid
    )
    spec = VolumeSpec(
        spacing_mm=(4.0, 2.0, 2.0),
        shape=(4, 4, 8),
        ct_window_hu=(-100, 600),
        mr_percentiles=(1, 99),
    )
    job = SeriesJob(
        series_dir=tmp_path / "s",
        localizers=(
            Localizer(
                sop_instance_uid=instance_uids[5], x=3.0, y=2.0, frame=None, location="Basilar Tip"
            ),
        ),
    )

    _, record = preprocess_series(job, spec=spec)

    # Slice 5 at 2 mm -> (5 + 0.5) * 2 / 4 - 0.5 = 2.25; row 2 minus the crop of 1 -> 1;
    # column 3 plus the padding of 1 -> 4.
    assert record["localizers_zyx"] == [{"z": 2.25, "y": 1.0, "x": 4.0, "location": "Basilar Tip"}]


def test_series_rejects_uid_other_than_manifest(tmp_path):
    folder, series_uid, _ = make_ct_series(tmp_path, 5)

    with pytest.raises(
        ValueError, match=f"contains SeriesInstanceUID {series_uid}, but the manifest"
    ):
        preprocess_series(SeriesJob(series_dir=folder, series_uid=f"{UID_ROOT}999"), spec=SPEC)


# ---------------------------------------------------------------------------------------
# Datasets: incremental runs, rejects, determinism


def test_rerun_processes_only_new_series(tmp_path):
    folders = [make_ct_series(tmp_path / "in", n)[0] for n in (11, 12, 13)]
    out = tmp_path / "out"

    first = run([SeriesJob(series_dir=f) for f in folders], out)
    new_folder = make_ct_series(tmp_path / "in", 14)[0]
    second = run([SeriesJob(series_dir=f) for f in [*folders, new_folder]], out)
    third = run([SeriesJob(series_dir=f) for f in [*folders, new_folder]], out)

    assert (first.processed, first.skipped) == (3, 0)
    assert (second.processed, second.skipped) == (1, 3)
    assert (third.processed, third.skipped) == (0, 4)
    assert len(read_jsonl(out / "index.jsonl")) == 4
    assert len(read_jsonl(out / DEFAULT_STATE_NAME)) == 4
    assert not (out / JOURNAL_NAME).exists()


def test_param_change_reprocesses_all(tmp_path):
    folders = [make_ct_series(tmp_path / "in", n)[0] for n in (21, 22)]
    out = tmp_path / "out"
    wider = VolumeSpec(
        spacing_mm=SPEC.spacing_mm,
        shape=SPEC.shape,
        ct_window_hu=(-200, 800),
        mr_percentiles=(1, 99),
    )

    first = run([SeriesJob(series_dir=f) for f in folders], out)
    changed = run([SeriesJob(series_dir=f) for f in folders], out, spec=wider)

    assert (changed.processed, changed.skipped) == (2, 0)
    assert {entry["key"] for entry in changed.state}.isdisjoint(
        {entry["key"] for entry in first.state}
    )


def test_state_lists_every_volume(tmp_path):
    folders = [make_ct_series(tmp_path / "in", n)[0] for n in (24, 23, 25)]
    out = tmp_path / "out"

    summary = run([SeriesJob(series_dir=f) for f in folders], out)

    index = read_jsonl(out / "index.jsonl")
    state = read_jsonl(out / DEFAULT_STATE_NAME)
    uids = [f"{UID_ROOT}{n}" for n in (23, 24, 25)]
    assert [entry["SeriesInstanceUID"] for entry in state] == uids
    assert [record["SeriesInstanceUID"] for record in index] == uids
    assert all(len(entry["key"]) == 64 for entry in state)
    assert all("key" not in record for record in index)
    assert [{k: v for k, v in entry.items() if k != "key"} for entry in state] == index
    assert summary.state == state


def test_code_change_reprocesses_with_same_index_bytes(tmp_path, monkeypatch):
    folders = [make_ct_series(tmp_path / "in", n)[0] for n in (26, 27)]
    out = tmp_path / "out"
    first = run([SeriesJob(series_dir=f) for f in folders], out)
    index_bytes = (out / "index.jsonl").read_bytes()
    volume_bytes = {p.name: p.read_bytes() for p in out.glob("*.npy")}

    # Another digest of the voxel code, as after an edit of rsna/dicom that leaves every
    # volume byte-identical.
    monkeypatch.setattr(fingerprint, "code_digest", lambda: "0" * 64)
    second = run([SeriesJob(series_dir=f) for f in folders], out)

    assert (first.processed, first.skipped) == (2, 0)
    assert (second.processed, second.skipped) == (2, 0)
    assert (out / "index.jsonl").read_bytes() == index_bytes
    assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == volume_bytes
    assert {entry["key"] for entry in second.state}.isdisjoint(
        {entry["key"] for entry in first.state}
    )
    assert read_jsonl(out / DEFAULT_STATE_NAME) == second.state


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "not found"),
        (b"{not json\n", "unreadable"),
        (b'{"SeriesInstanceUID": "1.2.3", "file": "1.2.3.npy"}\n', "unreadable"),
        (b"\xff\xfe\n", "unreadable"),
    ],
    ids=["missing", "invalid-json", "entry-without-key", "not-utf8"],
)
def test_unusable_state_processes_everything(tmp_path, caplog, content, problem):
    folders = [make_ct_series(tmp_path / "in", n)[0] for n in (28, 29)]
    out = tmp_path / "out"
    run([SeriesJob(series_dir=f) for f in folders], out)
    index_bytes = (out / "index.jsonl").read_bytes()
    state_path = out / DEFAULT_STATE_NAME
    if content is None:
        state_path.unlink()
    else:
        state_path.write_bytes(content)
    # The first run logs at INFO too when an earlier test configured logging.
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="rsna.preprocess.state"):
        rerun = run([SeriesJob(series_dir=f) for f in folders], out)

    messages = [r.getMessage() for r in caplog.records if r.name == "rsna.preprocess.state"]
    assert (rerun.processed, rerun.skipped) == (2, 0)
    assert len(messages) == 1
    assert f"{state_path} {problem}" in messages[0]
    assert "every series is processed" in messages[0]
    assert [r.levelname for r in caplog.records if r.name == "rsna.preprocess.state"] == ["INFO"]
    assert (out / "index.jsonl").read_bytes() == index_bytes
    assert len(read_jsonl(state_path)) == 2


def test_index_of_older_version_with_keys(tmp_path):
    folders = [make_ct_series(tmp_path / "in", n)[0] for n in (33, 34)]
    out = tmp_path / "out"
    run([SeriesJob(series_dir=f) for f in folders], out)
    # An older version wrote the keys into the index and kept no state file.
    state = read_jsonl(out / DEFAULT_STATE_NAME)
    write_jsonl(out / "index.jsonl", state)
    (out / DEFAULT_STATE_NAME).unlink()

    rerun = run([SeriesJob(series_dir=folders[0])], out)

    assert (rerun.processed, rerun.skipped) == (1, 0)
    assert rerun.removed == 1
    assert sorted(p.name for p in out.glob("*.npy")) == [f"{UID_ROOT}33.npy"]
    assert read_jsonl(out / "index.jsonl") == [{k: v for k, v in state[0].items() if k != "key"}]


def test_state_path_can_be_elsewhere(tmp_path):
    folder = make_ct_series(tmp_path / "in", 36)[0]
    out = tmp_path / "out"
    state_path = tmp_path / "state" / "volumes_state.jsonl"

    def run_with_state():
        return preprocess_dataset(
            [SeriesJob(series_dir=folder)],
            out_dir=out,
            index_path=out / "index.jsonl",
            state_path=state_path,
            rejects_path=out / "rejects.jsonl",
            spec=SPEC,
            workers=1,
            threads_per_worker=1,
        )

    first = run_with_state()
    second = run_with_state()

    assert (first.processed, second.skipped) == (1, 1)
    assert [entry["SeriesInstanceUID"] for entry in read_jsonl(state_path)] == [f"{UID_ROOT}36"]
    assert not (out / DEFAULT_STATE_NAME).exists()


def test_changed_file_or_tampered_volume_reprocessed(tmp_path):
    folder_a, uid_a, hu = make_ct_series(tmp_path / "in", 31)
    folder_b, uid_b, _ = make_ct_series(tmp_path / "in", 32)
    out = tmp_path / "out"
    run([SeriesJob(series_dir=folder_a), SeriesJob(series_dir=folder_b)], out)

    # Same size, new header value: the key must change although mtimes are ignored.
    path = sorted(folder_a.glob("*.dcm"))[0]
    dataset = pydicom.dcmread(path)
    dataset.PatientID = "P2"
    dataset.save_as(path, enforce_file_format=True)
    np.save(out / f"{uid_b}.npy", np.zeros(SPEC.shape, np.float16))
    rerun = run([SeriesJob(series_dir=folder_a), SeriesJob(series_dir=folder_b)], out)

    assert (rerun.processed, rerun.skipped) == (2, 0)
    np.testing.assert_array_equal(np.load(out / f"{uid_a}.npy"), expected_ct(hu))


def test_moved_and_touched_series_still_current(tmp_path):
    folder, _, _ = make_ct_series(tmp_path / "in", 35)
    out = tmp_path / "out"
    run([SeriesJob(series_dir=folder)], out)

    # A checkout or copy elsewhere gives new paths and mtimes but the same bytes.
    moved = tmp_path / "elsewhere" / folder.name
    moved.parent.mkdir()
    folder.rename(moved)
    for path in moved.iterdir():
        os.utime(path, (1_000_000_000, 1_000_000_000))
    rerun = run([SeriesJob(series_dir=moved)], out)

    assert (rerun.processed, rerun.skipped) == (0, 1)


def test_unreadable_series_rejected_rest_processed(tmp_path):
    good = make_ct_series(tmp_path / "in", 41)[0]
    broken = tmp_path / "in" / "broken"
    broken.mkdir()
    (broken / "a.dcm").write_bytes(b"not a DICOM file")
    missing = tmp_path / "in" / "missing"

    summary = run([SeriesJob(series_dir=p) for p in (good, broken, missing)], tmp_path / "out")

    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert len(summary.records) == 1
    assert [entry["series_dir"] for entry in rejects] == [str(broken), str(missing)]
    assert all(entry["reason"] for entry in rejects)
    assert "not found" in rejects[1]["reason"]


def test_duplicate_uid_folders_rejected(tmp_path):
    folder, series_uid, hu = make_ct_series(tmp_path / "a", 51)
    write_series(tmp_path / "b", (hu + 1024).astype(np.int16), series_uid=series_uid)

    summary = run(
        [SeriesJob(series_dir=folder), SeriesJob(series_dir=tmp_path / "b")], tmp_path / "out"
    )

    assert summary.records == []
    assert len(summary.rejects) == 2
    assert "is in several folders" in summary.rejects[0]["reason"]
    assert not (tmp_path / "out" / f"{series_uid}.npy").exists()


def test_dropped_series_volume_removed(tmp_path):
    folders = [make_ct_series(tmp_path / "in", n)[0] for n in (61, 62)]
    out = tmp_path / "out"
    (out).mkdir()
    (out / "notes.txt").write_text("kept")

    run([SeriesJob(series_dir=f) for f in folders], out)
    summary = run([SeriesJob(series_dir=folders[0])], out)

    assert summary.removed == 1
    assert sorted(p.name for p in out.glob("*.npy")) == [f"{UID_ROOT}61.npy"]
    assert (out / "notes.txt").exists()


def test_one_and_two_workers_bit_identical(tmp_path):
    folders = [make_ct_series(tmp_path / "in", n, shape=(6, 10, 10))[0] for n in (71, 72, 73)]
    rng = np.random.default_rng(7)
    folders.append(tmp_path / "in" / "mr")
    stored = rng.integers(0, 3000, size=(5, 9, 9)).astype(np.uint16)
    write_series(
        folders[-1], stored, series_uid=f"{UID_ROOT}74", modality="MR", spacing_mm=(1.5, 1.1, 1.1)
    )
    folders.append(tmp_path / "in" / "rle")
    hu = ct_hu((6, 10, 10), seed=75)
    write_series(folders[-1], (hu + 1024).astype(np.int16), series_uid=f"{UID_ROOT}75")
    compress_rle(folders[-1])
    folders.append(tmp_path / "in" / "sagittal")
    dicom_builders.write_series(
        folders[-1],
        stored=(ct_hu((7, 8, 9), seed=76) + 1024).astype(np.int16),
        orientation=dicom_builders.SAGITTAL,
        spacing_mm=(1.2, 0.9, 0.8),
        series_uid=f"{UID_ROOT}76",
    )
    folders.append(tmp_path / "in" / "enhanced")
    folders[-1].mkdir()
    dicom_builders.write_enhanced(
        folders[-1] / "frames.dcm",
        stored=rng.integers(0, 2000, size=(6, 8, 8)).astype(np.uint16),
        frame_order=[3, 0, 5, 1, 4, 2],
        series_uid=f"{UID_ROOT}77",
    )
    spec = VolumeSpec(
        spacing_mm=(1.7, 1.3, 1.9),
        shape=(5, 6, 7),
        ct_window_hu=(-100, 600),
        mr_percentiles=(2, 98),
    )

    one = run([SeriesJob(series_dir=f) for f in folders], tmp_path / "one", spec=spec, workers=1)
    two = run([SeriesJob(series_dir=f) for f in folders], tmp_path / "two", spec=spec, workers=2)

    assert one.rejects == []
    assert len(one.records) == 7
    assert one.records == two.records
    for name in ("index.jsonl", DEFAULT_STATE_NAME):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    for record in one.records:
        name = record["file"]
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_stale_temporaries_removed(tmp_path):
    folder = make_ct_series(tmp_path / "in", 81)[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / f".tmp-{UID_ROOT}81.npy.abc").write_bytes(b"\x93NUMPY partial")

    run([SeriesJob(series_dir=folder)], out)

    assert [p.name for p in out.iterdir() if p.name.startswith(".tmp-")] == []


def test_jobs_from_manifest_fields(tmp_path):
    record = {
        "SeriesInstanceUID": "1.2.3",
        "Modality": "MRA",
        "series_dir": "series/1.2.3",
        "file_count": 1,
        "frame_count": 40,
        "localizers": [
            {"SOPInstanceUID": "1.2.3.4", "x": 1.5, "y": 2, "f": 3, "location": "Basilar Tip"}
        ],
    }

    (job,) = jobs_from_manifest([record], data_root=tmp_path)

    assert job.series_dir == tmp_path / "series" / "1.2.3"
    assert job.reported_dir == "series/1.2.3"
    assert job.size_hint == 40
    assert job.localizers == (
        Localizer(sop_instance_uid="1.2.3.4", x=1.5, y=2.0, frame=3, location="Basilar Tip"),
    )


# ---------------------------------------------------------------------------------------
# The command and the stage


def rsna_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rsna.cli", *args]


def test_cli_killed_run_resumes_without_corrupt_files(tmp_path):
    folders = [make_ct_series(tmp_path / "in", 100 + n, shape=(40, 128, 128))[0] for n in range(20)]
    out = tmp_path / "out"
    command = rsna_command("preprocess", *map(str, folders), "--out", str(out), "--workers", "1")
    command += ["--shape", "16", "48", "48", "--spacing-mm", "2", "2", "2"]
    env = {**os.environ, "RSNA_NO_PROGRESS": "1"}

    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, start_new_session=True, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_journal_lines(out / JOURNAL_NAME, count=3, process=process)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    done = [json.loads(line) for line in (out / JOURNAL_NAME).read_text().splitlines() if line]
    assert not (out / "index.jsonl").exists()
    assert 3 <= len(done) < len(folders)
    assert not (out / DEFAULT_STATE_NAME).exists()
    for path in out.glob("*.npy"):
        assert np.load(path).shape == (16, 48, 48)
    spec = VolumeSpec(
        spacing_mm=(2.0, 2.0, 2.0),
        shape=(16, 48, 48),
        ct_window_hu=(-100, 600),
        mr_percentiles=(1, 99),
    )
    resumed = run([SeriesJob(series_dir=f) for f in folders], out, spec=spec)
    assert resumed.skipped >= len(done)
    assert resumed.processed + resumed.skipped == len(folders)
    assert len(read_jsonl(out / "index.jsonl")) == len(folders)
    assert len(read_jsonl(out / DEFAULT_STATE_NAME)) == len(folders)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def _wait_for_journal_lines(journal: Path, *, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count("\n") >= count:
            return
        if process.poll() is not None:
            pytest.fail(
                f"the command ended (status {process.returncode}) before it could be killed"
            )
        time.sleep(0.01)
    pytest.fail(f"{journal} never reached {count} lines")


@pytest.fixture
def root_logging():
    """Restore the root logger after ``rsna.cli.main`` reconfigured it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_cli_outputs_and_exit_status(tmp_path, monkeypatch, capsys):
    good = make_ct_series(tmp_path / "in", 91)[0]
    broken = tmp_path / "in" / "broken"
    broken.mkdir()
    (broken / "x.dcm").write_bytes(b"junk")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RSNA_NO_PROGRESS", "1")

    status = cli.main(
        [
            "preprocess",
            str(good),
            str(broken),
            "--out",
            "out",
            "--shape",
            "4",
            "4",
            "8",
            "--workers",
            "1",
        ]
    )

    assert status == 1
    index = read_jsonl(tmp_path / "out" / "index.jsonl")
    state = read_jsonl(tmp_path / "out" / DEFAULT_STATE_NAME)
    assert [r["SeriesInstanceUID"] for r in index] == [f"{UID_ROOT}91"]
    assert [r["SeriesInstanceUID"] for r in state] == [f"{UID_ROOT}91"]
    assert index[0]["shape"] == [4, 4, 8]
    assert index[0]["Modality"] is None
    assert [r["series_dir"] for r in read_jsonl(tmp_path / "out" / "rejects.jsonl")] == [
        str(broken)
    ]
    assert "1 of 2 series rejected" in capsys.readouterr().err


@pytest.mark.usefixtures("root_logging")
def test_cli_invalid_flag_is_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    status = cli.main(["preprocess", "x", "--out", "out", "--ct-window-hu", "600", "-100"])

    assert status == 2
    assert "ct_window_hu must have lower < upper" in capsys.readouterr().err


def test_stage_script_writes_declared_outputs(tmp_path):
    root = tmp_path / "data" / "sample"
    _, series_uid, _ = make_ct_series(root / "series", 95)
    write_jsonl(
        tmp_path / "manifest.jsonl",
        [
            {
                "SeriesInstanceUID": series_uid,
                "Modality": "CTA",
                "series_dir": f"series/{series_uid}",
                "file_count": 4,
                "frame_count": 4,
                "localizers": [],
            },
            {
                "SeriesInstanceUID": f"{UID_ROOT}96",
                "Modality": "MRA",
                "series_dir": f"series/{UID_ROOT}96",
                "file_count": 1,
                "frame_count": 1,
                "localizers": [],
            },
        ],
    )
    params = (
        f"data:\n  root: {root}\npreprocess:\n  spacing_mm: [2.0, 2.0, 2.0]\n  shape: [4, 4, 8]\n"
        "  ct_window_hu: [-100.0, 600.0]\n  mr_percentiles: [1.0, 99.0]\n  workers: 1\n"
        "  threads_per_worker: 1\n"
    )
    (tmp_path / "params.yaml").write_text(params)
    command = [
        sys.executable,
        str(REPOSITORY / "stages" / "preprocess.py"),
        "--params",
        "params.yaml",
        "--manifest",
        "manifest.jsonl",
        "--out-dir",
        "volumes",
        "--index",
        "volumes_index.jsonl",
        "--state",
        "volumes_state.jsonl",
        "--rejects",
        "reports/preprocess_rejects.jsonl",
    ]

    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    index = read_jsonl(tmp_path / "volumes_index.jsonl")
    assert [(r["SeriesInstanceUID"], r["Modality"]) for r in index] == [(series_uid, "CTA")]
    state = read_jsonl(tmp_path / "volumes_state.jsonl")
    assert [(r["SeriesInstanceUID"], len(r["key"])) for r in state] == [(series_uid, 64)]
    rejects = read_jsonl(tmp_path / "reports" / "preprocess_rejects.jsonl")
    assert [(r["SeriesInstanceUID"], r["series_dir"]) for r in rejects] == [
        (f"{UID_ROOT}96", f"series/{UID_ROOT}96")
    ]
    assert sorted(p.name for p in (tmp_path / "volumes").iterdir()) == [f"{series_uid}.npy"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_memory_growth_within_three_int16_volumes(tmp_path):
    # 0.5 mm voxels resampled to 2 mm: the bound holds when the resampled volume is smaller
    # than the source, as for every series of the real data at the default spacing.
    shape = (160, 256, 256)
    folder, _, _ = make_ct_series(tmp_path / "in", 99, shape=shape, spacing_mm=(0.5, 0.5, 0.5))
    int16_bytes = np.prod(shape) * 2
    job = SeriesJob(series_dir=folder)
    preprocess_series(job, spec=SPEC)

    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    preprocess_series(job, spec=SPEC)
    growth = _status_bytes("VmHWM") - before

    assert growth <= 3 * int16_bytes, f"peak growth {growth / 2**20:.0f} MiB"


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_warnings_reach_the_console(tmp_path, workers):
    # Two series, so that two workers really start a process pool.
    write_sample_dataset(tmp_path / "data", series=2, seed=3, matrix=16, slices=8, workers=1)
    series_dirs = sorted(str(path) for path in (tmp_path / "data" / "series").iterdir())
    (Path(series_dirs[0]) / "notes.dcm").write_text("not a DICOM file")
    command = [sys.executable, "-m", "rsna.cli", "preprocess", *series_dirs]
    command += ["--out", str(tmp_path / "out"), "--workers", str(workers)]

    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr
    assert "notes.dcm" in result.stderr
