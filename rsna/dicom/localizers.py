"""Mapping of ``train_localizers.csv`` points into voxel coordinates of a :class:`Volume`."""

import numpy as np

from rsna.dicom.errors import SeriesError
from rsna.dicom.headers import FramePlane
from rsna.dicom.volume import Volume


def localizer_to_voxel(
    volume: Volume, *, sop_instance_uid: str, x: float, y: float, frame: int | None = None
) -> tuple[float, float, float]:
    """Return the (z, y, x) voxel coordinates in ``volume.voxels`` of a point on one image.

    ``x`` is the column and ``y`` the row, in pixels, of SOP instance ``sop_instance_uid``.
    Pixel centres lie at integer coordinates, because ImagePositionPatient is the centre
    of the first pixel. ``frame`` is the 0-based frame of a multi-frame file. The point goes
    through patient space: ``IPP + x * PixelSpacing[1] * row cosine + y * PixelSpacing[0]
    * column cosine``, then into the volume's index space, so z resampling, de-shearing,
    reorientation and oblique resampling are all accounted for. The result is a float
    and may lie outside the array when the point does. Raises SeriesError when the
    instance (or frame) is not part of the chosen stack.
    """
    plane = _find_plane(volume, sop_instance_uid, frame)
    row_cosine = np.asarray(plane.orientation[:3], dtype=np.float64)
    column_cosine = np.asarray(plane.orientation[3:], dtype=np.float64)
    row_spacing, column_spacing = plane.pixel_spacing_mm
    position = (
        np.asarray(plane.position_mm, dtype=np.float64)
        + x * column_spacing * row_cosine
        + y * row_spacing * column_cosine
    )
    voxel = volume.patient_to_voxel(tuple(position))
    return tuple(float(v) for v in voxel)


def _find_plane(volume: Volume, sop_instance_uid: str, frame: int | None) -> FramePlane:
    planes = volume.frame_planes
    # A single-frame instance also accepts frame 0, as some CSV rows carry 'f': 0.
    if frame in (None, 0) and (sop_instance_uid, None) in planes:
        return planes[(sop_instance_uid, None)]
    if frame is not None and (sop_instance_uid, frame) in planes:
        return planes[(sop_instance_uid, frame)]
    frames_of_instance = sorted(f for uid, f in planes if uid == sop_instance_uid and f is not None)
    if (sop_instance_uid, None) in planes:
        problem = f"is a single-frame instance, but frame {frame} was given"
        fix = "use frame 0 or None for single-frame files"
    elif frames_of_instance and frame is None:
        problem = (
            f"is a multi-frame instance ({len(frames_of_instance)} frames in the stack) but "
            "no frame was given"
        )
        fix = "pass the 0-based frame index ('f' in the coordinates)"
    elif frames_of_instance:
        problem = (
            f"has no frame {frame} in the chosen stack (frames "
            f"{frames_of_instance[0]}..{frames_of_instance[-1]})"
        )
        fix = "check the 'f' value of the localizer"
    else:
        problem = (
            "is not part of the chosen stack (it is missing or was dropped, see Volume.dropped)"
        )
        fix = "check the localizer's SOPInstanceUID against the series files"
    raise SeriesError(
        f"series {volume.series_uid}: SOPInstanceUID {sop_instance_uid} {problem}; {fix}",
        series=volume.series_uid,
        dropped=volume.dropped,
    )
