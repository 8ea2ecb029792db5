"""Selection of the image frames that can form a volume, and their grouping into stacks.

Rules, in order:

1. Files are dropped when they are not readable DICOM, have no PixelData, are Secondary
   Capture objects (by SOPClassUID, not by the word SECONDARY in ImageType, which
   reconstructed CT series often carry), are localizers (LOCALIZER in ImageType) or 2D
   projections (PROJECTION IMAGE in ImageType), are not grayscale (SamplesPerPixel != 1),
   are neither CT nor MR, lack the geometry tags, or repeat a SOPInstanceUID already read.
2. The remaining frames are grouped by SeriesInstanceUID, Rows and Columns, PixelSpacing
   and orientation (row and column cosines within ``ORIENTATION_TOLERANCE_DEG``), so two
   orientations under one SeriesInstanceUID never end up in one stack.
3. :mod:`rsna.dicom.stacks` turns each group into a stack or a rejection, and
   :func:`choose_stack` picks the main one.
"""

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rsna.dicom.headers import FileHeader, FramePlane

logger = logging.getLogger(__name__)

SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
VOLUME_MODALITIES = frozenset({"CT", "MR"})
# Row and column cosines of one stack agree to about 1e-5 in practice; two acquisitions
# of one series differ by degrees. One degree separates them with a wide margin.
ORIENTATION_TOLERANCE_DEG = 1.0
PIXEL_SPACING_RTOL = 1e-3
# File names listed in the warning about files that are not DICOM.
NOT_DICOM_NAMES_SHOWN = 3


@dataclass(frozen=True)
class Frame:
    """One 2D image: a single-frame file (``index`` None) or one frame of a multi-frame file."""

    header: FileHeader
    index: int | None
    plane: FramePlane

    @property
    def label(self) -> str:
        """File name, with the frame index for multi-frame files."""
        if self.index is None:
            return self.header.name
        return f"{self.header.name}[frame {self.index}]"

    @property
    def frame_in_file(self) -> int:
        """0-based frame index inside the file's pixel data."""
        return 0 if self.index is None else self.index


@dataclass(frozen=True)
class FrameGroup:
    """Frames that share series, matrix size, pixel spacing and orientation."""

    frames: tuple[Frame, ...]
    series_uid: str
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]
    orientation: tuple[float, ...]


def drop_record(what: str, reason: str, **extra: object) -> dict:
    """Return one entry of ``Volume.dropped``."""
    return {"what": what, "reason": reason, **extra}


def describe_files(labels: list[str], *, limit: int = 3, noun: str = "files") -> str:
    """Return "N files: a, b, c, ..." naming at most ``limit`` of them, or the one name."""
    names = sorted(set(labels))
    if len(names) == 1:
        return names[0]
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"{len(names)} {noun}: {shown}"


def file_drop_reason(header: FileHeader) -> str | None:
    """Return why a file cannot be part of any volume, or None if it may be."""
    if header.problem:
        return header.problem
    if not header.has_pixel_data:
        return "no PixelData (not an image)"
    if header.sop_class_uid.startswith(SECONDARY_CAPTURE_PREFIX):
        return f"Secondary Capture object (SOPClassUID {header.sop_class_uid})"
    image_type = "\\".join(header.image_type)
    if "LOCALIZER" in header.image_type:
        return f"localizer (ImageType {image_type})"
    if "PROJECTION IMAGE" in header.image_type:
        return f"2D projection (ImageType {image_type})"
    if header.samples_per_pixel != 1:
        return f"not grayscale (SamplesPerPixel {header.samples_per_pixel})"
    if header.modality not in VOLUME_MODALITIES:
        return f"Modality {header.modality or 'missing'} is neither CT nor MR"
    if header.rows <= 0 or header.columns <= 0:
        return f"invalid matrix size {header.rows} x {header.columns}"
    return None


def select_files(headers: list[FileHeader]) -> tuple[list[FileHeader], list[dict]]:
    """Split headers into files that may form a volume and drop records for the others.

    Files that are not readable DICOM, such as a text file named ``.dcm``, get one WARNING
    per call with their count and first names, because a stray file can hide a damaged
    download. The other files are still used.
    """
    kept: list[FileHeader] = []
    dropped: list[dict] = []
    seen_uids: set[str] = set()
    for header in headers:
        reason = file_drop_reason(header)
        if reason is None and header.sop_instance_uid in seen_uids:
            reason = f"repeats SOPInstanceUID {header.sop_instance_uid} of another file"
        if reason is not None:
            dropped.append(drop_record(header.name, reason))
            continue
        seen_uids.add(header.sop_instance_uid)
        kept.append(header)

    _warn_not_dicom(headers)
    return kept, dropped


def _warn_not_dicom(headers: list[FileHeader]) -> None:
    names = sorted(header.name for header in headers if header.problem)
    if not names:
        return
    name_list = ", ".join(names[:NOT_DICOM_NAMES_SHOWN])
    if len(names) > NOT_DICOM_NAMES_SHOWN:
        name_list += ", ..."
    logger.warning(
        "series folder %s: left out %d of %d files that are not readable DICOM (%s). Run "
        "rsna inspect on the folder for each reason, then replace these files with the "
        "downloaded ones or remove them",
        Path(headers[0].path).parent,
        len(names),
        len(headers),
        name_list,
    )


def frames_with_geometry(
    headers: list[FileHeader],
) -> tuple[list[Frame], list[dict], list[str]]:
    """Expand files into frames; drop frames without position, orientation or PixelSpacing.

    Returns the frames, drop records and warnings (for multi-frame files whose frame
    positions had to be derived, see :func:`derive_multiframe_planes`).
    """
    frames: list[Frame] = []
    warnings: list[str] = []
    missing: dict[str, list[str]] = defaultdict(list)
    for header in headers:
        multi = header.number_of_frames > 1
        planes = header.frames
        if multi:
            planes, warning = derive_multiframe_planes(header)
            if warning:
                warnings.append(warning)
        for index, plane in enumerate(planes):
            frame = Frame(header=header, index=index if multi else None, plane=plane)
            problem = _geometry_problem(plane)
            if problem:
                missing[problem].append(header.name)
            else:
                frames.append(frame)
    dropped = [
        drop_record(describe_files(names), f"{problem}: cannot be placed in a volume")
        for problem, names in missing.items()
    ]
    return frames, dropped, warnings


def derive_multiframe_planes(header: FileHeader) -> tuple[tuple[FramePlane, ...], str | None]:
    """Give each frame of a multi-frame file its own position when the header does not.

    Some multi-frame files carry one position for all frames (legacy multi-frame objects,
    or converters that fill only the shared functional groups) or none at all. When the
    frames are not time points (no distinct TemporalPositionIndex) and an orientation
    and a slice spacing (SpacingBetweenSlices, else SliceThickness) are known, frame k is
    placed at ``first position + k * spacing * normal``, in frame order, with a warning.
    """
    planes = header.frames
    positions = {plane.position_mm for plane in planes}
    temporal = {plane.temporal_index for plane in planes} - {None}
    first = planes[0]
    if (len(positions) > 1 and None not in positions) or len(temporal) > 1:
        return planes, None
    spacing = first.spacing_between_slices_mm or first.slice_thickness_mm
    if first.orientation is None or not spacing:
        return planes, None
    row, column = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    origin = np.asarray(first.position_mm if first.position_mm is not None else (0.0, 0.0, 0.0))
    derived = tuple(
        replace(plane, position_mm=tuple(float(v) for v in origin + k * abs(spacing) * normal))
        for k, plane in enumerate(planes)
    )
    warning = (
        f"{header.name}: its {len(planes)} frames share one ImagePositionPatient or have "
        f"none; positions derived in frame order from the slice spacing {abs(spacing):g} mm "
        "along the normal (their order along the normal is an assumption)"
    )
    return derived, warning


def _geometry_problem(plane: FramePlane) -> str | None:
    if plane.orientation is None:
        return "no valid ImageOrientationPatient"
    if plane.position_mm is None:
        return "no valid ImagePositionPatient"
    if plane.pixel_spacing_mm is None:
        return "no valid PixelSpacing"
    row, column = np.asarray(plane.orientation[:3]), np.asarray(plane.orientation[3:])
    if np.linalg.norm(np.cross(row, column)) < 0.5:
        return "ImageOrientationPatient row and column cosines are not orthogonal"
    return None


def group_frames(frames: list[Frame]) -> list[FrameGroup]:
    """Group frames by series, matrix size, pixel spacing and orientation, largest first."""
    groups: list[list[Frame]] = []
    for frame in frames:
        for group in groups:
            if _same_stack(group[0], frame):
                group.append(frame)
                break
        else:
            groups.append([frame])
    groups.sort(key=len, reverse=True)
    return [_frame_group(group) for group in groups]


def _frame_group(frames: list[Frame]) -> FrameGroup:
    first = frames[0]
    return FrameGroup(
        frames=tuple(frames),
        series_uid=first.header.series_instance_uid,
        rows=first.header.rows,
        columns=first.header.columns,
        pixel_spacing_mm=first.plane.pixel_spacing_mm,
        orientation=first.plane.orientation,
    )


def _same_stack(reference: Frame, frame: Frame) -> bool:
    if (
        reference.header.series_instance_uid != frame.header.series_instance_uid
        or reference.header.rows != frame.header.rows
        or reference.header.columns != frame.header.columns
    ):
        return False
    spacing_a = np.asarray(reference.plane.pixel_spacing_mm)
    spacing_b = np.asarray(frame.plane.pixel_spacing_mm)
    if not np.allclose(spacing_a, spacing_b, rtol=PIXEL_SPACING_RTOL, atol=0.0):
        return False
    return _same_orientation(reference.plane.orientation, frame.plane.orientation)


def _same_orientation(first: tuple[float, ...], second: tuple[float, ...]) -> bool:
    limit = math.cos(math.radians(ORIENTATION_TOLERANCE_DEG))
    for start in (0, 3):
        a = np.asarray(first[start : start + 3])
        b = np.asarray(second[start : start + 3])
        cosine = float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b))
        if cosine < limit:
            return False
    return True
