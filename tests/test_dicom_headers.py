"""Header pass and series summary: odd headers, privacy, subtype inference, pickling.

The fast parse (rsna.dicom.rawparse) must give records equal to the pydicom path on every
kind of file: the builders' variants, the synthetic sample, the real series beside the
repository, truncated and non-DICOM files, and the files it declines.
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_builders import (
    CORONAL,
    OMIT,
    build_slice,
    head_ct_values,
    write_enhanced,
    write_series,
)
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from rsna.dicom import SeriesError, read_headers, read_series, scan_series
from rsna.dicom.headers import SEQUENCES_READ, read_header
from rsna.dicom.rawparse import INITIAL_READ_BYTES, UnsupportedHeaderError, parse_header
from rsna.sample import write_sample_dataset

REAL_ROOT = Path(__file__).parents[1].parent / "shared" / "dicom" / "real"


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


def write_odd_character_sets(folder):
    """Write 3 MR files: an unknown character set, ISO 2022 with Japanese, private tags."""
    files = write_mr(folder, SeriesDescription="T2 axial")
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
    return files


def write_invalid_numbers(folder):
    """Write 3 MR files without SeriesDescription and InstanceNumber and with invalid DS."""
    files = write_mr(folder, SeriesDescription=OMIT, InstanceNumber=OMIT)
    for path in files.paths:
        dataset = pydicom.dcmread(path)
        # Raw elements reach the file unvalidated, as a faulty writer would leave them.
        for keyword, text in (("SliceThickness", b"1.0.0 "), ("RepetitionTime", b"abc ")):
            tag = pydicom.datadict.tag_for_keyword(keyword)
            dataset[tag] = RawDataElement(tag, "DS", len(text), text, 0, False, True)
        dataset.save_as(path, enforce_file_format=True)
    return files


@pytest.mark.filterwarnings("ignore:Unknown encoding")
def test_odd_character_sets_and_private_tags(tmp_path):
    write_odd_character_sets(tmp_path)

    headers = read_headers(tmp_path)
    summary = scan_series(tmp_path)

    assert all(header.problem is None for header in headers)
    assert summary.frame_count == 3
    assert summary.subtype == "MRI T2"


def test_invalid_and_missing_optional_values(tmp_path):
    write_invalid_numbers(tmp_path)
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


# Fast parse against the pydicom path


def takes_fast_path(path) -> bool:
    """Return whether rsna.dicom.rawparse parses the file, rather than declining it."""
    with open(path, "rb") as handle:
        try:
            parse_header(handle, sequences_read=SEQUENCES_READ)
        except UnsupportedHeaderError:
            return False
    return True


def assert_paths_agree(paths) -> None:
    for path in paths:
        fast = read_header(path)
        reference = read_header(path, fast_path=False)
        assert fast == reference, f"records differ for {path}"


def assert_elements_match_dcmread(path) -> None:
    """Compare the fast parse's data set with dcmread's, element by element."""
    with open(path, "rb") as handle:
        fast = parse_header(handle, sequences_read=SEQUENCES_READ).dataset
    reference = pydicom.dcmread(path, stop_before_pixels=True)

    def raw_elements(dataset):
        return {
            tag: element
            for tag, element in dataset._dict.items()
            if isinstance(element, RawDataElement)
        }

    # dcmread parses undefined-length sequences at once; the fast parse leaves them out.
    sequences_parsed = {
        tag
        for tag, element in reference._dict.items()
        if not isinstance(element, RawDataElement) and element.VR == "SQ"
    }
    assert raw_elements(fast) == raw_elements(reference)
    assert set(fast._dict) == set(reference._dict) - sequences_parsed
    assert set(fast.file_meta._dict) == set(reference.file_meta._dict)
    assert fast.original_encoding == reference.original_encoding
    assert fast.original_character_set == reference.original_character_set


def rewrite(path, change) -> None:
    """Read a file with pydicom, apply ``change(dataset)`` and write it back in place."""
    dataset = pydicom.dcmread(path)
    change(dataset)
    dataset.save_as(path, enforce_file_format=True)


def signed_ct_values(shape):
    return (head_ct_values(shape).astype(np.int32) - 1024).astype(np.int16)


def undefined_length_sequence(dataset):
    """Add an undefined-length sequence, not read by the header pass, with nested items."""
    inner = Dataset()
    inner.CodeValue = "T-A0100"
    inner.CodingSchemeDesignator = "SRT"
    inner.is_undefined_length_sequence_item = True
    item = Dataset()
    item.ReferencedSOPClassUID = dataset.SOPClassUID
    item.ReferencedSOPInstanceUID = generate_uid()
    item.AnatomicRegionSequence = DicomSequence([inner])
    item["AnatomicRegionSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    dataset.ReferencedImageSequence = DicomSequence([item, Dataset()])
    dataset["ReferencedImageSequence"].is_undefined_length = True


def private_undefined_length_sequence(dataset):
    """Add a private undefined-length sequence, which implicit VR gives no VR for."""
    item = Dataset()
    item.add_new(0x00290010, "LO", "ACME SEQUENCE")
    item.add_new(0x00291001, "LO", "inside")
    item.is_undefined_length_sequence_item = True
    dataset.add_new(0x00290010, "LO", "ACME SEQUENCE")
    dataset.add_new(0x00291010, "SQ", DicomSequence([item]))
    dataset[0x00291010].is_undefined_length = True


def long_private_header(dataset):
    """Make the header longer than the first read, with a value across its end."""
    block = dataset.private_block(0x0031, "ACME LONG HEADER", create=True)
    block.add_new(0x10, "OB", bytes(INITIAL_READ_BYTES - 1000))
    block.add_new(0x11, "OB", bytes(range(256)) * 100)
    block.add_new(0x12, "LO", "after the long values")


def undefined_length_functional_groups(dataset):
    dataset["SharedFunctionalGroupsSequence"].is_undefined_length = True


def undefined_length_contrast_sequence(dataset):
    item = Dataset()
    item.CodeValue = "C-B0300"
    item.CodingSchemeDesignator = "SRT"
    dataset.ContrastBolusAgentSequence = DicomSequence([item])
    dataset["ContrastBolusAgentSequence"].is_undefined_length = True


def odd_length_value(dataset):
    text = b"abc"
    tag = pydicom.datadict.tag_for_keyword("StudyDescription")
    dataset[tag] = RawDataElement(tag, "LO", len(text), text, 0, False, True)


def write_ct(folder, **options):
    return write_series(folder, stored=head_ct_values((3, 8, 8)), **options).paths


def write_edited_ct(folder, change, **options):
    paths = write_ct(folder, **options)
    for path in paths:
        rewrite(path, change)
    return paths


def write_enhanced_mr(folder, **options):
    stored = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    return write_enhanced(folder / "one.dcm", stored=stored, **options).paths


def write_enhanced_with_undefined_length_groups(folder):
    paths = write_enhanced_mr(folder)
    for path in paths:
        rewrite(path, undefined_length_functional_groups)
    return paths


def write_big_endian(folder):
    dataset = build_slice(
        stored=head_ct_values((1, 8, 8))[0],
        position_mm=(0.0, 0.0, 0.0),
        series_uid=generate_uid(),
        study_uid=generate_uid(),
        frame_of_reference_uid=generate_uid(),
    )
    dataset.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "big-endian.dcm"
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)
    return (path,)


def write_deflated(folder):
    def deflate(dataset):
        dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian

    return write_edited_ct(folder, deflate)


def write_without_preamble(folder):
    paths = write_ct(folder)
    for path in paths:
        dataset = pydicom.dcmread(path)
        dataset.preamble = None
        dataset.save_as(path, enforce_file_format=False)
    return paths


# name: (writer of files into a folder, whether the fast parse takes them)
FILE_KINDS = {
    "ct": (write_ct, True),
    "ct-implicit-vr": (
        lambda folder: write_ct(folder, transfer_syntax=ImplicitVRLittleEndian),
        True,
    ),
    "ct-rle": (lambda folder: write_ct(folder, transfer_syntax=RLELossless), True),
    "mr": (lambda folder: write_mr(folder).paths, True),
    "enhanced-mr": (lambda folder: write_enhanced_mr(folder, per_frame_rescale=True), True),
    "enhanced-ct-implicit-vr": (
        lambda folder: write_enhanced_mr(
            folder, modality="CT", orientation=CORONAL, transfer_syntax=ImplicitVRLittleEndian
        ),
        True,
    ),
    "missing-tags": (
        lambda folder: write_ct(
            folder,
            rescale_slope=None,
            tags={
                "InstanceNumber": OMIT,
                "ImageOrientationPatient": OMIT,
                "PixelSpacing": OMIT,
                "PatientID": OMIT,
                "ImageType": OMIT,
            },
        ),
        True,
    ),
    "empty-values": (
        lambda folder: write_ct(
            folder,
            tags={"SliceThickness": None, "PatientID": "", "SeriesNumber": None, "EchoTime": None},
        ),
        True,
    ),
    "invalid-numbers": (lambda folder: write_invalid_numbers(folder).paths, True),
    "odd-character-sets": (lambda folder: write_odd_character_sets(folder).paths, True),
    "signed-padding-implicit-vr": (
        lambda folder: (
            write_series(
                folder,
                stored=signed_ct_values((3, 8, 8)),
                rescale_intercept=0.0,
                transfer_syntax=ImplicitVRLittleEndian,
                tags={"PixelPaddingValue": -2000, "PixelPaddingRangeLimit": -1500},
            ).paths
        ),
        True,
    ),
    "undefined-length-sequence": (
        lambda folder: write_edited_ct(folder, undefined_length_sequence),
        True,
    ),
    "undefined-length-sequence-implicit-vr": (
        lambda folder: write_edited_ct(
            folder, undefined_length_sequence, transfer_syntax=ImplicitVRLittleEndian
        ),
        True,
    ),
    "private-sequence-implicit-vr": (
        lambda folder: write_edited_ct(
            folder, private_undefined_length_sequence, transfer_syntax=ImplicitVRLittleEndian
        ),
        True,
    ),
    "header-longer-than-first-read": (
        lambda folder: write_edited_ct(folder, long_private_header),
        True,
    ),
    "undefined-length-functional-groups": (write_enhanced_with_undefined_length_groups, False),
    "undefined-length-contrast-sequence": (
        lambda folder: write_edited_ct(folder, undefined_length_contrast_sequence),
        False,
    ),
    "odd-length-value": (lambda folder: write_edited_ct(folder, odd_length_value), False),
    "big-endian": (write_big_endian, False),
    "deflated": (write_deflated, False),
    "no-preamble": (write_without_preamble, False),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", FILE_KINDS)
def test_fast_path_equals_pydicom_path(tmp_path, kind):
    write, fast = FILE_KINDS[kind]
    paths = write(tmp_path / kind)

    assert paths
    assert [takes_fast_path(path) for path in paths] == [fast] * len(paths)
    assert_paths_agree(paths)
    if fast:
        for path in paths:
            assert_elements_match_dcmread(path)


def test_fast_path_parses_plain_ct(tmp_path):
    (path,) = write_series(tmp_path, stored=head_ct_values((1, 8, 8))).paths
    reference = read_header(path, fast_path=False)

    with open(path, "rb") as handle:
        dataset, pixel_location, transfer_syntax_uid = parse_header(handle)

    assert transfer_syntax_uid == ExplicitVRLittleEndian
    assert pixel_location == (reference.pixel_data_offset, 8 * 8 * 2)
    assert isinstance(dataset.get_item(pydicom.datadict.tag_for_keyword("Rows")), RawDataElement)
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dataset.original_encoding == (False, True)


def test_fast_path_pixels_match_stored_values(tmp_path):
    stored = head_ct_values((4, 8, 8))
    write_series(tmp_path / "ct", stored=stored, transfer_syntax=ImplicitVRLittleEndian)

    volume = read_series(tmp_path / "ct")

    assert volume.shape == (4, 8, 8)
    np.testing.assert_array_equal(volume.voxels, stored.astype(np.float32) - 1024)


@pytest.mark.parametrize(
    "cut",
    [
        "empty",
        "in-preamble",
        "in-file-meta",
        "after-file-meta",
        "in-element-header",
        "in-value",
        "before-pixel-data",
        "in-pixel-data-header",
        "in-pixel-data",
    ],
)
def test_truncated_file_equals_pydicom_path(tmp_path, cut):
    (path,) = write_series(tmp_path, stored=head_ct_values((1, 8, 8))).paths
    data = path.read_bytes()
    reference = read_header(path, fast_path=False)
    with open(path, "rb") as handle:
        file_meta_end = (
            132 + 12 + parse_header(handle).dataset.file_meta.FileMetaInformationGroupLength
        )
    pixel_header = reference.pixel_data_offset - 12
    cut_at = {
        "empty": 0,
        "in-preamble": 100,
        "in-file-meta": 150,
        "after-file-meta": file_meta_end,
        "in-element-header": file_meta_end + 5,
        "in-value": file_meta_end + 10,
        "before-pixel-data": pixel_header,
        "in-pixel-data-header": pixel_header + 11,
        "in-pixel-data": reference.pixel_data_offset + 10,
    }[cut]
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[:cut_at])

    assert_paths_agree([truncated])


@pytest.mark.parametrize("content", [b"", b"not an image\n"], ids=["empty", "text"])
def test_non_dicom_file_gives_problem(tmp_path, content):
    path = tmp_path / "stray.dcm"
    path.write_bytes(content)

    header = read_header(path)

    assert header == read_header(path, fast_path=False)
    assert header.problem == (
        "not a readable DICOM file (no DICOM preamble and no SOPClassUID or Rows)"
    )


@pytest.fixture(scope="module")
def sample_series_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "data"
    write_sample_dataset(root, series=20, seed=2025, matrix=32, slices=16, workers=1)
    return root / "series"


def test_sample_series_match_pydicom_path(sample_series_root):
    paths = sorted(sample_series_root.rglob("*.dcm"))

    assert len(paths) > 20
    assert all(takes_fast_path(path) for path in paths)
    assert_paths_agree(paths)
    for path in paths:
        assert_elements_match_dcmread(path)


def test_real_series_match_pydicom_path():
    if not REAL_ROOT.is_dir():
        pytest.skip(f"real DICOM test series not found at {REAL_ROOT}")
    paths = sorted(
        path for path in REAL_ROOT.rglob("*") if path.is_file() and not path.name.startswith(".")
    )

    fast_paths = [path for path in paths if takes_fast_path(path)]

    assert len(fast_paths) > len(paths) // 2
    assert_paths_agree(paths)
    for path in fast_paths:
        assert_elements_match_dcmread(path)
