"""The reader on real CT and MR series from public QA collections.

The series live beside the repository (``../shared/dicom/real``) with ``expected.json``
(verdict, shape and spacing of each case). Every case there must have a check here, so a
new case fails until it is handled. Tolerance on spacings and extents: 1e-3 mm.
"""

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from rsna.dicom import SeriesError, inspect_series, localizer_to_voxel, read_series, scan_series
from rsna.dicom.headers import read_headers
from rsna.dicom.pixels import FrameDecoder

REAL_ROOT = Path(__file__).parents[1].parent / "shared" / "dicom" / "real"
TOLERANCE_MM = 1e-3

pytestmark = pytest.mark.skipif(
    not (REAL_ROOT / "expected.json").is_file(),
    reason=f"real DICOM test series not found at {REAL_ROOT} (expected.json missing)",
)


def expected_cases() -> dict:
    if not (REAL_ROOT / "expected.json").is_file():
        return {}
    return json.loads((REAL_ROOT / "expected.json").read_text())


EXPECTED = expected_cases()
VOLUME_VERDICTS = {"volume", "volume_after_series_selection", "volume_but_derived"}
REJECT_VERDICTS = {"reject_not_a_volume", "decode_only"}


def frame_reference(path: Path, frame: int | None) -> tuple[np.ndarray, float, float]:
    """pydicom's pixel_array of one frame with that frame's slope and intercept."""
    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array
    if frame is not None:
        pixels = pixels[frame]
    slope, intercept = 1.0, 0.0
    groups = None
    if "PerFrameFunctionalGroupsSequence" in dataset:
        groups = [dataset.PerFrameFunctionalGroupsSequence[frame]]
        groups += list(dataset.get("SharedFunctionalGroupsSequence", []))
    for group in groups or [dataset]:
        item = group
        if groups is not None:
            sequence = group.get("PixelValueTransformationSequence")
            if not sequence:
                continue
            item = sequence[0]
        if "RescaleSlope" in item:
            slope, intercept = float(item.RescaleSlope), float(item.RescaleIntercept)
            break
    return pixels, slope, intercept


def volume_values_of_frame(volume, sop_uid: str, frame: int | None, rows: int, columns: int):
    """Gather the canonical voxels that hold each pixel of one acquired frame."""
    corner = localizer_to_voxel(volume, sop_instance_uid=sop_uid, x=0, y=0, frame=frame)
    along_x = localizer_to_voxel(volume, sop_instance_uid=sop_uid, x=1, y=0, frame=frame)
    along_y = localizer_to_voxel(volume, sop_instance_uid=sop_uid, x=0, y=1, frame=frame)
    corner, along_x, along_y = (np.asarray(v) for v in (corner, along_x, along_y))
    row_index, column_index = np.mgrid[0:rows, 0:columns]
    points = (
        corner[:, None, None]
        + (along_x - corner)[:, None, None] * column_index
        + (along_y - corner)[:, None, None] * row_index
    )
    index = np.rint(points).astype(int)
    return volume.voxels[index[0], index[1], index[2]]


def assert_exact_values(volume, case: str) -> None:
    """Every frame of the chosen stack equals pydicom's pixel_array after the modality LUT."""
    for (sop_uid, frame), plane in volume.frame_planes.items():
        header = next(h for h in read_headers(REAL_ROOT / case) if h.sop_instance_uid == sop_uid)
        pixels, slope, intercept = frame_reference(Path(header.path), frame)
        assert (plane.rescale_slope, plane.rescale_intercept) == pytest.approx((slope, intercept))
        expected = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        actual = volume_values_of_frame(volume, sop_uid, frame, header.rows, header.columns)
        np.testing.assert_array_equal(actual, expected, err_msg=f"{case} {header.name} {frame}")


def test_every_case_has_a_check():
    assert set(EXPECTED) == set(CASE_CHECKS)


@pytest.mark.parametrize(
    "case", sorted(c for c, e in EXPECTED.items() if e["verdict"] in VOLUME_VERDICTS)
)
def test_volume_cases_shape_and_spacing(case):
    expected = EXPECTED[case]
    report = inspect_series(REAL_ROOT / case)

    assert report["verdict"] == "volume", report["reason"]
    assert report["shape"] == expected["shape_zyx"]
    assert report["spacing_mm"] == pytest.approx(expected["spacing_zyx"], abs=TOLERANCE_MM)
    CASE_CHECKS[case](report)


@pytest.mark.parametrize(
    "case", sorted(c for c, e in EXPECTED.items() if e["verdict"] in REJECT_VERDICTS)
)
def test_rejected_cases(case):
    report = inspect_series(REAL_ROOT / case)

    assert report["verdict"] == "rejected"
    assert report["shape"] is None
    CASE_CHECKS[case](report)
    with pytest.raises(SeriesError):
        read_series(REAL_ROOT / case)


def check_nothing(report: dict) -> None:
    assert report["reason"] is None


def check_mixed_folder(report: dict) -> None:
    dropped = {entry["what"]: entry["reason"] for entry in report["dropped"]}
    assert dropped["S1000_I10"].startswith("localizer")
    assert dropped["S4010_I10"].startswith("Secondary Capture")
    assert dropped["S4010_I50"].startswith("Secondary Capture")
    assert dropped["S2010_DIRFILE"].startswith("no PixelData")
    assert report["series_uid"].endswith("26862469513794233732")
    volume = read_series(REAL_ROOT / "ct_head_philips_phantom_mixed_folder")
    assert float(volume.voxels.min()) == -1024.0
    assert float(volume.voxels.max()) == 782.0


def check_derived_nema(report: dict) -> None:
    assert any("DERIVED" in warning for warning in report["warnings"])
    volume = read_series(REAL_ROOT / "ct_enhanced_nema_2frames_flipped")
    assert float(volume.voxels.min()) == -1024.0
    assert float(volume.voxels.max()) == 172.0
    # The normal is -z: frame 0 (z = -159) is the inferior slice, canonical z index 0.
    assert localizer_to_voxel(
        volume, sop_instance_uid=next(iter(volume.frame_planes))[0], x=0, y=0, frame=0
    )[0] == pytest.approx(0.0)


def check_sagittal_reversed(report: dict) -> None:
    assert report["canonical_shape"] == [256, 256, 4]
    assert report["canonical_spacing_mm"] == pytest.approx([1.0, 1.0, 1.0])


def check_anisotropic(report: dict) -> None:
    volume = read_series(REAL_ROOT / "mr_anisotropic_pixels_float_rescale")
    assert float(volume.voxels.min()) == pytest.approx(33.4438, abs=1e-3)
    assert float(volume.voxels.max()) == pytest.approx(96.468, abs=1e-3)


def check_philips_enhanced(report: dict) -> None:
    volume = read_series(REAL_ROOT / "mr_enhanced_philips_8frames")
    assert float(volume.voxels.max()) == pytest.approx(1081.7485, abs=1e-3)


def check_ge_tilt_slabs(report: dict) -> None:
    # Two slabs (4 mm and 7 mm) and an 18.5 deg tilt: resampled and de-sheared, the extent
    # along the normal is kept (-33.6655 .. 110.4228 mm).
    shape, spacing = report["shape"], report["spacing_mm"]
    assert shape[1:] == [512, 512]
    assert (shape[0] - 1) * spacing[0] == pytest.approx(144.0883, abs=TOLERANCE_MM)
    assert spacing[1:] == pytest.approx([0.4882812, 0.4882812], abs=1e-7)
    assert "gantry tilt of 18.5 deg" in report["reason"]
    assert "slabs of different spacing" in report["reason"]
    volume = read_series(REAL_ROOT / "ct_head_ge_tilt_varspacing")
    assert float(volume.voxels.min()) >= -1024.0  # PixelPaddingValue -1500 set to air


def check_ct_tilt(report: dict) -> None:
    assert report["shape"] == [4, 512, 512]
    assert report["spacing_mm"] == pytest.approx([4.8515, 0.41796875, 0.41796875], abs=1e-3)
    assert "gantry tilt of 14.0 deg" in report["reason"]


def check_missing_slice(report: dict) -> None:
    assert report["shape"] == [5, 512, 512]
    assert report["spacing_mm"] == pytest.approx([5.0, 0.429688006639, 0.429688006639], abs=1e-3)
    assert "1 missing slice" in report["reason"]
    volume = read_series(REAL_ROOT / "ct_missing_slice")
    np.testing.assert_allclose(
        volume.voxels[3], (volume.voxels[2] + volume.voxels[4]) / 2, atol=1e-3
    )
    assert_exact_values(volume, "ct_missing_slice")


def check_two_orientations(report: dict) -> None:
    shapes = [[2, 288, 288], [2, 288, 288]]
    spacings = [[3.3, 0.31999999284744, 0.31999999284744], [4.4, 0.5555555820465, 0.5555555820465]]
    assert report["shape"] == shapes[1]
    assert report["spacing_mm"] == pytest.approx(spacings[1], abs=TOLERANCE_MM)
    others = [entry for entry in report["dropped"] if "shape" in entry]
    assert len(others) == 1
    assert others[0]["shape"] == shapes[0]
    assert others[0]["spacing_mm"] == pytest.approx(spacings[0], abs=TOLERANCE_MM)
    assert "sagittal" in others[0]["reason"]


def check_4d_per_file(report: dict) -> None:
    assert report["shape"] == [6, 64, 64]
    assert report["spacing_mm"] == pytest.approx([2.4, 3.375, 3.375], abs=TOLERANCE_MM)
    assert report["dropped"][-1]["what"].startswith("time points 2-4 (18 frames")
    volume = read_series(REAL_ROOT / "mr_enhanced_siemens_xa10_4d")
    assert {uid for uid, _ in volume.frame_planes} == {
        h.sop_instance_uid
        for h in read_headers(REAL_ROOT / "mr_enhanced_siemens_xa10_4d")
        if h.name == "6_1.dcm"
    }


def check_4d_epi(report: dict) -> None:
    assert report["shape"] == [15, 64, 64]
    assert report["spacing_mm"] == pytest.approx([5.0, 3.75, 3.75], abs=TOLERANCE_MM)
    assert report["dropped"][-1]["what"].startswith("time points 2-10 (135 frames")


def check_not_a_volume(report: dict) -> None:
    assert "no volume" in report["reason"] or "no CT or MR image" in report["reason"]


def check_bolus_monitoring(report: dict) -> None:
    assert "4 images at one position" in report["reason"]


def check_mosaic(report: dict) -> None:
    assert "9 images at one position" in report["reason"]
    headers = read_headers(REAL_ROOT / "mr_mosaic_transfer_syntaxes")
    with FrameDecoder(series="mosaic") as decoder:
        arrays = [decoder.read_raw(header, 0).astype(np.int32) for header in headers]
    assert len({header.transfer_syntax_uid for header in headers}) == 7
    for header, array in zip(headers, arrays, strict=True):
        np.testing.assert_array_equal(array, arrays[0], err_msg=header.name)
    assert arrays[0].shape == (384, 384)
    assert int(arrays[0].max()) == 2362


def check_cr(report: dict) -> None:
    assert "no CT or MR image" in report["reason"]
    assert all("Modality CR" in entry["reason"] for entry in report["dropped"])


def check_tiny_mra(report: dict) -> None:
    reasons = [entry["reason"] for entry in report["dropped"]]
    assert sum(reason.startswith("2D projection") for reason in reasons) == 7
    assert sum(reason.startswith("one image") for reason in reasons) == 4


CASE_CHECKS = {
    "ct_head_ge_tilt_varspacing": check_ge_tilt_slabs,
    "ct_head_philips_phantom_mixed_folder": check_mixed_folder,
    "ct_tilt_4slices_no_tilt_tag": check_ct_tilt,
    "ct_missing_slice": check_missing_slice,
    "ct_same_position_bolus_monitoring": check_bolus_monitoring,
    "mr_two_orientations_same_series_uid": check_two_orientations,
    "mr_sag_uncompressed_reversed_instances": check_sagittal_reversed,
    "mr_sag_jpeg2000_lossless": check_sagittal_reversed,
    "mr_sag_jpeg_lossless_sv1": check_sagittal_reversed,
    "mr_sag_rle_lossless": check_sagittal_reversed,
    "mr_anisotropic_pixels_float_rescale": check_anisotropic,
    "mr_enhanced_philips_8frames": check_philips_enhanced,
    "mr_enhanced_siemens_xa10_4d": check_4d_per_file,
    "mr_epi_4d_repeated_positions_ge": check_4d_epi,
    "mr_mosaic_transfer_syntaxes": check_mosaic,
    "ct_enhanced_nema_2frames_flipped": check_derived_nema,
    "cr_monochrome1_jpeg2000_nema": check_cr,
    "tiny_mr_mra_study_no_volume": check_tiny_mra,
    "tiny_cr_monochrome1_rescale": check_cr,
}
SPECIAL_CASES = {
    "ct_head_ge_tilt_varspacing",
    "ct_tilt_4slices_no_tilt_tag",
    "ct_missing_slice",
    "mr_two_orientations_same_series_uid",
    "mr_enhanced_siemens_xa10_4d",
    "mr_epi_4d_repeated_positions_ge",
}


@pytest.mark.parametrize("case", sorted(SPECIAL_CASES))
def test_special_cases(case):
    # Each of these verdicts allows a volume (resampled, split or flagged) or a rejection.
    # The reader builds a volume and gives the reason in "reason" or "dropped".
    report = inspect_series(REAL_ROOT / case)

    assert report["verdict"] == "volume", report["reason"]
    CASE_CHECKS[case](report)


EXACT_CASES = [
    "ct_head_philips_phantom_mixed_folder",
    "mr_sag_uncompressed_reversed_instances",
    "mr_sag_jpeg2000_lossless",
    "mr_sag_jpeg_lossless_sv1",
    "mr_sag_rle_lossless",
    "mr_anisotropic_pixels_float_rescale",
    "mr_enhanced_philips_8frames",
    "mr_enhanced_siemens_xa10_4d",
    "ct_enhanced_nema_2frames_flipped",
]


@pytest.mark.parametrize("case", EXACT_CASES)
def test_decoded_values_match_pydicom(case):
    assert_exact_values(read_series(REAL_ROOT / case), case)


def test_compressed_sagittal_cases_identical():
    arrays = [
        read_series(REAL_ROOT / case).voxels
        for case in (
            "mr_sag_uncompressed_reversed_instances",
            "mr_sag_jpeg2000_lossless",
            "mr_sag_jpeg_lossless_sv1",
            "mr_sag_rle_lossless",
        )
    ]
    # The uncompressed copy contains different noise, but the three codecs contain the
    # same pixels.
    np.testing.assert_array_equal(arrays[1], arrays[2])
    np.testing.assert_array_equal(arrays[1], arrays[3])


def test_sagittal_order_by_position_not_instance_number():
    case = REAL_ROOT / "mr_sag_uncompressed_reversed_instances"
    volume = read_series(case)
    headers = {h.name: h for h in read_headers(case)}
    names = sorted(headers)
    voxels = [
        localizer_to_voxel(volume, sop_instance_uid=headers[name].sop_instance_uid, x=0, y=0)
        for name in names
    ]
    # IPP x of IM-0001..IM-0004 is -103.79, -102.79, -101.79, -100.79 mm, and canonical x
    # grows toward the patient's left (+x), although InstanceNumber runs the other way
    # along the slice normal (-x).
    assert [voxel[2] for voxel in voxels] == pytest.approx([0.0, 1.0, 2.0, 3.0])
    for name, voxel in zip(names, voxels, strict=True):
        first_pixel = pydicom.dcmread(headers[name].path).pixel_array[0, 0]
        assert volume.voxels[tuple(round(v) for v in voxel)] == first_pixel


def test_scan_series_matches_read_series():
    case = REAL_ROOT / "ct_head_philips_phantom_mixed_folder"
    summary = scan_series(case)

    assert summary.frame_count == 28
    assert (summary.rows, summary.columns) == (512, 512)
    assert summary.pixel_spacing_mm == pytest.approx((0.451171875, 0.451171875))
    assert summary.orientation == "axial"
    assert summary.file_count == 32
    assert summary.slice_spacing_mm == pytest.approx(5.0)
