"""The full read of a series folder: selection, geometry, decode, reorientation."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from rsna.dicom.errors import SeriesError
from rsna.dicom.grouping import Frame, frames_with_geometry, group_frames, select_files
from rsna.dicom.headers import FileHeader, read_headers
from rsna.dicom.hounsfield import (
    AIR_HU,
    HEADER_LUT,
    SAMPLE_FRACTIONS,
    SAMPLE_STRIDE,
    InterceptCorrection,
    SampleSlice,
    choose_correction,
)
from rsna.dicom.orientation import (
    DEFAULT_OBLIQUE_TOLERANCE_DEG,
    CanonicalLayout,
    plan_canonical_layout,
)
from rsna.dicom.pixels import (
    FrameDecoder,
    apply_modality_lut,
    check_decodable,
    invert_monochrome1,
    padding_mask,
)
from rsna.dicom.stacks import Stack, choose_stack
from rsna.dicom.volume import Volume

logger = logging.getLogger(__name__)

MR_AIR = 0.0


@dataclass(frozen=True)
class SeriesPlan:
    """Everything decided from headers alone: the chosen stack, what was dropped, warnings."""

    series: str
    stack: Stack
    file_count: int
    dropped: tuple[dict, ...]
    warnings: tuple[str, ...]


def series_label(series_dir: Path, uid: str = "") -> str:
    """Return the name errors use for a series: its UID, plus the folder when they differ."""
    folder = series_dir.name
    if not uid or uid == folder:
        return uid or folder
    return f"{uid} (folder {folder})"


def load_headers(series_dir: Path) -> list[FileHeader]:
    """Read the headers of a series folder; raise SeriesError when it is missing or empty."""
    if not series_dir.is_dir():
        raise SeriesError(
            f"series folder {series_dir} not found; pass a folder of DICOM files",
            series=series_dir.name,
        )
    headers = read_headers(series_dir)
    if not headers:
        raise SeriesError(
            f"series folder {series_dir} is empty; expected the DICOM files of one series",
            series=series_dir.name,
        )
    return headers


def plan_series(headers: list[FileHeader], *, series_dir: Path) -> SeriesPlan:
    """Select, group and order the frames of a folder and choose the main stack."""
    folder_label = series_label(series_dir)
    files, dropped = select_files(headers)
    frames, geometry_dropped, warnings = frames_with_geometry(files)
    dropped.extend(geometry_dropped)
    groups = group_frames(frames)
    uids = {group.series_uid for group in groups}
    label = series_label(series_dir, uids.pop()) if len(uids) == 1 else folder_label
    stack = choose_stack(groups, series=label, dropped=dropped)
    label = series_label(series_dir, stack.group.series_uid)
    return SeriesPlan(
        series=label,
        stack=stack,
        file_count=sum(1 for header in headers if header.problem is None),
        dropped=tuple(dropped) + stack.dropped,
        warnings=tuple(warnings) + stack.warnings,
    )


def read_series(
    series_dir: str | os.PathLike,
    *,
    headers: list[FileHeader] | None = None,
    oblique_tolerance_deg: float = DEFAULT_OBLIQUE_TOLERANCE_DEG,
) -> Volume:
    """Read a series folder into a :class:`Volume` in canonical LPS orientation.

    ``headers`` may be the result of :func:`rsna.dicom.read_headers` on the same folder,
    to skip a second header pass. Acquisitions more than ``oblique_tolerance_deg`` off the
    patient axes are resampled onto an LPS-aligned grid; others are only permuted and
    flipped. Raises :class:`SeriesError` when the folder contains no usable volume.
    """
    series_dir = Path(series_dir)
    if headers is None:
        headers = load_headers(series_dir)
    plan = plan_series(headers, series_dir=series_dir)
    stack = plan.stack
    for frame in stack.frames:
        check_decodable(frame.header, series=plan.series)

    origin_xyz = stack.positions_xyz[0]
    layout = plan_canonical_layout(
        stack.axes,
        shape=stack.acquired_shape,
        spacing_mm=stack.acquired_spacing_mm,
        origin_xyz=origin_xyz,
        oblique_tolerance_deg=oblique_tolerance_deg,
    )
    modality = stack.frames[0].header.modality
    air = AIR_HU if modality == "CT" else MR_AIR
    warnings = list(plan.warnings)
    with FrameDecoder(series=plan.series) as decoder:
        correction = _ct_correction(stack, decoder, warnings) if modality == "CT" else HEADER_LUT
        voxels = _decode_canonical(stack, layout, decoder, correction=correction, air=air)

    reasons = list(stack.reasons)
    if layout.resample:
        reasons.append(
            f"oblique acquisition ({layout.max_angle_deg:.1f} deg from the patient axes): "
            "resampled onto an LPS-aligned grid by trilinear interpolation"
        )
    _warn_photometric(stack, warnings)
    logger.info(
        "series %s: %s volume %s at %s mm from %d frames",
        plan.series,
        modality,
        voxels.shape,
        tuple(round(s, 4) for s in layout.spacing_mm),
        len(stack.frames),
    )
    return Volume(
        voxels=voxels,
        spacing_mm=layout.spacing_mm,
        origin_mm=layout.origin_mm,
        direction=layout.direction,
        series_uid=stack.group.series_uid,
        modality=modality,
        acquired_shape=stack.acquired_shape,
        acquired_spacing_mm=stack.acquired_spacing_mm,
        transfer_syntaxes=tuple(sorted({f.header.transfer_syntax_uid for f in stack.frames})),
        dropped=plan.dropped,
        warnings=tuple(warnings),
        reason="; ".join(reasons) or None,
        frame_planes={(f.header.sop_instance_uid, f.index): f.plane for f in stack.frames},
    )


def _warn_photometric(stack: Stack, warnings: list[str]) -> None:
    if any(f.header.photometric_interpretation == "MONOCHROME1" for f in stack.frames):
        warnings.append(
            "MONOCHROME1: values mirrored over the modality-LUT range of the stored values "
            "so that larger values display brighter, as in MONOCHROME2"
        )


def _ct_correction(stack: Stack, decoder: FrameDecoder, warnings: list[str]) -> InterceptCorrection:
    samples = []
    count = len(stack.frames)
    indices = sorted({min(count - 1, int(fraction * count)) for fraction in SAMPLE_FRACTIONS})
    for index in indices:
        frame = stack.frames[index]
        raw = decoder.read_raw(frame.header, frame.frame_in_file)[::SAMPLE_STRIDE, ::SAMPLE_STRIDE]
        mask = padding_mask(raw, frame.header)
        samples.append(
            SampleSlice(
                raw=raw.copy(),
                slope=frame.plane.rescale_slope,
                intercept=frame.plane.rescale_intercept,
                padding=mask,
            )
        )
    first = stack.frames[0].plane
    correction, warning = choose_correction(
        samples, has_rescale=first.has_rescale, intercept=first.rescale_intercept
    )
    if warning:
        warnings.append(warning)
        logger.warning("series %s: %s", stack.group.series_uid, warning)
    return correction


def _decode_canonical(
    stack: Stack,
    layout: CanonicalLayout,
    decoder: FrameDecoder,
    *,
    correction: InterceptCorrection,
    air: float,
) -> np.ndarray:
    """Decode the stack into the canonical float32 array, resampling where planned."""
    if not layout.resample:
        canonical = np.empty(layout.shape, dtype=np.float32)
        _fill_acquired(stack, layout.acquired_view(canonical), decoder, correction, air)
        return canonical

    acquired = np.empty(stack.acquired_shape, dtype=np.float32)
    _fill_acquired(stack, acquired, decoder, correction, air)
    canonical = ndimage.affine_transform(
        acquired,
        layout.matrix,
        offset=layout.offset,
        output_shape=layout.shape,
        output=np.float32,
        order=1,
        mode="constant",
        cval=air,
        prefilter=False,
    )
    return canonical


class _SliceProducer:
    """Decode sorted slice k into a float32 (rows, columns) output, de-sheared if planned."""

    def __init__(
        self,
        stack: Stack,
        decoder: FrameDecoder,
        correction: InterceptCorrection,
        air: float,
    ) -> None:
        self.stack = stack
        self.decoder = decoder
        self.correction = correction
        self.air = air
        self.scratch = (
            np.empty((stack.group.rows, stack.group.columns), dtype=np.float32)
            if stack.shear_px is not None
            else None
        )

    def into(self, index: int, out: np.ndarray) -> None:
        frame = self.stack.frames[index]
        raw = self.decoder.read_raw(frame.header, frame.frame_in_file)
        target = out if self.scratch is None else self.scratch
        to_float(raw, frame, out=target, correction=self.correction, air=self.air)
        if self.scratch is not None:
            ndimage.shift(
                self.scratch,
                self.stack.shear_px[index],
                output=out,
                order=1,
                mode="constant",
                cval=self.air,
                prefilter=False,
            )


def to_float(
    raw: np.ndarray, frame: Frame, *, out: np.ndarray, correction: InterceptCorrection, air: float
) -> None:
    """Write one frame's values into ``out``: modality LUT, MONOCHROME1 mirror, padding to air."""
    plane = frame.plane
    intercept = correction.intercept(plane.rescale_intercept)
    apply_modality_lut(raw, out, slope=plane.rescale_slope, intercept=intercept)
    if frame.header.photometric_interpretation == "MONOCHROME1":
        invert_monochrome1(out, frame.header, slope=plane.rescale_slope, intercept=intercept)
    mask = padding_mask(raw, frame.header)
    if mask is not None:
        np.putmask(out, mask, np.float32(air))


def _fill_acquired(
    stack: Stack,
    sink: np.ndarray,
    decoder: FrameDecoder,
    correction: InterceptCorrection,
    air: float,
) -> None:
    """Write the stack's slices into ``sink`` (k, i, j), interpolating along z if planned."""
    producer = _SliceProducer(stack, decoder, correction, air)
    grid = stack.z_grid
    if grid.target_mm is None:
        for index in range(len(stack.frames)):
            producer.into(index, sink[index])
        return
    _fill_interpolated(producer, grid.positions_mm, grid.target_mm, sink)


def _fill_interpolated(
    producer: _SliceProducer, positions: np.ndarray, targets: np.ndarray, sink: np.ndarray
) -> None:
    """Linear interpolation along z, streaming two decoded slices at a time."""
    shape = sink.shape[1:]
    previous = np.empty(shape, dtype=np.float32)
    current = np.empty(shape, dtype=np.float32)
    difference = np.empty(shape, dtype=np.float32)
    producer.into(0, previous)
    target_index = 0
    last = len(positions) - 1
    for index in range(1, len(positions)):
        producer.into(index, current)
        np.subtract(current, previous, out=difference)
        low, high = positions[index - 1], positions[index]
        while target_index < len(targets) and (targets[target_index] < high or index == last):
            weight = (targets[target_index] - low) / (high - low)
            _blend(previous, current, difference, weight, sink[target_index])
            target_index += 1
        previous, current = current, previous


def _blend(
    previous: np.ndarray,
    current: np.ndarray,
    difference: np.ndarray,
    weight: float,
    out: np.ndarray,
) -> None:
    # Weights at the ends copy the slice exactly, so slices that lie on the grid keep
    # their decoded values.
    if weight <= 1e-6:
        np.copyto(out, previous)
    elif weight >= 1.0 - 1e-6:
        np.copyto(out, current)
    else:
        np.multiply(difference, np.float32(weight), out=out)
        np.add(out, previous, out=out)
