"""Slice ordering, spacing, resampling and orientation of synthetic series."""

import numpy as np
import pytest
from dicom_builders import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    pixel_position,
    slice_normal,
    write_series,
)

from rsna.dicom import SeriesError, localizer_to_voxel, read_series

ROWS, COLUMNS = 12, 10


def constant_slices(values: list[int], *, rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    """Return stored values (slices, rows, columns) with values[k] everywhere in slice k."""
    return np.stack([np.full((rows, columns), value, dtype=np.int16) for value in values])


def write_mr(folder, stored, **kwargs):
    kwargs.setdefault("rescale_slope", None)
    kwargs.setdefault("rescale_intercept", None)
    return write_series(folder, stored=stored, modality="MR", **kwargs)


def test_shuffled_names_sorted_by_position(tmp_path):
    offsets = [0.0, 1.25, 2.5, 3.75, 5.0, 6.25, 7.5]
    values = [100 + k for k in range(len(offsets))]
    rng = np.random.default_rng(3)
    permutation = rng.permutation(len(offsets))
    names = [f"{name:03d}.dcm" for name in rng.permutation(len(offsets))]
    instance_numbers = [int(p) + 1 for p in permutation]

    write_mr(
        tmp_path,
        constant_slices(values),
        spacing_mm=(1.25, 0.8, 0.6),
        offsets_mm=offsets,
        file_names=names,
        instance_numbers=instance_numbers,
    )
    volume = read_series(tmp_path)

    assert volume.acquired_shape == (7, ROWS, COLUMNS)
    assert volume.spacing_mm == pytest.approx((1.25, 0.8, 0.6), abs=1e-9)
    assert volume.voxels[:, 0, 0].tolist() == values
    assert volume.reason is None


def test_negative_spacing_between_slices(tmp_path):
    # Positions decrease with InstanceNumber and the tag is negative; neither matters.
    offsets = [4.5, 3.0, 1.5, 0.0]
    write_mr(
        tmp_path,
        constant_slices([40, 30, 20, 10]),
        spacing_mm=(1.5, 0.5, 0.5),
        offsets_mm=offsets,
        tags={"SpacingBetweenSlices": -1.5},
    )
    volume = read_series(tmp_path)

    assert volume.spacing_mm[0] == pytest.approx(1.5, abs=1e-9)
    assert volume.voxels[:, 0, 0].tolist() == [10, 20, 30, 40]
    assert not any("SpacingBetweenSlices" in warning for warning in volume.warnings)


def test_spacing_tag_mismatch_warns(tmp_path):
    write_mr(
        tmp_path,
        constant_slices([1, 2, 3]),
        spacing_mm=(2.0, 0.5, 0.5),
        tags={"SpacingBetweenSlices": 5.0},
    )
    volume = read_series(tmp_path)

    assert volume.spacing_mm[0] == pytest.approx(2.0)
    assert any("SpacingBetweenSlices 5" in warning for warning in volume.warnings)


def test_one_missing_slice_interpolated(tmp_path):
    files = write_mr(
        tmp_path, constant_slices([10, 20, 30, 50, 60]), offsets_mm=[0.0, 2.0, 4.0, 8.0, 10.0]
    )
    volume = read_series(tmp_path)

    assert volume.acquired_shape == (6, ROWS, COLUMNS)
    assert volume.spacing_mm[0] == pytest.approx(2.0, abs=1e-9)
    assert volume.voxels[:, 0, 0].tolist() == [10, 20, 30, 40, 50, 60]
    assert "1 missing slice" in volume.reason
    assert "linear interpolation" in volume.reason
    after_gap = localizer_to_voxel(volume, sop_instance_uid=files.sop_instance_uids[3], x=0, y=0)
    assert after_gap == pytest.approx((4.0, 0.0, 0.0), abs=1e-6)


def test_two_slabs_resampled_at_smallest_gap(tmp_path):
    offsets = [0.0, 1.0, 2.0, 3.0, 6.0, 9.0, 12.0]
    write_mr(tmp_path, constant_slices([0, 1, 2, 3, 6, 9, 12]), offsets_mm=offsets)
    volume = read_series(tmp_path)

    assert volume.acquired_shape[0] == 13
    assert volume.spacing_mm[0] == pytest.approx(1.0, abs=1e-9)
    assert volume.voxels[:, 0, 0] == pytest.approx(np.arange(13.0), abs=1e-5)
    assert "slabs of different spacing" in volume.reason


def test_hole_of_several_slices_rejected(tmp_path):
    write_mr(tmp_path, constant_slices([1, 2, 3, 4, 5]), offsets_mm=[0.0, 1.0, 2.0, 6.0, 7.0])
    with pytest.raises(SeriesError, match=r"about 3 missing slices, too many to interpolate"):
        read_series(tmp_path)


def test_repeated_positions_rejected(tmp_path):
    write_mr(tmp_path, constant_slices([1, 2, 3, 4, 5]), offsets_mm=[0.0, 1.0, 1.0, 2.0, 3.0])
    with pytest.raises(SeriesError, match=r"repeated slice positions: 1 of 4 positions"):
        read_series(tmp_path)


def test_all_at_one_position_rejected(tmp_path):
    write_mr(tmp_path, constant_slices([1, 2, 3]), offsets_mm=[5.0, 5.0, 5.0])
    with pytest.raises(SeriesError, match=r"3 images at one position"):
        read_series(tmp_path)


def test_4d_series_keeps_first_time_point(tmp_path):
    # Two time points of four positions, InstanceNumber time-major as GE writes them.
    offsets = [0.0, 3.0, 6.0, 9.0] * 2
    values = [1, 2, 3, 4, 101, 102, 103, 104]
    write_mr(
        tmp_path,
        constant_slices(values),
        offsets_mm=offsets,
        instance_numbers=list(range(1, 9)),
    )
    volume = read_series(tmp_path)

    assert volume.acquired_shape == (4, ROWS, COLUMNS)
    assert volume.spacing_mm[0] == pytest.approx(3.0)
    assert volume.voxels[:, 0, 0].tolist() == [1, 2, 3, 4]
    assert "4D series" in volume.dropped[-1]["reason"]
    assert volume.dropped[-1]["what"].startswith("time points 2-2 (4 frames")


def test_gantry_shear_removed(tmp_path):
    # Each slice origin moves 1 row (0.5 mm) along y: a bright point fixed in patient space
    # sits one row higher in every following slice, and must line up after de-shearing.
    stored = np.zeros((5, ROWS, COLUMNS), dtype=np.int16)
    for k in range(5):
        stored[k, 8 - k, 4] = 1000
    write_mr(tmp_path, stored, spacing_mm=(2.0, 0.5, 0.5), shear_mm=(0.0, 0.5, 0.0))
    volume = read_series(tmp_path)

    assert volume.acquired_shape == (5, ROWS, COLUMNS)
    assert volume.spacing_mm == pytest.approx((2.0, 0.5, 0.5))
    assert "gantry tilt" in volume.reason
    assert volume.voxels[:, 8, 4].tolist() == [1000] * 5
    assert volume.voxels.sum() == pytest.approx(5000)


ORIENTATIONS = {
    "axial": AXIAL,
    "axial_feet_first": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    "coronal": CORONAL,
    "sagittal": SAGITTAL,
    "sagittal_flipped": (0.0, -1.0, 0.0, 0.0, 0.0, -1.0),
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_canonical_orientation_bright_voxel(tmp_path, name):
    orientation = ORIENTATIONS[name]
    spacing = (2.0, 0.75, 0.5)
    first_position = (10.0, -20.0, 30.0)
    shape = (6, 9, 7)
    bright = (4, 2, 5)  # acquired (slice, row, column)
    stored = np.zeros(shape, dtype=np.int16)
    stored[bright] = 900

    files = write_mr(
        tmp_path,
        stored,
        orientation=orientation,
        spacing_mm=spacing,
        first_position_mm=first_position,
    )
    volume = read_series(tmp_path)

    slice_position = np.asarray(first_position) + bright[0] * spacing[0] * slice_normal(orientation)
    patient = pixel_position(
        slice_position, orientation, spacing[1:], row=bright[1], column=bright[2]
    )
    corners = np.array(files.positions_mm)
    for row in (0, shape[1] - 1):
        for column in (0, shape[2] - 1):
            corners = np.vstack(
                [
                    corners,
                    [
                        pixel_position(p, orientation, spacing[1:], row=row, column=column)
                        for p in files.positions_mm
                    ],
                ]
            )
    low_zyx = corners.min(axis=0)[::-1]
    canonical_spacing = np.array(volume.spacing_mm)
    expected = tuple(round(v) for v in (patient[::-1] - low_zyx) / canonical_spacing)

    assert np.unravel_index(np.argmax(volume.voxels), volume.shape) == expected
    assert volume.voxels[expected] == 900
    np.testing.assert_allclose(volume.direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(volume.origin_mm, low_zyx, atol=1e-9)
    np.testing.assert_allclose(volume.voxel_to_patient(expected), patient, atol=1e-9)
    located = localizer_to_voxel(
        volume, sop_instance_uid=files.sop_instance_uids[bright[0]], x=bright[2], y=bright[1]
    )
    assert located == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("name", "canonical_shape"),
    [("axial", (6, 9, 7)), ("coronal", (9, 6, 7)), ("sagittal", (9, 7, 6))],
)
def test_canonical_shape_and_spacing(tmp_path, name, canonical_shape):
    write_mr(
        tmp_path,
        np.ones((6, 9, 7), dtype=np.int16),
        orientation=ORIENTATIONS[name],
        spacing_mm=(2.0, 0.75, 0.5),
    )
    volume = read_series(tmp_path)
    expected_spacing = {
        "axial": (2.0, 0.75, 0.5),
        "coronal": (0.75, 2.0, 0.5),
        "sagittal": (0.75, 0.5, 2.0),
    }[name]

    assert volume.acquired_shape == (6, 9, 7)
    assert volume.shape == canonical_shape
    assert volume.spacing_mm == pytest.approx(expected_spacing)


def test_oblique_resampled_to_lps_grid(tmp_path):
    angle = np.radians(30.0)
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(angle), -np.sin(angle))
    stored = np.zeros((8, 16, 16), dtype=np.int16)
    stored[4, 8, 8] = 1000
    files = write_mr(tmp_path, stored, orientation=orientation, spacing_mm=(1.0, 1.0, 1.0))
    volume = read_series(tmp_path)

    assert "oblique acquisition (30.0 deg" in volume.reason
    np.testing.assert_allclose(volume.direction, np.eye(3))
    located = localizer_to_voxel(volume, sop_instance_uid=files.sop_instance_uids[4], x=8, y=8)
    nearest = tuple(round(v) for v in located)
    assert np.unravel_index(np.argmax(volume.voxels), volume.shape) == nearest


def test_slightly_oblique_keeps_rotation_in_direction(tmp_path):
    angle = np.radians(5.0)
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(angle), -np.sin(angle))
    write_mr(tmp_path, np.ones((4, 8, 8), dtype=np.int16), orientation=orientation)
    volume = read_series(tmp_path)

    assert volume.reason is None
    assert volume.shape == (4, 8, 8)
    assert volume.direction[0] == pytest.approx([np.cos(angle), np.sin(angle), 0.0])
