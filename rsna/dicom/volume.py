"""The :class:`Volume` that :func:`rsna.dicom.read_series` returns."""

from dataclasses import dataclass, field

import numpy as np

from rsna.dicom.headers import FramePlane


@dataclass(frozen=True, eq=False)
class Volume:
    """A DICOM series as a float32 volume in canonical LPS orientation, with its geometry.

    ``voxels`` is float32 ``(z, y, x)``: the modality LUT applied (Hounsfield units for
    CT, scanner units for MR), PixelPaddingValue set to air (-1024 HU for CT, 0 for MR),
    MONOCHROME1 inverted (see :func:`rsna.dicom.pixels.invert_monochrome1`), and
    index z increasing toward superior, y toward posterior, x toward the patient's left.
    ``spacing_mm``, ``origin_mm`` and the rows of ``direction`` are in the same (z, y, x)
    order (see :mod:`rsna.dicom` for the exact convention). ``acquired_shape`` and
    ``acquired_spacing_mm`` describe the chosen stack as acquired (z along the slice normal,
    y the image row index, x the image column index), after z was made uniform and
    before reorientation. ``dropped`` lists files or groups left out, each as
    ``{"what": ..., "reason": ...}``, plus ``shape`` and ``spacing_mm`` for another stack
    of the folder that was not chosen. ``reason`` describes what was resampled and why,
    or is None. ``frame_planes`` maps (SOPInstanceUID, frame index or None for single-frame
    files) to the plane of each frame of the chosen stack, for
    :func:`rsna.dicom.localizer_to_voxel`.
    """

    voxels: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: np.ndarray
    series_uid: str
    modality: str
    acquired_shape: tuple[int, int, int]
    acquired_spacing_mm: tuple[float, float, float]
    transfer_syntaxes: tuple[str, ...]
    dropped: tuple[dict, ...] = ()
    warnings: tuple[str, ...] = ()
    reason: str | None = None
    frame_planes: dict[tuple[str, int | None], FramePlane] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(z, y, x)`` of ``voxels``."""
        return tuple(int(size) for size in self.voxels.shape)

    def voxel_to_patient(self, voxel_zyx: tuple[float, float, float]) -> np.ndarray:
        """Return the LPS patient position (x, y, z) in mm of a (z, y, x) voxel index."""
        steps = np.asarray(voxel_zyx, dtype=np.float64) * np.asarray(self.spacing_mm)
        position_zyx = np.asarray(self.origin_mm) + steps @ self.direction
        return position_zyx[::-1]

    def patient_to_voxel(self, position_xyz: tuple[float, float, float]) -> np.ndarray:
        """Return the (z, y, x) voxel index (float) of an LPS patient position (x, y, z) in mm."""
        offset_zyx = np.asarray(position_xyz, dtype=np.float64)[::-1] - np.asarray(self.origin_mm)
        steps = np.linalg.solve(self.direction.T, offset_zyx)
        return steps / np.asarray(self.spacing_mm)
