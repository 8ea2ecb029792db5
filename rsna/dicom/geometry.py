"""Slice ordering, z spacing and gantry-tilt geometry of one stack of parallel slices.

Slices are sorted by ImagePositionPatient projected on the slice normal n = row cosine x
column cosine (DICOM PS3.3 C.7.6.2.1.1). The z spacing comes from those projections;
SliceThickness and SpacingBetweenSlices serve only as cross-checks. The tolerances below
are relative to the slice gap with an absolute floor, because IPP values are often
rounded to 0.01 mm.
"""

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

# Two frames closer than this along the normal are at the same position. Real slice
# increments are at least 0.1 mm; rounding of IPP to 0.01 mm stays well below.
DUPLICATE_POSITION_MM = 0.05
# A stack is uniform when every slice lies within this fraction of the mean gap (or the
# absolute floor, whichever is larger) of a uniform grid from the first to the last slice.
UNIFORM_RTOL = 0.05
UNIFORM_ATOL_MM = 0.02
# Two gaps are equal within this tolerance when grouping gaps into slabs.
GAP_RTOL = 0.05
GAP_ATOL_MM = 0.02
# A gap longer than this many times the longer of its two neighbouring gaps is a hole of
# more than one missing slice: resampling would invent anatomy, so the stack is rejected.
MAX_HOLE_RATIO = 2.0 * (1.0 + GAP_RTOL)
# Resampling never makes more than this many times the acquired number of slices, so a
# tiny overlap at a slab junction cannot blow up memory.
MAX_RESAMPLED_SLICE_FACTOR = 4
# In-plane shifts of slice origins below this many pixels are rounding, not shear.
SHEAR_TOLERANCE_PIXELS = 0.05


class StackRejectedError(Exception):
    """A group of frames that cannot form a volume. The message gives the reason."""


@dataclass(frozen=True)
class SliceAxes:
    """Orthonormal slice axes in LPS patient (x, y, z) components.

    ``row`` is the direction of increasing column index, ``column`` the direction of
    increasing row index (ImageOrientationPatient order), ``normal`` their cross product.
    """

    row: np.ndarray
    column: np.ndarray
    normal: np.ndarray


@dataclass(frozen=True)
class ZGrid:
    """Acquired slice positions along the normal and, if needed, the uniform target grid.

    ``positions_mm`` are the sorted acquired projections. ``target_mm`` is None when they
    are already uniform; otherwise it contains the uniform positions to interpolate to.
    ``spacing_mm`` is the z spacing of the result, ``reason`` what was resampled and why.
    """

    positions_mm: np.ndarray
    target_mm: np.ndarray | None
    spacing_mm: float
    reason: str | None

    @property
    def output_count(self) -> int:
        """Number of slices after resampling (or as acquired)."""
        return len(self.positions_mm if self.target_mm is None else self.target_mm)


def slice_axes(orientation: tuple[float, ...]) -> SliceAxes:
    """Return orthonormal axes from ImageOrientationPatient (6 values)."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    row /= np.linalg.norm(row)
    column = np.asarray(orientation[3:], dtype=np.float64)
    column -= (column @ row) * row
    column /= np.linalg.norm(column)
    normal = np.cross(row, column)
    return SliceAxes(row=row, column=column, normal=normal)


def summarize_gaps(gaps: np.ndarray) -> str:
    """Return gaps as "13 x 4.002, 1 x 1.081 mm", in order of first appearance."""
    clusters: list[list[float]] = []
    for gap in gaps:
        for cluster in clusters:
            if gaps_equal(cluster[0], gap):
                cluster.append(float(gap))
                break
        else:
            clusters.append([float(gap)])
    parts = [f"{len(cluster)} x {np.mean(cluster):.4g}" for cluster in clusters]
    return ", ".join(parts) + " mm"


def gaps_equal(first: float, second: float) -> bool:
    """Return whether two slice gaps are equal within GAP_RTOL or GAP_ATOL_MM."""
    return abs(first - second) <= max(GAP_RTOL * max(abs(first), abs(second)), GAP_ATOL_MM)


def is_uniform(positions: np.ndarray) -> bool:
    """Return whether sorted positions lie on a uniform grid within the tolerance."""
    count = len(positions)
    if count < 3:
        return True
    step = (positions[-1] - positions[0]) / (count - 1)
    grid = positions[0] + step * np.arange(count)
    deviation = float(np.max(np.abs(positions - grid)))
    return deviation <= max(UNIFORM_RTOL * step, UNIFORM_ATOL_MM)


def plan_z_grid(positions: np.ndarray) -> ZGrid:
    """Return the z grid of sorted, distinct positions; raise StackRejectedError if unsafe.

    Uniform positions keep their mean gap. Otherwise the stack is resampled to a uniform
    grid from the first to the last slice at the smallest real gap (a gap that occurs at
    least twice, or the smallest gap when none repeats), by linear interpolation along z.
    That is safe for one missing slice or for slabs of different spacing; a hole of more
    than one missing slice is rejected.
    """
    count = len(positions)
    extent = float(positions[-1] - positions[0])
    if is_uniform(positions):
        return ZGrid(positions, None, extent / (count - 1), None)

    gaps = np.diff(positions)
    _reject_holes(gaps)
    step, limited = _resampling_step(gaps, extent, count)
    output_count = round(extent / step) + 1
    spacing = extent / (output_count - 1)
    target = positions[0] + spacing * np.arange(output_count)
    reason = (
        f"z spacing made uniform: gaps along the slice normal were {summarize_gaps(gaps)} "
        f"({_describe_unevenness(gaps)}); {count} slices resampled to {output_count} at "
        f"{spacing:.4f} mm by linear interpolation along z"
    )
    if limited:
        reason += (
            f" (the smallest gap would give more than {MAX_RESAMPLED_SLICE_FACTOR} times the "
            "acquired slice count, so the spacing was coarsened)"
        )
    return ZGrid(positions, target, spacing, reason)


def _reject_holes(gaps: np.ndarray) -> None:
    for index, gap in enumerate(gaps):
        neighbours = [gaps[j] for j in (index - 1, index + 1) if 0 <= j < len(gaps)]
        if not neighbours:
            continue
        local = max(neighbours)
        if gap > MAX_HOLE_RATIO * local:
            missing = round(gap / local) - 1
            raise StackRejectedError(
                f"a gap of {gap:.4g} mm between slices {index} and {index + 1} (sorted along "
                f"the normal) where the neighbouring gaps are {local:.4g} mm: about "
                f"{missing} missing slices, too many to interpolate (gaps: "
                f"{summarize_gaps(gaps)}). Add the missing files or exclude the series"
            )


def _resampling_step(gaps: np.ndarray, extent: float, count: int) -> tuple[float, bool]:
    counts = Counter()
    for gap in gaps:
        counts[float(gap)] = sum(1 for other in gaps if gaps_equal(gap, other))
    repeated = [gap for gap, seen in counts.items() if seen >= 2]
    step = min(repeated) if repeated else float(np.min(gaps))
    floor = extent / (MAX_RESAMPLED_SLICE_FACTOR * count - 1)
    return (floor, True) if step < floor else (step, False)


def _describe_unevenness(gaps: np.ndarray) -> str:
    smallest = float(np.min(gaps))
    largest = float(np.max(gaps))
    doubled = [gap for gap in gaps if gaps_equal(gap, 2 * smallest)]
    if doubled and largest <= MAX_HOLE_RATIO * smallest:
        return f"{len(doubled)} missing slice" + ("s" if len(doubled) > 1 else "")
    return "slabs of different spacing"


def shear_offsets_px(
    positions_xyz: np.ndarray, axes: SliceAxes, pixel_spacing_mm: tuple[float, float]
) -> np.ndarray | None:
    """Return per-slice in-plane shifts (rows, columns) in pixels, or None when negligible.

    ``positions_xyz`` is ImagePositionPatient of the sorted slices, shape (n, 3). The shift
    of slice k is its origin's in-plane offset from the first slice's origin. Applying it
    with :func:`scipy.ndimage.shift` puts every slice on the first slice's in-plane grid
    and so removes the shear of a gantry tilt.
    """
    offsets = positions_xyz - positions_xyz[0]
    along_normal = offsets @ axes.normal
    in_plane = offsets - np.outer(along_normal, axes.normal)
    row_shift = (in_plane @ axes.column) / pixel_spacing_mm[0]
    column_shift = (in_plane @ axes.row) / pixel_spacing_mm[1]
    shifts = np.stack([row_shift, column_shift], axis=1)
    if float(np.max(np.abs(shifts))) <= SHEAR_TOLERANCE_PIXELS:
        return None
    return shifts


def tilt_angle_deg(positions_xyz: np.ndarray, axes: SliceAxes) -> float:
    """Return the angle between the line through the first and last slice origins and the normal."""
    step = positions_xyz[-1] - positions_xyz[0]
    length = float(np.linalg.norm(step))
    if length == 0.0:
        return 0.0
    cosine = min(1.0, abs(float(step @ axes.normal)) / length)
    return math.degrees(math.acos(cosine))
