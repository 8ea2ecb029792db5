"""From a group of parallel frames to one stack: repeated positions, 4D split, z grid, tilt.

Repeated positions are either a 4D series (every position repeated equally often: one
frame per time point) or an error. A 4D series is split into time points by
TemporalPositionIndex or TemporalPositionIdentifier, then InstanceNumber. The first time
point is kept and the others are reported as dropped. Among the stacks of a folder,
:func:`choose_stack` keeps the one with the most slices; ties go to the orientation
closest to axial, then the finer pixel spacing, then the lower SeriesNumber.
"""

import logging
from dataclasses import dataclass

import numpy as np

from rsna.dicom.errors import SeriesError
from rsna.dicom.geometry import (
    DUPLICATE_POSITION_MM,
    SliceAxes,
    StackRejectedError,
    ZGrid,
    plan_z_grid,
    shear_offsets_px,
    slice_axes,
    tilt_angle_deg,
)
from rsna.dicom.grouping import Frame, FrameGroup, describe_files, drop_record
from rsna.dicom.orientation import orientation_label

logger = logging.getLogger(__name__)

# SpacingBetweenSlices that differs from the spacing of the positions by more than this
# fraction is reported as a warning (the positions win).
SPACING_TAG_RTOL = 0.1
# GantryDetectorTilt and the tilt seen in the geometry may differ by this much.
TILT_TAG_TOLERANCE_DEG = 1.0


@dataclass(frozen=True)
class Stack:
    """One stack of parallel slices, sorted along the normal, with its resampling plan.

    ``frames`` are sorted by ascending position along ``axes.normal``. ``shear_px`` contains
    per-slice (row, column) shifts in pixels that de-shear a gantry tilt, or None.
    ``acquired_shape`` and ``acquired_spacing_mm`` are (z, y, x) after z is made uniform.
    """

    group: FrameGroup
    frames: tuple[Frame, ...]
    axes: SliceAxes
    positions_xyz: np.ndarray
    z_grid: ZGrid
    shear_px: np.ndarray | None
    tilt_deg: float
    dropped: tuple[dict, ...]
    warnings: tuple[str, ...]

    @property
    def acquired_shape(self) -> tuple[int, int, int]:
        """(z, y, x) shape after z resampling, before reorientation."""
        return (self.z_grid.output_count, self.group.rows, self.group.columns)

    @property
    def acquired_spacing_mm(self) -> tuple[float, float, float]:
        """(z, y, x) spacing after z resampling: z gap, PixelSpacing[0], PixelSpacing[1]."""
        row_mm, column_mm = self.group.pixel_spacing_mm
        return (float(self.z_grid.spacing_mm), float(row_mm), float(column_mm))

    @property
    def reasons(self) -> tuple[str, ...]:
        """What is resampled and why."""
        reasons = []
        if self.shear_px is not None:
            reasons.append(
                f"gantry tilt of {self.tilt_deg:.1f} deg detected from ImagePositionPatient: "
                "slices shifted in plane onto an orthogonal grid (de-sheared) by linear "
                "interpolation"
            )
        if self.z_grid.reason:
            reasons.append(self.z_grid.reason)
        return tuple(reasons)

    def describe(self) -> str:
        """Return "sagittal, 2 slices, 288 x 288, PixelSpacing 0.32 x 0.32 mm, z gap 3.3 mm"."""
        row_mm, column_mm = self.group.pixel_spacing_mm
        return (
            f"{orientation_label(self.axes.normal)}, {len(self.frames)} slices, "
            f"{self.group.rows} x {self.group.columns}, PixelSpacing {row_mm:g} x "
            f"{column_mm:g} mm, z gap {self.z_grid.spacing_mm:.4g} mm"
        )


def build_stack(group: FrameGroup) -> Stack:
    """Turn a group into a Stack; raise StackRejectedError saying why it is not a volume."""
    axes = slice_axes(group.orientation)
    frames = list(group.frames)
    projections = np.array([np.asarray(frame.plane.position_mm) @ axes.normal for frame in frames])
    order = np.argsort(projections, kind="stable")
    frames = [frames[i] for i in order]
    projections = projections[order]

    frames, projections, dropped = _split_time_points(frames, projections)
    positions_xyz = np.array([frame.plane.position_mm for frame in frames], dtype=np.float64)
    z_grid = plan_z_grid(projections)
    shear = shear_offsets_px(positions_xyz, axes, group.pixel_spacing_mm)
    tilt = tilt_angle_deg(positions_xyz, axes) if shear is not None else 0.0
    warnings = _cross_check_tags(frames, z_grid, tilt)
    return Stack(
        group=group,
        frames=tuple(frames),
        axes=axes,
        positions_xyz=positions_xyz,
        z_grid=z_grid,
        shear_px=shear,
        tilt_deg=tilt,
        dropped=tuple(dropped),
        warnings=tuple(warnings),
    )


def _position_clusters(projections: np.ndarray) -> list[list[int]]:
    clusters: list[list[int]] = [[0]]
    for index in range(1, len(projections)):
        if projections[index] - projections[clusters[-1][0]] <= DUPLICATE_POSITION_MM:
            clusters[-1].append(index)
        else:
            clusters.append([index])
    return clusters


def _temporal_key(frame: Frame) -> tuple:
    temporal = frame.plane.temporal_index
    instance = frame.header.instance_number
    return (
        temporal if temporal is not None else -1,
        instance if instance is not None else -1,
        frame.header.path,
        frame.frame_in_file,
    )


def _split_time_points(
    frames: list[Frame], projections: np.ndarray
) -> tuple[list[Frame], np.ndarray, list[dict]]:
    clusters = _position_clusters(projections)
    sizes = {len(cluster) for cluster in clusters}
    if len(clusters) == 1:
        description = "one image" if len(frames) == 1 else f"{len(frames)} images at one position"
        raise StackRejectedError(
            f"{description} ({projections[0]:.4g} mm along the slice normal): not a volume "
            "(a localizer, a bolus-tracking monitor or a 2D time series); a volume needs "
            "slices at two or more distinct positions"
        )
    if sizes == {1}:
        return frames, projections, []
    if len(sizes) > 1:
        repeated = [c for c in clusters if len(c) > 1]
        examples = ", ".join(f"{projections[c[0]]:.4g} mm ({len(c)} images)" for c in repeated[:3])
        raise StackRejectedError(
            f"repeated slice positions: {len(repeated)} of {len(clusters)} positions occur "
            f"more than once ({examples}{', ...' if len(repeated) > 3 else ''}), but not "
            "equally often, so they are neither one volume nor a 4D series. Remove the "
            "duplicate images or exclude the series"
        )
    return _first_time_point(frames, projections, clusters)


def _first_time_point(
    frames: list[Frame], projections: np.ndarray, clusters: list[list[int]]
) -> tuple[list[Frame], np.ndarray, list[dict]]:
    count = len(clusters[0])
    first_frames, first_projections, others = [], [], []
    for cluster in clusters:
        ranked = sorted(cluster, key=lambda index: _temporal_key(frames[index]))
        first_frames.append(frames[ranked[0]])
        first_projections.append(projections[ranked[0]])
        others.extend(frames[index].label for index in ranked[1:])
    dropped = drop_record(
        f"time points 2-{count} ({describe_files(others, noun='frames')})",
        f"4D series: each of the {len(clusters)} slice positions occurs {count} times, one "
        "per time point (ordered by TemporalPositionIndex or TemporalPositionIdentifier, "
        "then InstanceNumber); time point 1 is kept",
    )
    return first_frames, np.asarray(first_projections), [dropped]


def _cross_check_tags(frames: list[Frame], z_grid: ZGrid, tilt_deg: float) -> list[str]:
    warnings = []
    first = frames[0]
    if "DERIVED" in first.header.image_type:
        image_type = "\\".join(first.header.image_type)
        warnings.append(
            f"ImageType {image_type}: derived images (a "
            "reconstruction, reformat or computed map), read like original slices"
        )
    tagged = first.plane.spacing_between_slices_mm
    spacing = z_grid.spacing_mm
    if (
        tagged
        and z_grid.target_mm is None
        and abs(abs(tagged) - spacing) > SPACING_TAG_RTOL * spacing
    ):
        warnings.append(
            f"SpacingBetweenSlices {tagged:g} mm differs from the spacing of the slice "
            f"positions {spacing:.4g} mm; the positions are used"
        )
    header_tilt = first.header.gantry_detector_tilt_deg
    if header_tilt is not None and abs(abs(header_tilt) - tilt_deg) > TILT_TAG_TOLERANCE_DEG:
        warnings.append(
            f"GantryDetectorTilt {header_tilt:g} deg differs from the tilt seen in "
            f"ImagePositionPatient {tilt_deg:.1f} deg; the geometry is used"
        )
    return warnings


def choose_stack(groups: list[FrameGroup], *, series: str, dropped: list[dict]) -> Stack:
    """Build every group's stack, keep the main one and add the others to ``dropped``.

    Raises SeriesError listing every group's rejection when no group forms a volume.
    """
    stacks: list[Stack] = []
    rejections: list[tuple[FrameGroup, str]] = []
    for group in groups:
        try:
            stacks.append(build_stack(group))
        except StackRejectedError as error:
            rejections.append((group, str(error)))
    for group, reason in rejections:
        dropped.append(drop_record(describe_files([f.label for f in group.frames]), reason))
    if not stacks:
        raise SeriesError(
            _no_stack_message(series, rejections), series=series, dropped=tuple(dropped)
        )

    stacks.sort(key=_preference)
    chosen = stacks[0]
    for other in stacks[1:]:
        dropped.append(
            drop_record(
                describe_files([f.label for f in other.frames]),
                f"another stack in the folder ({other.describe()}); the main stack has "
                f"{len(chosen.frames)} slices ({chosen.describe()})",
                shape=list(other.acquired_shape),
                spacing_mm=list(other.acquired_spacing_mm),
            )
        )
    return chosen


def _preference(stack: Stack) -> tuple:
    axial_alignment = abs(float(stack.axes.normal[2]))
    series_number = stack.frames[0].header.series_number
    return (
        -len(stack.frames),
        -round(axial_alignment, 3),
        min(stack.group.pixel_spacing_mm),
        series_number if series_number is not None else 1 << 30,
        stack.group.series_uid,
    )


def _no_stack_message(series: str, rejections: list[tuple[FrameGroup, str]]) -> str:
    if not rejections:
        return (
            f"series {series}: no CT or MR image with ImagePositionPatient, "
            "ImageOrientationPatient and PixelSpacing in the folder (see dropped for each "
            "file); expected a stack of CT or MR slices. Exclude this series"
        )
    _, first_reason = rejections[0]
    message = f"series {series}: no volume: {first_reason}"
    if len(rejections) > 1:
        message += f" (and {len(rejections) - 1} other group(s) of images rejected, see dropped)"
    return message + ". Exclude this series or supply the missing images"
