"""Array transforms that turn a decoded volume into a training-ready one.

Every function takes and returns arrays of axis order ``(z, y, x)`` with spacings
``(z, y, x)`` in millimetres. Intensities stay in float32 until the final cast to
float16, so no transform creates a float64 copy of a volume.

Voxel coordinates follow the half-voxel convention of
``torch.nn.functional.interpolate(..., align_corners=False)``: index ``i`` is the centre of
a voxel that spans ``[i - 0.5, i + 0.5]``. The first voxel edges of the source and of the
resampled volume therefore coincide in millimetres, and so do the last ones when the
extent divides evenly.
"""

import math
from collections.abc import Sequence

import numpy as np
import torch

Triple = tuple[float, float, float]
Shape3 = tuple[int, int, int]


class TransformError(ValueError):
    """A volume or setting that a transform cannot handle."""


def resampled_shape(
    shape: Sequence[int], *, spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> Shape3:
    """Return the ``(z, y, x)`` shape :func:`resample_trilinear` gives for these spacings.

    Each axis keeps ``floor(size * spacing / target_spacing)`` voxels, the rule of
    ``torch.nn.functional.interpolate`` with ``recompute_scale_factor=False``, so the output
    never reaches past the source field of view. Raises :class:`TransformError` when an
    axis would have no voxel.
    """
    scales = _scale_factors(spacing_mm, target_spacing_mm)
    result = tuple(math.floor(size * scale) for size, scale in zip(shape, scales, strict=True))
    if min(result) < 1:
        raise TransformError(
            f"volume of shape {tuple(shape)} at spacing {tuple(spacing_mm)} mm is smaller than one "
            f"voxel of the target spacing {tuple(target_spacing_mm)} mm along an axis; "
            "use a finer preprocess.spacing_mm or drop this series"
        )
    return result


def resample_trilinear(
    voxels: np.ndarray, *, spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> np.ndarray:
    """Resample a float32 ``(z, y, x)`` volume to ``target_spacing_mm`` by trilinear interpolation.

    Output voxel ``i`` samples source coordinate ``(i + 0.5) * target / spacing - 0.5`` along
    each axis (see :func:`resampled_coordinates`), with source values clamped at the edges.
    The output shape is :func:`resampled_shape`. The work is one
    ``torch.nn.functional.interpolate`` call on a view of ``voxels`` (no copy of the input)
    on ``torch.get_num_threads()`` threads. Each output voxel is computed independently, so
    the result does not depend on the thread count.

    NOTE: there is no low-pass filter before downsampling, as in MONAI's ``Spacing``:
    structures thinner than the target spacing can be attenuated.
    """
    if voxels.ndim != 3 or voxels.dtype != np.float32:
        raise TransformError(
            f"expected a float32 (z, y, x) volume, got {voxels.dtype} of shape {voxels.shape}"
        )
    resampled_shape(voxels.shape, spacing_mm=spacing_mm, target_spacing_mm=target_spacing_mm)
    scales = _scale_factors(spacing_mm, target_spacing_mm)

    # torch.from_numpy shares memory but rejects negative strides (flipped views).
    if any(stride < 0 for stride in voxels.strides):
        voxels = np.ascontiguousarray(voxels)
    tensor = torch.from_numpy(voxels)[None, None]
    with torch.inference_mode():
        result = torch.nn.functional.interpolate(
            tensor,
            scale_factor=scales,
            mode="trilinear",
            align_corners=False,
            recompute_scale_factor=False,
        )
    return result[0, 0].numpy()


def resampled_coordinates(
    points_zyx: np.ndarray, *, spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> np.ndarray:
    """Map ``(N, 3)`` voxel coordinates ``(z, y, x)`` of the source to the resampled volume.

    The inverse of the sampling rule of :func:`resample_trilinear`:
    ``c_out = (c_in + 0.5) * spacing / target_spacing - 0.5``. Returns float64 ``(N, 3)``.
    """
    points = np.asarray(points_zyx, dtype=np.float64).reshape(-1, 3)
    ratio = np.divide(spacing_mm, target_spacing_mm, dtype=np.float64)
    return (points + 0.5) * ratio - 0.5


def centre_crop_or_pad_window(
    shape: Sequence[int], target_shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...], tuple[int, int, int]]:
    """Return where a centred crop or pad of ``shape`` to ``target_shape`` takes and puts voxels.

    Returns ``(source_window, target_window, offset_zyx)``: ``target[target_window] =
    source[source_window]``, and a source index ``i`` lands at ``i + offset`` along each axis.
    An axis longer than the target loses ``(size - target) // 2`` voxels at the start and
    the rest at the end. A shorter axis gets ``(target - size) // 2`` voxels of padding at
    the start and the rest at the end.
    """
    source_window, target_window, offset = [], [], []
    for size, target in zip(shape, target_shape, strict=True):
        if size >= target:
            start = (size - target) // 2
            source_window.append(slice(start, start + target))
            target_window.append(slice(0, target))
            offset.append(-start)
        else:
            start = (target - size) // 2
            source_window.append(slice(0, size))
            target_window.append(slice(start, start + size))
            offset.append(start)
    return tuple(source_window), tuple(target_window), tuple(offset)


def centre_crop_or_pad(
    volume: np.ndarray, *, target_shape: Sequence[int], fill_value: float = 0.0, dtype=None
) -> np.ndarray:
    """Crop or pad ``volume`` to ``target_shape`` around its centre (see the window above).

    Padding takes ``fill_value``; the result has ``dtype`` (default: the input's).
    """
    source_window, target_window, _ = centre_crop_or_pad_window(volume.shape, target_shape)
    result = np.full(tuple(target_shape), fill_value, dtype=dtype or volume.dtype)
    result[target_window] = volume[source_window]
    return result


def apply_ct_window(hu: np.ndarray, *, window_hu: Sequence[float]) -> np.ndarray:
    """Map Hounsfield units to [0, 1]: ``lower`` -> 0, ``upper`` -> 1, clipped outside.

    ``window_hu`` is ``(lower, upper)``. Works in place on a float32 array and returns it.
    This is a linear VOI transform in the sense of DICOM PS3.3 C.11.2, with the window
    given by its bounds instead of its centre and width.
    """
    lower, upper = _checked_range(window_hu, name="CT window in HU")
    _check_float32(hu)
    hu -= np.float32(lower)
    hu /= np.float32(upper - lower)
    np.clip(hu, 0.0, 1.0, out=hu)
    return hu


def apply_percentile_scaling(
    values: np.ndarray, *, percentiles: Sequence[float]
) -> tuple[np.ndarray, tuple[float, float]]:
    """Map the ``(low, high)`` percentiles of ``values`` to 0 and 1, clipped outside.

    ``percentiles`` are in percent, ``0 <= low < high <= 100``, computed over all voxels
    with linear interpolation (``numpy.percentile``'s default). Works in place on a float32
    array. Returns the array and the intensities found at the two percentiles. A volume
    whose two percentiles are equal becomes all zeros.
    """
    low, high = _checked_range(percentiles, name="MR percentiles")
    if low < 0.0 or high > 100.0:
        raise TransformError(f"MR percentiles {tuple(percentiles)} must lie in [0, 100]")
    _check_float32(values)

    lower, upper = (float(v) for v in np.percentile(values, [low, high]))
    if upper <= lower:
        values.fill(0.0)
        return values, (lower, upper)

    values -= np.float32(lower)
    values /= np.float32(upper - lower)
    np.clip(values, 0.0, 1.0, out=values)
    return values, (lower, upper)


def _scale_factors(spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]) -> Triple:
    if len(spacing_mm) != 3 or len(target_spacing_mm) != 3:
        raise TransformError(
            f"spacings must have three values (z, y, x), got {tuple(spacing_mm)} and "
            f"{tuple(target_spacing_mm)}"
        )
    if min(spacing_mm) <= 0 or min(target_spacing_mm) <= 0:
        raise TransformError(
            f"spacings must be positive, got {tuple(spacing_mm)} and {tuple(target_spacing_mm)} mm"
        )
    return tuple(float(s) / float(t) for s, t in zip(spacing_mm, target_spacing_mm, strict=True))


def _checked_range(bounds: Sequence[float], *, name: str) -> tuple[float, float]:
    if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
        raise TransformError(f"{name} must be [lower, upper], lower < upper; got {tuple(bounds)}")
    return float(bounds[0]), float(bounds[1])


def _check_float32(values: np.ndarray) -> None:
    if values.dtype != np.float32:
        raise TransformError(f"expected float32 intensities, got {values.dtype}")
