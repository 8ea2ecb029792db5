"""Canonical LPS orientation: permute and flip the acquired axes, or resample when oblique.

The acquired array is ``(k, i, j)`` = (slice along the normal, image row, image column),
whose axes point along (normal, column cosine, row cosine) in patient space. The canonical
array is ``(z, y, x)`` with z toward superior, y toward posterior and x toward the
patient's left (DICOM LPS). When every acquired axis is within ``oblique_tolerance_deg`` of
a patient axis, the canonical array is a permutation with flips of the acquired one (no
interpolation) and ``direction`` keeps the small residual rotation. Otherwise the volume
is resampled by trilinear interpolation onto an LPS-aligned grid that covers it.
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np

from rsna.dicom.geometry import SliceAxes

# MR acquisitions are routinely angled a few degrees off the patient axes. Resampling all
# of them would blur every series for a rotation the model does not mind, but beyond this
# angle an axis permutation no longer describes the anatomy well.
DEFAULT_OBLIQUE_TOLERANCE_DEG = 10.0
# Orientation labels: a normal within this angle of a patient axis names the plane.
LABEL_TOLERANCE_DEG = 20.0
PATIENT_AXIS_ZYX = (2, 1, 0)  # canonical axis a points along patient axis PATIENT_AXIS_ZYX[a]


@dataclass(frozen=True)
class CanonicalLayout:
    """Mapping of the acquired (k, i, j) array onto the canonical (z, y, x) array.

    When ``resample`` is False, canonical axis a is acquired axis ``permutation[a]``,
    reversed where ``flips[a]``. When True, ``matrix`` and ``offset`` map canonical indices
    to acquired indices for :func:`scipy.ndimage.affine_transform`. ``shape``,
    ``spacing_mm``, ``origin_mm`` and ``direction`` are the canonical geometry in (z, y, x)
    order, as :class:`rsna.dicom.Volume` documents.
    """

    resample: bool
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: np.ndarray
    max_angle_deg: float
    matrix: np.ndarray | None = None
    offset: np.ndarray | None = None

    def acquired_view(self, canonical: np.ndarray) -> np.ndarray:
        """Return a view of ``canonical`` indexed in acquired (k, i, j) order.

        Writing acquired slice k into ``view[k]`` writes the canonical array in place.
        Only for layouts that do not resample.
        """
        flipped_axes = tuple(axis for axis in range(3) if self.flips[axis])
        unflipped = np.flip(canonical, axis=flipped_axes) if flipped_axes else canonical
        inverse = tuple(int(axis) for axis in np.argsort(self.permutation))
        return np.transpose(unflipped, inverse)


def orientation_label(normal: np.ndarray) -> str:
    """Return "axial", "coronal", "sagittal" or "oblique" for a slice normal (LPS x, y, z)."""
    components = np.abs(np.asarray(normal, dtype=np.float64))
    dominant = int(np.argmax(components))
    angle = math.degrees(math.acos(min(1.0, float(components[dominant]))))
    if angle > LABEL_TOLERANCE_DEG:
        return "oblique"
    return ("sagittal", "coronal", "axial")[dominant]


def _best_permutation(acquired_axes: np.ndarray) -> tuple[tuple[int, int, int], float]:
    """Return the assignment canonical axis -> acquired axis and its largest angle in degrees."""
    best, best_score = (0, 1, 2), -1.0
    for permutation in itertools.permutations(range(3)):
        score = sum(abs(acquired_axes[permutation[a], PATIENT_AXIS_ZYX[a]]) for a in range(3))
        if score > best_score:
            best, best_score = permutation, score
    cosines = [abs(acquired_axes[best[a], PATIENT_AXIS_ZYX[a]]) for a in range(3)]
    angle = max(math.degrees(math.acos(min(1.0, float(c)))) for c in cosines)
    return best, angle


def plan_canonical_layout(
    axes: SliceAxes,
    *,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    origin_xyz: np.ndarray,
    oblique_tolerance_deg: float = DEFAULT_OBLIQUE_TOLERANCE_DEG,
) -> CanonicalLayout:
    """Plan the canonical layout of an acquired (k, i, j) array.

    ``shape`` and ``spacing_mm`` are the acquired (k, i, j) ones and ``origin_xyz`` the LPS
    position (x, y, z) of acquired voxel [0, 0, 0].
    """
    acquired_axes = np.stack([axes.normal, axes.column, axes.row])  # rows: k, i, j in xyz
    permutation, angle = _best_permutation(acquired_axes)
    if angle > oblique_tolerance_deg:
        return _resampled_layout(acquired_axes, permutation, angle, shape, spacing_mm, origin_xyz)
    return _permuted_layout(acquired_axes, permutation, angle, shape, spacing_mm, origin_xyz)


def _permuted_layout(
    acquired_axes: np.ndarray,
    permutation: tuple[int, int, int],
    angle: float,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    origin_xyz: np.ndarray,
) -> CanonicalLayout:
    flips = tuple(bool(acquired_axes[permutation[a], PATIENT_AXIS_ZYX[a]] < 0) for a in range(3))
    corner_index = np.zeros(3)
    direction = np.zeros((3, 3))
    for a in range(3):
        axis = permutation[a]
        sign = -1.0 if flips[a] else 1.0
        if flips[a]:
            corner_index[axis] = shape[axis] - 1
        direction[a] = sign * acquired_axes[axis][::-1]
    origin = origin_xyz + (corner_index * np.asarray(spacing_mm)) @ acquired_axes
    return CanonicalLayout(
        resample=False,
        permutation=permutation,
        flips=flips,
        shape=tuple(int(shape[permutation[a]]) for a in range(3)),
        spacing_mm=tuple(float(spacing_mm[permutation[a]]) for a in range(3)),
        origin_mm=tuple(float(v) for v in origin[::-1]),
        direction=direction,
        max_angle_deg=angle,
    )


def _resampled_layout(
    acquired_axes: np.ndarray,
    permutation: tuple[int, int, int],
    angle: float,
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    origin_xyz: np.ndarray,
) -> CanonicalLayout:
    spacing = np.array([spacing_mm[permutation[a]] for a in range(3)], dtype=np.float64)
    corners_index = np.array(list(itertools.product(*[(0, size - 1) for size in shape])))
    corners_xyz = origin_xyz + (corners_index * np.asarray(spacing_mm)) @ acquired_axes
    corners_zyx = corners_xyz[:, ::-1]
    low, high = corners_zyx.min(axis=0), corners_zyx.max(axis=0)
    canonical_shape = tuple(
        math.floor((high[a] - low[a]) / spacing[a] + 1e-6) + 1 for a in range(3)
    )

    # acquired index = S^-1 E (R (low + diag(spacing) o) - origin), with E rows the
    # acquired axes in xyz, R the zyx -> xyz reversal and S the acquired spacing.
    reverse = np.eye(3)[::-1]
    to_acquired = np.diag(1.0 / np.asarray(spacing_mm)) @ acquired_axes @ reverse
    matrix = to_acquired @ np.diag(spacing)
    offset = to_acquired @ low - np.diag(1.0 / np.asarray(spacing_mm)) @ acquired_axes @ origin_xyz
    return CanonicalLayout(
        resample=True,
        permutation=permutation,
        flips=(False, False, False),
        shape=canonical_shape,
        spacing_mm=tuple(float(v) for v in spacing),
        origin_mm=tuple(float(v) for v in low),
        direction=np.eye(3),
        max_angle_deg=angle,
        matrix=matrix,
        offset=offset,
    )
