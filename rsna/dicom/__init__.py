"""DICOM series to volume: header pass, stack selection, geometry, pixel decode.

Conventions (the package-wide ones are in :mod:`rsna`):

- Patient coordinates are DICOM's LPS system: +x toward the patient's left, +y toward
  posterior, +z toward superior (head), in mm.
- :class:`Volume.voxels` is float32 ``(z, y, x)`` in canonical LPS orientation: index z
  increases toward superior, y toward posterior, x toward the patient's left.
- Every geometric triple of a :class:`Volume` is in the same ``(z, y, x)`` order as the
  array: ``spacing_mm``, ``origin_mm`` (the patient (z, y, x) = (S, P, L) coordinates of
  the centre of voxel ``[0, 0, 0]``, that is ImagePositionPatient reversed) and the rows
  of ``direction`` (unit vector of each array axis, written in patient (z, y, x)
  components). The centre of voxel ``(k, j, i)`` lies at
  ``origin_mm + k * spacing_mm[0] * direction[0] + j * spacing_mm[1] * direction[1]
  + i * spacing_mm[2] * direction[2]``; ``direction`` is the identity unless a slightly
  oblique acquisition was only permuted and flipped, not resampled.
- Slices are ordered by ImagePositionPatient projected on the slice normal
  (row cosine x column cosine), never by InstanceNumber or file name.

To read each file's header once when both a summary and the volume are needed (as at
inference), call ``headers = read_headers(folder)`` and pass ``headers=headers`` to
:func:`scan_series` and :func:`read_series`. The records are picklable, so a worker
process can return them.
"""

from rsna.dicom.errors import SeriesError
from rsna.dicom.headers import FileHeader, read_headers
from rsna.dicom.inspect import inspect_series
from rsna.dicom.localizers import localizer_to_voxel
from rsna.dicom.reader import read_series
from rsna.dicom.summary import SeriesSummary, scan_series
from rsna.dicom.volume import Volume

__all__ = [
    "FileHeader",
    "SeriesError",
    "SeriesSummary",
    "Volume",
    "inspect_series",
    "localizer_to_voxel",
    "read_headers",
    "read_series",
    "scan_series",
]
