"""``rsna inspect`` and its report."""

import argparse
import json
import logging

import numpy as np
import pytest
from dicom_builders import head_ct_values, write_enhanced, write_series

from rsna.commands import inspect as inspect_command
from rsna.dicom import SeriesError, inspect_series, localizer_to_voxel, read_series

REPORT_KEYS = {
    "series_dir",
    "series_uid",
    "verdict",
    "reason",
    "shape",
    "spacing_mm",
    "canonical_shape",
    "canonical_spacing_mm",
    "modality",
    "transfer_syntaxes",
    "dropped",
    "warnings",
}


def run_inspect(series_dir, capsys) -> tuple[int, dict | None, str]:
    parser = argparse.ArgumentParser()
    inspect_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["inspect", str(series_dir)])
    status = args.run(args)
    captured = capsys.readouterr()
    report = json.loads(captured.out) if captured.out.strip() else None
    return status, report, captured.err


def test_inspect_volume_exit_0(tmp_path, capsys):
    write_series(tmp_path, stored=head_ct_values((5, 8, 6)), offsets_mm=[0.0, 1.0, 2.0, 4.0, 5.0])
    status, report, _ = run_inspect(tmp_path, capsys)

    assert status == 0
    assert set(report) == REPORT_KEYS
    assert report["verdict"] == "volume"
    assert report["shape"] == [6, 8, 6]
    assert report["spacing_mm"] == pytest.approx([1.0, 0.5, 0.5])
    assert report["canonical_shape"] == [6, 8, 6]
    assert report["modality"] == "CT"
    assert "1 missing slice" in report["reason"]
    assert report["warnings"] == [f"corrected: {report['reason']}"]


def test_inspect_gantry_tilt_in_warnings(tmp_path, capsys):
    write_series(tmp_path, stored=head_ct_values((6, 8, 6)), shear_mm=(0.0, 0.5, 0.0))

    status, report, _ = run_inspect(tmp_path, capsys)

    assert status == 0
    assert report["reason"].startswith("gantry tilt of 26.6 deg detected")
    assert report["warnings"] == [f"corrected: {report['reason']}"]


def test_inspect_plain_volume_has_no_warnings(tmp_path, capsys):
    write_series(tmp_path, stored=head_ct_values((4, 8, 6)))

    status, report, _ = run_inspect(tmp_path, capsys)

    assert status == 0
    assert report["reason"] is None
    assert report["warnings"] == []


def test_inspect_prints_rounded_floats(tmp_path, capsys):
    write_series(
        tmp_path,
        stored=head_ct_values((5, 8, 6)),
        spacing_mm=(0.7, 0.3, 0.7),
        first_position_mm=(-10.1, -20.3, 30.7),
    )
    library = inspect_series(tmp_path)

    status, report, _ = run_inspect(tmp_path, capsys)

    assert status == 0
    assert library["spacing_mm"][0] == 0.7000000000000002
    assert report["spacing_mm"] == [0.7, 0.3, 0.7]
    assert report["canonical_spacing_mm"] == [0.7, 0.3, 0.7]


def test_rounded_for_display_keeps_other_values():
    report = {"a": [1.23456789, 2], "b": {"c": (0.1 + 0.2,)}, "d": "0.30000000000000004"}

    rounded = inspect_command.rounded_for_display(report)

    assert rounded == {"a": [1.234568, 2], "b": {"c": [0.3]}, "d": "0.30000000000000004"}
    assert report["a"][0] == 1.23456789


def test_inspect_rejected_exit_1(tmp_path, capsys):
    write_series(tmp_path, stored=head_ct_values((3, 8, 8)), offsets_mm=[2.0, 2.0, 2.0])
    status, report, _ = run_inspect(tmp_path, capsys)

    assert status == 1
    assert set(report) == REPORT_KEYS
    assert report["verdict"] == "rejected"
    assert "3 images at one position" in report["reason"]
    assert report["shape"] is None


def test_inspect_usage_error_exit_2(tmp_path, capsys, caplog):
    status, report, _ = run_inspect(tmp_path / "absent", capsys)

    assert status == 2
    assert report is None
    assert "absent is not a folder" in caplog.text


def test_inspect_series_never_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("no DICOM here")
    report = inspect_series(tmp_path)

    assert report["verdict"] == "rejected"
    assert report["dropped"][0]["what"] == "notes.txt"


def test_text_files_named_dcm_logged_once(tmp_path, caplog):
    write_series(tmp_path, stored=head_ct_values((3, 8, 8)))
    for name in ("readme.dcm", "b.dcm", "a.dcm", "c.dcm"):
        (tmp_path / name).write_text("not an image", encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="rsna.dicom"):
        volume = read_series(tmp_path)

    assert volume.shape == (3, 8, 8)
    warnings = [r.message for r in caplog.records if r.name == "rsna.dicom.grouping"]
    assert warnings == [
        f"series folder {tmp_path}: left out 4 of 7 files that are not readable DICOM "
        "(a.dcm, b.dcm, c.dcm, ...). Run rsna inspect on the folder for each reason, then "
        "replace these files with the downloaded ones or remove them"
    ]


def test_localizer_unknown_instance(tmp_path):
    write_series(tmp_path, stored=np.ones((3, 4, 4), dtype=np.uint16) * 1000)
    volume = read_series(tmp_path)
    with pytest.raises(
        SeriesError, match=r"SOPInstanceUID 1\.2\.3 is not part of the chosen stack"
    ):
        localizer_to_voxel(volume, sop_instance_uid="1.2.3", x=1.0, y=2.0)


def test_localizer_fractional_point(tmp_path):
    files = write_series(
        tmp_path, stored=np.ones((3, 4, 4), dtype=np.uint16) * 1000, spacing_mm=(2.0, 0.5, 0.5)
    )
    volume = read_series(tmp_path)
    located = localizer_to_voxel(volume, sop_instance_uid=files.sop_instance_uids[1], x=2.5, y=1.25)
    assert located == pytest.approx((1.0, 1.25, 2.5))


def test_localizer_frame_on_single_frame_instance(tmp_path):
    files = write_series(tmp_path, stored=np.ones((3, 4, 4), dtype=np.uint16) * 1000)
    volume = read_series(tmp_path)
    uid = files.sop_instance_uids[2]

    assert localizer_to_voxel(volume, sop_instance_uid=uid, x=0, y=0, frame=0)[0] == 2.0
    with pytest.raises(SeriesError, match=r"is a single-frame instance, but frame 3 was given"):
        localizer_to_voxel(volume, sop_instance_uid=uid, x=0, y=0, frame=3)


def test_localizer_multiframe_needs_frame(tmp_path):
    files = write_enhanced(tmp_path / "one.dcm", stored=np.ones((3, 4, 4), dtype=np.uint16))
    volume = read_series(tmp_path)
    uid = files.sop_instance_uids[0]

    assert localizer_to_voxel(volume, sop_instance_uid=uid, x=1, y=2, frame=2) == (2.0, 2.0, 1.0)
    with pytest.raises(SeriesError, match=r"multi-frame instance \(3 frames in the stack\)"):
        localizer_to_voxel(volume, sop_instance_uid=uid, x=0, y=0)
    with pytest.raises(SeriesError, match=r"has no frame 5 in the chosen stack"):
        localizer_to_voxel(volume, sop_instance_uid=uid, x=0, y=0, frame=5)
