"""Rendering of the synthetic head into the voxel grid of one acquisition.

A :class:`Geometry` is the grid as DICOM describes it (ImagePositionPatient of the first
voxel, ImageOrientationPatient, PixelSpacing and the slice gap). A :class:`HeadPose`
places the head frame of :mod:`rsna.sample.anatomy` in patient coordinates. The volume
is rendered in acquisition order ``(slices, rows, columns)``: index ``k`` runs along the
slice normal (row cosine x column cosine), ``r`` down the rows, ``c`` along the columns.
Edges are blurred over about one voxel, which imitates partial-volume effects.
"""

import itertools
from dataclasses import dataclass

import numpy as np

from rsna.sample.anatomy import (
    BRAIN,
    SCALP_THICKNESS_MM,
    SKULL_BASE,
    SKULL_THICKNESS_MM,
    Aneurysm,
    Ellipsoid,
    vessels_by_side,
)

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of one acquisition in patient coordinates (LPS, mm).

    ``shape`` is ``(slices, rows, columns)``; ``spacing_mm`` is ``(gap along the slice
    normal, row spacing, column spacing)``, the latter two being PixelSpacing.
    ``row_cosine`` and ``column_cosine`` are the two halves of ImageOrientationPatient
    (PS3.3 C.7.6.2.1.1) and ``origin_mm`` is ImagePositionPatient of voxel ``(0, 0, 0)``.
    """

    shape: tuple[int, int, int]
    spacing_mm: Vector
    row_cosine: Vector
    column_cosine: Vector
    origin_mm: Vector

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal, row cosine x column cosine; slice ``k`` sits at ``k * gap`` on it."""
        return np.cross(self.row_cosine, self.column_cosine)

    def axes_mm(self) -> np.ndarray:
        """Return the ``(3, 3)`` matrix whose columns are the mm steps of ``k``, ``r`` and ``c``."""
        gap, row_spacing, column_spacing = self.spacing_mm
        return np.stack(
            [
                self.normal * gap,
                np.asarray(self.column_cosine) * row_spacing,
                np.asarray(self.row_cosine) * column_spacing,
            ],
            axis=1,
        )

    def slice_position(self, k: int) -> np.ndarray:
        """Return ImagePositionPatient of slice ``k``, shape ``(3,)`` in mm."""
        return np.asarray(self.origin_mm) + k * self.normal * self.spacing_mm[0]

    def patient_to_index(self, point_mm: np.ndarray) -> np.ndarray:
        """Return the continuous ``(k, r, c)`` index of a patient-space point."""
        return np.linalg.solve(self.axes_mm(), np.asarray(point_mm) - np.asarray(self.origin_mm))


@dataclass(frozen=True)
class HeadPose:
    """Placement of the head frame in patient space: ``p = translation + scale * R @ h``."""

    rotation: tuple[Vector, Vector, Vector]
    scale: float
    translation_mm: Vector

    def head_to_patient(self, point_mm: np.ndarray) -> np.ndarray:
        """Map a head-frame point ``(3,)`` in mm to patient coordinates in mm."""
        return np.asarray(self.translation_mm) + self.scale * np.asarray(self.rotation) @ point_mm


@dataclass(frozen=True)
class Contrast:
    """Intensity of each tissue in the series' units (HU for CT, scanner units for MR)."""

    air: float
    scalp: float
    bone: float
    brain: float
    vessel: float
    aneurysm: float
    noise_sigma: float


def render_volume(
    geometry: Geometry,
    pose: HeadPose,
    contrast: Contrast,
    aneurysms: tuple[Aneurysm, ...],
    rng: np.random.Generator,
    *,
    noise: float = 1.0,
) -> np.ndarray:
    """Render the head with its vessels and ``aneurysms`` on ``geometry``'s grid.

    Returns float32 ``(slices, rows, columns)`` in the units of ``contrast``, with
    Gaussian noise of ``noise * contrast.noise_sigma``.
    """
    to_head, offset = _index_to_head(geometry, pose)
    edge_mm = float(np.mean(geometry.spacing_mm)) / pose.scale

    volume = _render_tissues(geometry.shape, to_head, offset, contrast, edge_mm)
    vessel_fraction = _render_vessels(geometry.shape, to_head, offset, edge_mm)
    volume += (contrast.vessel - volume) * vessel_fraction
    for aneurysm in aneurysms:
        _paint_aneurysm(volume, aneurysm, to_head, offset, contrast, edge_mm)

    if noise > 0:
        volume += rng.standard_normal(volume.shape, dtype=np.float32) * (
            contrast.noise_sigma * noise
        )
    return volume


def _index_to_head(geometry: Geometry, pose: HeadPose) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(A, o)`` such that head-frame mm ``= o + A @ (k, r, c)``."""
    inverse_rotation = np.asarray(pose.rotation).T / pose.scale
    to_head = inverse_rotation @ geometry.axes_mm()
    offset = inverse_rotation @ (np.asarray(geometry.origin_mm) - np.asarray(pose.translation_mm))
    return to_head, offset


def _head_coordinates(
    ranges: tuple[range, range, range], to_head: np.ndarray, offset: np.ndarray
) -> list[np.ndarray]:
    """Return the head-frame x, y, z in mm of every voxel of a block, each float32 ``(k, r, c)``."""
    k = np.arange(ranges[0].start, ranges[0].stop, dtype=np.float32)[:, None, None]
    r = np.arange(ranges[1].start, ranges[1].stop, dtype=np.float32)[None, :, None]
    c = np.arange(ranges[2].start, ranges[2].stop, dtype=np.float32)[None, None, :]
    matrix = to_head.astype(np.float32)
    return [
        np.float32(offset[axis]) + matrix[axis, 0] * k + matrix[axis, 1] * r + matrix[axis, 2] * c
        for axis in range(3)
    ]


def _inside_fraction(
    coordinates: list[np.ndarray], ellipsoid: Ellipsoid, grow_mm: float, edge_mm: float
) -> np.ndarray:
    """Return the fraction in [0, 1] of each voxel inside an ellipsoid grown by ``grow_mm``.

    The distance to the surface is approximated by the normalized radius times the mean
    semi-axis, which is close enough for a ramp about one voxel wide.
    """
    semi_axes = [axis + grow_mm for axis in ellipsoid.semi_axes_mm]
    squared = sum(
        ((coordinate - centre) / semi) ** 2
        for coordinate, centre, semi in zip(
            coordinates, ellipsoid.centre_mm, semi_axes, strict=True
        )
    )
    distance_mm = (np.sqrt(squared) - 1.0) * np.float32(np.mean(semi_axes))
    return np.clip(0.5 - distance_mm / edge_mm, 0.0, 1.0)


def _render_tissues(
    shape: tuple[int, int, int],
    to_head: np.ndarray,
    offset: np.ndarray,
    contrast: Contrast,
    edge_mm: float,
) -> np.ndarray:
    """Return air, scalp, skull and brain (with the skull base) as float32 ``shape``."""
    coordinates = _head_coordinates(tuple(range(n) for n in shape), to_head, offset)
    scalp = _inside_fraction(coordinates, BRAIN, SKULL_THICKNESS_MM + SCALP_THICKNESS_MM, edge_mm)
    skull = _inside_fraction(coordinates, BRAIN, SKULL_THICKNESS_MM, edge_mm)
    brain = _inside_fraction(coordinates, BRAIN, 0.0, edge_mm)
    skull_base = _inside_fraction(coordinates, SKULL_BASE, 0.0, edge_mm)

    volume = np.full(shape, contrast.air, dtype=np.float32)
    volume += (contrast.scalp - contrast.air) * scalp
    volume += (contrast.bone - contrast.scalp) * skull
    volume += (contrast.brain - contrast.bone) * brain
    volume += (contrast.brain - volume) * skull_base
    return volume


def _block_around(
    points_mm: np.ndarray,
    margin_mm: float,
    shape: tuple[int, int, int],
    to_head: np.ndarray,
    offset: np.ndarray,
) -> tuple[range, range, range] | None:
    """Return the index ranges of the voxels within ``margin_mm`` of the box of ``points_mm``.

    Returns None when the box lies outside the grid.
    """
    low = points_mm.min(axis=0) - margin_mm
    high = points_mm.max(axis=0) + margin_mm
    corners = np.array(
        [[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])]
    )
    indices = np.linalg.solve(to_head, (corners - offset).T).T
    start = np.maximum(np.floor(indices.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(indices.max(axis=0)).astype(int) + 1, shape)
    if np.any(stop <= start):
        return None
    return tuple(range(int(a), int(b)) for a, b in zip(start, stop, strict=True))


def _segment_fraction(
    coordinates: list[np.ndarray],
    start: np.ndarray,
    end: np.ndarray,
    radius_mm: float,
    edge_mm: float,
) -> np.ndarray:
    """Return the fraction of each voxel inside the capsule from ``start`` to ``end``."""
    step = end - start
    relative = [
        coordinate - np.float32(origin)
        for coordinate, origin in zip(coordinates, start, strict=True)
    ]
    along = sum(
        value * np.float32(component) for value, component in zip(relative, step, strict=True)
    )
    along = np.clip(along / np.float32(step @ step), 0.0, 1.0)
    squared = sum(
        (value - along * np.float32(component)) ** 2
        for value, component in zip(relative, step, strict=True)
    )
    return np.clip(0.5 + (radius_mm - np.sqrt(squared)) / edge_mm, 0.0, 1.0)


def _render_vessels(
    shape: tuple[int, int, int], to_head: np.ndarray, offset: np.ndarray, edge_mm: float
) -> np.ndarray:
    """Return the fraction of each voxel covered by a vessel lumen, float32 ``shape``."""
    fraction = np.zeros(shape, dtype=np.float32)
    for vessel in vessels_by_side().values():
        points = np.asarray(vessel.points_mm, dtype=float)
        for start, end in itertools.pairwise(points):
            block = _block_around(
                np.stack([start, end]), vessel.radius_mm + edge_mm, shape, to_head, offset
            )
            if block is None:
                continue
            coordinates = _head_coordinates(block, to_head, offset)
            covered = _segment_fraction(coordinates, start, end, vessel.radius_mm, edge_mm)
            view = fraction[
                block[0].start : block[0].stop,
                block[1].start : block[1].stop,
                block[2].start : block[2].stop,
            ]
            np.maximum(view, covered, out=view)
    return fraction


def _paint_aneurysm(
    volume: np.ndarray,
    aneurysm: Aneurysm,
    to_head: np.ndarray,
    offset: np.ndarray,
    contrast: Contrast,
    edge_mm: float,
) -> None:
    """Blend a bright sphere into ``volume`` in place, brightest at its centre.

    The 20% fall-off from centre to rim makes the voxel nearest the centre the brightest
    of the aneurysm, so a localizer at the centre points at the local maximum.
    """
    centre = np.asarray(aneurysm.centre_mm)
    block = _block_around(
        centre[None, :], aneurysm.radius_mm + edge_mm, volume.shape, to_head, offset
    )
    if block is None:
        return
    coordinates = _head_coordinates(block, to_head, offset)
    distance = np.sqrt(
        sum((value - np.float32(c)) ** 2 for value, c in zip(coordinates, centre, strict=True))
    )
    covered = np.clip(0.5 + (aneurysm.radius_mm - distance) / edge_mm, 0.0, 1.0)
    profile = contrast.aneurysm * (1.0 - 0.2 * np.minimum(distance / aneurysm.radius_mm, 1.0) ** 2)

    view = volume[
        block[0].start : block[0].stop,
        block[1].start : block[1].stop,
        block[2].start : block[2].stop,
    ]
    view += (profile - view) * covered
