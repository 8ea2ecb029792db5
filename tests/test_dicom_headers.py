"""Header pass and series summary: odd headers, privacy, subtype inference, pickling."""

import json
import pickle

import numpy as np
import pydicom
import pytest
from dicom_builders import CORONAL, OMIT, head_ct_values, write_enhanced, write_series
from pydicom.dataelem import RawDataElement

from rsna.dicom import SeriesError, read_headers, read_series, scan_series
from rsna.dicom.headers import read_header


def write_mr(folder, **tags):
    return write_series(
        folder,
        stored=np.ones((3, 8, 8), dtype=np.uint16),
        modality="MR",
        rescale_slope=None,
        rescale_intercept=None,
        tags=tags,
    )


def test_summary_fields_and_record(tmp_path):
    files = write_series(
        tmp_path,
        stored=head_ct_values((6, 16, 12)),
        spacing_mm=(1.25, 0.4, 0.45),
        tags={
            "PatientName": "Doe^Jane",
            "PatientBirthDate": "19700101",
            "InstitutionName": "General Hospital",
            "ReferringPhysicianName": "House^Gregory",
            "PatientID": "P-17",
        },
    )
    summary = scan_series(tmp_path)
    record = summary.to_record()
    text = json.dumps(record)

    assert summary.series_uid == files.series_uid
    assert summary.patient_id == "P-17"
    assert (summary.file_count, summary.frame_count) == (6, 6)
    assert (summary.rows, summary.columns) == (16, 12)
    assert summary.pixel_spacing_mm == (0.4, 0.45)
    assert summary.slice_spacing_mm == pytest.approx(1.25)
    assert summary.orientation == "axial"
    assert summary.transfer_syntaxes == ("1.2.840.10008.1.2.1",)
    assert summary.sop_frame_counts == {uid: 1 for uid in files.sop_instance_uids}
    assert set(summary.stack_sop_instance_uids) == set(files.sop_instance_uids)
    for private in ("Doe", "19700101", "General Hospital", "House"):
        assert private not in text
        assert private not in repr(read_headers(tmp_path))
    assert pickle.loads(pickle.dumps(summary)) == summary


def test_headers_reused_by_read_series(tmp_path):
    write_series(tmp_path, stored=head_ct_values((4, 8, 8)))
    headers = read_headers(tmp_path)

    volume = read_series(tmp_path, headers=headers)
    summary = scan_series(tmp_path, headers=pickle.loads(pickle.dumps(headers)))

    assert volume.shape == (4, 8, 8)
    assert summary.frame_count == 4


def test_enhanced_summary_counts_frames(tmp_path):
    files = write_enhanced(
        tmp_path / "one.dcm", stored=np.ones((7, 8, 8), dtype=np.uint16), orientation=CORONAL
    )
    summary = scan_series(tmp_path)

    assert (summary.file_count, summary.frame_count) == (1, 7)
    assert summary.sop_frame_counts == {files.sop_instance_uids[0]: 7}
    assert summary.orientation == "coronal"


@pytest.mark.filterwarnings("ignore:Unknown encoding")
def test_odd_character_sets_and_private_tags(tmp_path):
    files = write_mr(tmp_path, SeriesDescription="T2 axial")
    for index, path in enumerate(files.paths):
        dataset = pydicom.dcmread(path)
        if index == 0:
            dataset.SpecificCharacterSet = "ISO_IR 999"
            dataset[0x0008103E].value = "Kopf T2 \xe4\xf6\xfc".encode("latin-1")
        elif index == 1:
            dataset.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
            dataset.SeriesDescription = "T2 頭部"
        block = dataset.private_block(0x0029, "ACME MR HEADER", create=True)
        block.add_new(0x10, "OB", bytes(range(256)) * 4)
        block.add_new(0x11, "LO", "vendor private")
        dataset.save_as(path, enforce_file_format=True)

    headers = read_headers(tmp_path)
    summary = scan_series(tmp_path)

    assert all(header.problem is None for header in headers)
    assert summary.frame_count == 3
    assert summary.subtype == "MRI T2"


def test_invalid_and_missing_optional_values(tmp_path):
    files = write_mr(tmp_path, SeriesDescription=OMIT, InstanceNumber=OMIT)
    for path in files.paths:
        dataset = pydicom.dcmread(path)
        # Raw elements reach the file unvalidated, as a faulty writer would leave them.
        for keyword, text in (("SliceThickness", b"1.0.0 "), ("RepetitionTime", b"abc ")):
            tag = pydicom.datadict.tag_for_keyword(keyword)
            dataset[tag] = RawDataElement(tag, "DS", len(text), text, 0, False, True)
        dataset.save_as(path, enforce_file_format=True)
    headers = read_headers(tmp_path)
    summary = scan_series(tmp_path)

    assert headers[0].frames[0].slice_thickness_mm is None
    assert headers[0].instance_number is None
    assert headers[0].repetition_time_ms is None
    assert summary.subtype is None


def test_stray_files_dropped(tmp_path):
    write_mr(tmp_path)
    (tmp_path / "README.txt").write_text("not an image\n")
    (tmp_path / ".hidden").write_bytes(b"\0" * 10)
    (tmp_path / "sub").mkdir()

    headers = read_headers(tmp_path)
    volume = read_series(tmp_path)

    assert len(headers) == 4
    assert read_header(tmp_path / "README.txt").problem.startswith("not a readable DICOM file")
    assert volume.dropped[0]["what"] == "README.txt"


def test_no_volume_raises_series_error(tmp_path):
    write_series(tmp_path, stored=head_ct_values((1, 8, 8)))
    with pytest.raises(SeriesError, match=r"no volume: one image .* not a volume"):
        scan_series(tmp_path)


def test_missing_folder_raises_series_error(tmp_path):
    with pytest.raises(SeriesError, match=r"series folder .*absent not found"):
        read_series(tmp_path / "absent")


def test_missing_geometry_dropped(tmp_path):
    write_series(tmp_path, stored=head_ct_values((3, 8, 8)), tags={"ImageOrientationPatient": OMIT})
    with pytest.raises(SeriesError, match=r"no CT or MR image with ImagePositionPatient"):
        read_series(tmp_path)


@pytest.mark.parametrize(
    ("modality", "tags", "expected"),
    [
        ("CT", {"SeriesDescription": "CTA Head Neck"}, "CTA"),
        ("CT", {"SeriesDescription": "Head without contrast"}, None),
        ("MR", {"AngioFlag": "Y"}, "MRA"),
        ("MR", {"SequenceName": "*tof3d"}, "MRA"),
        ("MR", {"SeriesDescription": "3D TOF COW"}, "MRA"),
        ("MR", {"SeriesDescription": "T1 MPRAGE post Gd"}, "MRI T1post"),
        ("MR", {"SeriesDescription": "T1 SE", "ContrastBolusAgent": "Gadovist"}, "MRI T1post"),
        ("MR", {"SeriesDescription": "t2_tse_tra"}, "MRI T2"),
        (
            "MR",
            {"ScanningSequence": "SE", "EchoTime": 100.0, "RepetitionTime": 4000.0},
            "MRI T2",
        ),
        ("MR", {"SeriesDescription": "T1 axial"}, None),
    ],
)
def test_subtype_inference(tmp_path, modality, tags, expected):
    write_series(
        tmp_path,
        stored=head_ct_values((3, 8, 8)),
        modality=modality,
        rescale_slope=None if modality == "MR" else 1.0,
        rescale_intercept=None if modality == "MR" else -1024.0,
        tags=tags,
    )
    assert scan_series(tmp_path).subtype == expected
