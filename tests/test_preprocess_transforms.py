"""Array transforms of the preprocessing step, on tiny arrays with exact expected values."""

import numpy as np
import pytest
import torch

from rsna.preprocess.transforms import (
    TransformError,
    apply_ct_window,
    apply_percentile_scaling,
    centre_crop_or_pad,
    centre_crop_or_pad_window,
    resample_trilinear,
    resampled_coordinates,
    resampled_shape,
)


def test_ct_window_maps_bounds_and_clips():
    hu = np.array([-1000.0, -100.0, 250.0, 600.0, 3000.0], dtype=np.float32)

    result = apply_ct_window(hu, window_hu=(-100.0, 600.0))

    assert result.dtype == np.float32
    assert result.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_ct_window_rejects_empty_window():
    with pytest.raises(TransformError, match=r"lower < upper; got \(600.0, -100.0\)"):
        apply_ct_window(np.zeros(3, np.float32), window_hu=(600.0, -100.0))


def test_ct_window_rejects_float64():
    with pytest.raises(TransformError, match="expected float32 intensities, got float64"):
        apply_ct_window(np.zeros(3), window_hu=(0.0, 1.0))


def test_percentile_scaling_exact():
    # 0..100: the 10th percentile is 10 and the 90th is 90 with linear interpolation.
    values = np.arange(101, dtype=np.float32)

    result, (lower, upper) = apply_percentile_scaling(values, percentiles=(10.0, 90.0))

    assert (lower, upper) == (10.0, 90.0)
    assert result[0] == 0.0
    assert result[10] == 0.0
    assert result[50] == 0.5
    assert result[90] == 1.0
    assert result[100] == 1.0


def test_percentile_scaling_constant_volume_gives_zeros():
    values = np.full((2, 3, 4), 7.0, dtype=np.float32)

    result, (lower, upper) = apply_percentile_scaling(values, percentiles=(1.0, 99.0))

    assert (lower, upper) == (7.0, 7.0)
    assert not result.any()


def test_percentile_scaling_rejects_out_of_range():
    with pytest.raises(TransformError, match=r"must lie in \[0, 100\]"):
        apply_percentile_scaling(np.zeros(3, np.float32), percentiles=(1.0, 101.0))


@pytest.mark.parametrize(
    ("shape", "target", "source_window", "target_window", "offset"),
    [
        # Crop 7 -> 4 drops 1 at the start and 2 at the end.
        ((7,), (4,), (slice(1, 5),), (slice(0, 4),), (-1,)),
        # Pad 3 -> 6 puts 1 voxel before and 2 after.
        ((3,), (6,), (slice(0, 3),), (slice(1, 4),), (1,)),
        ((5,), (5,), (slice(0, 5),), (slice(0, 5),), (0,)),
    ],
)
def test_crop_or_pad_window(shape, target, source_window, target_window, offset):
    assert centre_crop_or_pad_window(shape, target) == (source_window, target_window, offset)


def test_crop_or_pad_centres_each_axis():
    volume = np.arange(7 * 3 * 4, dtype=np.float32).reshape(7, 3, 4)

    result = centre_crop_or_pad(volume, target_shape=(4, 6, 4), fill_value=-1.0)

    assert result.shape == (4, 6, 4)
    np.testing.assert_array_equal(result[:, 1:4, :], volume[1:5])
    assert (result[:, 0, :] == -1.0).all()
    assert (result[:, 4:, :] == -1.0).all()


@pytest.mark.parametrize(
    ("shape", "spacing_mm", "target_spacing_mm", "expected"),
    [
        ((300, 512, 512), (0.5, 0.45, 0.45), (2.0, 2.0, 2.0), (75, 115, 115)),
        ((40, 20, 20), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), (80, 40, 40)),
        ((7, 9, 11), (2.0, 1.0, 1.0), (2.0, 2.0, 2.0), (7, 4, 5)),
    ],
)
def test_resampled_shape(shape, spacing_mm, target_spacing_mm, expected):
    computed = resampled_shape(shape, spacing_mm=spacing_mm, target_spacing_mm=target_spacing_mm)
    voxels = np.zeros(shape, dtype=np.float32)
    resampled = resample_trilinear(
        voxels, spacing_mm=spacing_mm, target_spacing_mm=target_spacing_mm
    )

    assert computed == expected
    assert resampled.shape == expected
    assert resampled.dtype == np.float32


def test_resample_halving_averages_neighbours():
    # Spacing 1 -> 2 mm along z: output slice k samples source coordinate 2k + 0.5.
    voxels = np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None], (6, 2, 2)).copy()

    result = resample_trilinear(
        voxels, spacing_mm=(1.0, 1.0, 1.0), target_spacing_mm=(2.0, 1.0, 1.0)
    )

    np.testing.assert_array_equal(result[:, 0, 0], [0.5, 2.5, 4.5])


def test_resample_identity_spacing_is_exact():
    voxels = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)

    result = resample_trilinear(
        voxels, spacing_mm=(1.5, 0.7, 0.7), target_spacing_mm=(1.5, 0.7, 0.7)
    )

    np.testing.assert_array_equal(result, voxels)


def test_resample_accepts_flipped_view():
    voxels = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2)

    result = resample_trilinear(
        voxels[::-1], spacing_mm=(1.0, 1.0, 1.0), target_spacing_mm=(2.0, 1.0, 1.0)
    )

    np.testing.assert_array_equal(result[:, 0, 0], [10.0, 2.0])


def test_resample_same_result_with_two_threads():
    voxels = np.random.default_rng(1).normal(size=(30, 40, 50)).astype(np.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = resample_trilinear(
            voxels, spacing_mm=(0.7, 0.5, 0.5), target_spacing_mm=(2.0, 2.0, 2.0)
        )
        torch.set_num_threads(2)
        two = resample_trilinear(
            voxels, spacing_mm=(0.7, 0.5, 0.5), target_spacing_mm=(2.0, 2.0, 2.0)
        )
    finally:
        torch.set_num_threads(before)

    assert one.tobytes() == two.tobytes()


def test_resample_rejects_volume_below_one_target_voxel():
    with pytest.raises(TransformError, match="smaller than one voxel of the target spacing"):
        resample_trilinear(
            np.zeros((1, 8, 8), np.float32),
            spacing_mm=(1.0, 1.0, 1.0),
            target_spacing_mm=(2.0, 1.0, 1.0),
        )


def test_resample_rejects_int16():
    with pytest.raises(TransformError, match="expected a float32"):
        resample_trilinear(
            np.zeros((2, 2, 2), np.int16), spacing_mm=(1, 1, 1), target_spacing_mm=(1, 1, 1)
        )


def test_resampled_coordinates_follow_sampling_rule():
    # A bright voxel at source z = 4 (spacing 1 mm) lands at z = 1.75 at 2 mm spacing, and
    # the resampled intensity peaks at the two neighbours of 1.75 (1 and 2).
    point = resampled_coordinates(
        [[4.0, 1.0, 3.0]], spacing_mm=(1.0, 0.5, 1.0), target_spacing_mm=(2.0, 1.0, 1.0)
    )

    np.testing.assert_allclose(point, [[1.75, 0.25, 3.0]], rtol=0, atol=1e-12)
