"""Pixel decode and intensities of synthetic series: modality LUT, padding, photometry."""

import tracemalloc

import numpy as np
import pydicom
import pytest
from dicom_builders import (
    AXIAL,
    SAGITTAL,
    head_ct_values,
    write_enhanced,
    write_series,
)
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from rsna.dicom import SeriesError, localizer_to_voxel, read_series, scan_series


def reference_hu(path, slope: float, intercept: float) -> np.ndarray:
    """pydicom's pixel_array of one file after the modality LUT, computed in float32."""
    return pydicom.dcmread(path).pixel_array.astype(np.float32) * np.float32(slope) + np.float32(
        intercept
    )


def test_head_cta_stack(tmp_path):
    stored = head_ct_values((24, 32, 32))
    files = write_series(
        tmp_path,
        stored=stored,
        spacing_mm=(0.625, 0.45, 0.45),
        bits_stored=12,
        tags={"SeriesDescription": "CTA HEAD COW", "ContrastBolusAgent": "Omnipaque 350"},
    )
    volume = read_series(tmp_path)
    summary = scan_series(tmp_path)

    assert volume.modality == "CT"
    assert volume.voxels.dtype == np.float32
    assert volume.shape == (24, 32, 32)
    assert volume.spacing_mm == pytest.approx((0.625, 0.45, 0.45))
    np.testing.assert_array_equal(volume.voxels, stored.astype(np.float32) - 1024)
    assert volume.warnings == ()
    for k in (0, 11, 23):
        np.testing.assert_array_equal(volume.voxels[k], reference_hu(files.paths[k], 1.0, -1024.0))
    assert summary.subtype == "CTA"
    assert summary.subtype_basis == "ContrastBolusAgent 'Omnipaque 350'"


def test_tof_mra_stack(tmp_path):
    rng = np.random.default_rng(5)
    stored = rng.integers(0, 800, size=(40, 24, 24), dtype=np.uint16)
    write_series(
        tmp_path,
        stored=stored,
        modality="MR",
        spacing_mm=(0.5, 0.35, 0.35),
        rescale_slope=None,
        rescale_intercept=None,
        tags={
            "AngioFlag": "Y",
            "SequenceName": "*fl3d1r_t70",
            "ScanningSequence": "GR",
            "SeriesDescription": "TOF_3D_multi-slab",
            "MRAcquisitionType": "3D",
        },
    )
    volume = read_series(tmp_path)
    summary = scan_series(tmp_path)

    np.testing.assert_array_equal(volume.voxels, stored.astype(np.float32))
    assert volume.spacing_mm == pytest.approx((0.5, 0.35, 0.35))
    assert summary.subtype == "MRA"
    assert summary.subtype_basis == "AngioFlag Y"
    assert summary.orientation == "axial"


def test_ct_without_rescale_tags_gets_intercept(tmp_path):
    stored = head_ct_values((8, 32, 32))  # HU + 1024, air stored as 0
    write_series(tmp_path, stored=stored, rescale_slope=None, rescale_intercept=None)
    volume = read_series(tmp_path)

    np.testing.assert_array_equal(volume.voxels, stored.astype(np.float32) - 1024)
    assert any("no rescale tags" in w and "1024 subtracted" in w for w in volume.warnings)


def test_ct_signed_hu_without_rescale_tags_kept(tmp_path):
    stored = (head_ct_values((8, 32, 32)).astype(np.int16) - 1024).astype(np.int16)
    write_series(tmp_path, stored=stored, rescale_slope=None, rescale_intercept=None)
    volume = read_series(tmp_path)

    np.testing.assert_array_equal(volume.voxels, stored.astype(np.float32))
    assert any("stored values used as HU" in w for w in volume.warnings)


def test_ct_already_hu_with_wrong_intercept(tmp_path):
    stored = (head_ct_values((8, 32, 32)).astype(np.int16) - 1024).astype(np.int16)
    write_series(tmp_path, stored=stored, rescale_intercept=-1024.0)
    volume = read_series(tmp_path)

    np.testing.assert_array_equal(volume.voxels, stored.astype(np.float32))
    assert any("RescaleIntercept ignored" in w for w in volume.warnings)


def test_signed_12_bit_sign_extended(tmp_path):
    # Negative values stored with the bits above BitsStored cleared, as some writers do.
    values = np.array([-2048, -1024, -100, -1, 0, 1, 100, 2047], dtype=np.int16)
    plane = np.tile(values, (4, 1))
    stored = np.stack([plane] * 3)
    raw = (stored.astype(np.int32) & 0x0FFF).astype(np.uint16)
    files = write_series(
        tmp_path,
        stored=raw,
        modality="MR",
        bits_stored=12,
        rescale_slope=None,
        rescale_intercept=None,
        tags={"PixelRepresentation": 1},
    )
    volume = read_series(tmp_path)

    np.testing.assert_array_equal(volume.voxels, stored.astype(np.float32))
    np.testing.assert_array_equal(volume.voxels[0], reference_hu(files.paths[0], 1.0, 0.0))


def test_unsigned_12_bit_high_bits_masked(tmp_path):
    stored = np.full((3, 4, 4), 0xF123, dtype=np.uint16)
    write_series(
        tmp_path,
        stored=stored,
        modality="MR",
        bits_stored=12,
        rescale_slope=None,
        rescale_intercept=None,
    )
    volume = read_series(tmp_path)

    assert np.all(volume.voxels == 0x123)


def test_monochrome1_ct_mirrored(tmp_path):
    stored = head_ct_values((6, 16, 16))
    write_series(tmp_path, stored=stored, bits_stored=12, photometric="MONOCHROME1")
    volume = read_series(tmp_path)

    # 12-bit unsigned with intercept -1024 spans -1024..3071, so v becomes 2047 - v.
    np.testing.assert_array_equal(volume.voxels, 2047 - (stored.astype(np.float32) - 1024))
    assert any("MONOCHROME1" in w for w in volume.warnings)


def test_pixel_padding_value_set_to_air(tmp_path):
    stored = head_ct_values((6, 16, 16)).astype(np.int16) - 1024
    stored[:, :2, :] = -2000
    write_series(tmp_path, stored=stored, rescale_intercept=0.0, tags={"PixelPaddingValue": -2000})
    volume = read_series(tmp_path)

    assert np.all(volume.voxels[:, :2, :] == -1024)
    np.testing.assert_array_equal(volume.voxels[:, 2:, :], stored[:, 2:, :].astype(np.float32))


def test_per_slice_float_rescale(tmp_path):
    stored = np.full((3, 4, 4), 200, dtype=np.int16)
    slopes = [0.0010206557, 0.0029214132, 1.5]
    intercepts = [33.443825, 95.725945, -7.25]
    files = write_series(
        tmp_path,
        stored=stored,
        modality="MR",
        slice_tags=[
            {"RescaleSlope": s, "RescaleIntercept": i}
            for s, i in zip(slopes, intercepts, strict=True)
        ],
    )
    volume = read_series(tmp_path)

    for k in range(3):
        expected = np.float32(200) * np.float32(slopes[k]) + np.float32(intercepts[k])
        assert np.all(volume.voxels[k] == expected)
        pydicom_lut = pydicom.pixels.apply_modality_lut(
            pydicom.dcmread(files.paths[k]).pixel_array, pydicom.dcmread(files.paths[k])
        )
        np.testing.assert_allclose(volume.voxels[k], pydicom_lut, rtol=1e-6)


def test_rle_matches_uncompressed(tmp_path):
    stored = head_ct_values((5, 24, 20), seed=2)
    write_series(tmp_path / "native", stored=stored)
    write_series(tmp_path / "rle", stored=stored, transfer_syntax=RLELossless)
    native = read_series(tmp_path / "native")
    rle = read_series(tmp_path / "rle")

    np.testing.assert_array_equal(rle.voxels, native.voxels)
    assert rle.transfer_syntaxes == (RLELossless,)


def test_enhanced_multiframe_shuffled_frames(tmp_path):
    stored = np.stack([np.full((6, 5), 10 * (k + 1), dtype=np.uint16) for k in range(5)])
    order = [3, 0, 4, 1, 2]
    files = write_enhanced(
        tmp_path / "enhanced.dcm",
        stored=stored,
        orientation=SAGITTAL,
        spacing_mm=(1.5, 0.5, 0.5),
        frame_order=order,
        rescale_slope=2.0,
        rescale_intercept=-5.0,
    )
    volume = read_series(tmp_path)

    assert volume.acquired_shape == (5, 6, 5)
    assert volume.acquired_spacing_mm == pytest.approx((1.5, 0.5, 0.5))
    # Sagittal: slices along x; the normal (0,1,0) x (0,0,-1) points to the patient's right,
    # so canonical x (toward the left) runs against the slice order.
    assert volume.voxels[0, 0, :].tolist() == [95.0, 75.0, 55.0, 35.0, 15.0]
    frame_of_slice_2 = order.index(2)
    located = localizer_to_voxel(
        volume, sop_instance_uid=files.sop_instance_uids[0], x=0, y=0, frame=frame_of_slice_2
    )
    assert located[2] == pytest.approx(2.0)
    assert volume.voxels[tuple(round(v) for v in located)] == 55.0


def test_enhanced_per_frame_rescale(tmp_path):
    stored = np.full((4, 3, 3), 10, dtype=np.uint16)
    write_enhanced(
        tmp_path / "enhanced.dcm", stored=stored, orientation=AXIAL, per_frame_rescale=True
    )
    volume = read_series(tmp_path)

    # Frame f has slope 1 + f and intercept f (see write_enhanced).
    assert volume.voxels[:, 0, 0].tolist() == [10.0, 21.0, 32.0, 43.0]


def test_missing_decoder_names_transfer_syntax(tmp_path):
    files = write_series(tmp_path, stored=head_ct_values((3, 8, 8)))
    for path in files.paths:
        dataset = pydicom.dcmread(path)
        # MPEG2 video: a transfer syntax pydicom recognizes but cannot decode.
        dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        dataset.PixelData = encapsulate([dataset.PixelData])
        dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(
        SeriesError, match=r"no decoder for transfer syntax 1\.2\.840\.10008\.1\.2\.4\.100 \(MPEG2"
    ):
        read_series(tmp_path)


def test_varying_matrix_size_keeps_main_stack(tmp_path):
    write_series(tmp_path, stored=head_ct_values((20, 16, 16)), series_uid="1.2.3.4")
    write_series(
        tmp_path,
        stored=head_ct_values((2, 12, 16)),
        series_uid="1.2.3.4",
        first_position_mm=(-10.0, -20.0, 40.0),
    )
    write_series(
        tmp_path,
        stored=head_ct_values((1, 8, 8)),
        series_uid="1.2.3.4",
        orientation=SAGITTAL,
    )
    volume = read_series(tmp_path)

    assert volume.acquired_shape == (20, 16, 16)
    reasons = [entry["reason"] for entry in volume.dropped]
    assert any(
        r.startswith("another stack in the folder (axial, 2 slices, 12 x 16") for r in reasons
    )
    assert any(r.startswith("one image") for r in reasons)


def test_memory_growth_bounded(tmp_path):
    stored = head_ct_values((40, 128, 128))
    write_series(tmp_path, stored=stored)
    int16_bytes = stored.size * 2

    tracemalloc.start()
    volume = read_series(tmp_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert volume.voxels.nbytes == 2 * int16_bytes
    assert peak <= 3 * int16_bytes


def test_truncated_file_raises_series_error(tmp_path):
    files = write_series(tmp_path, stored=head_ct_values((3, 16, 16)))
    data = files.paths[1].read_bytes()
    files.paths[1].write_bytes(data[:-100])

    with pytest.raises(
        SeriesError, match=r"decoding frame 0 of file .* failed: expected 512 bytes"
    ):
        read_series(tmp_path)


def test_rle_enhanced_matches_uncompressed(tmp_path):
    stored = head_ct_values((6, 20, 18), seed=4)
    order = [5, 2, 0, 4, 1, 3]
    write_enhanced(tmp_path / "native" / "one.dcm", stored=stored, frame_order=order)
    write_enhanced(
        tmp_path / "rle" / "one.dcm", stored=stored, frame_order=order, transfer_syntax=RLELossless
    )
    native = read_series(tmp_path / "native")
    rle = read_series(tmp_path / "rle")

    np.testing.assert_array_equal(native.voxels, stored.astype(np.float32))
    np.testing.assert_array_equal(rle.voxels, native.voxels)
