"""One series: DICOM folder -> float16 training volume and its index record.

The saved volume is float16 ``(z, y, x)`` in canonical LPS orientation (see
:mod:`rsna.dicom`), resampled to ``VolumeSpec.spacing_mm``, centre-cropped or padded to
``VolumeSpec.shape``, with intensities in [0, 1]. The DICOM Modality of the decoded volume
picks the intensity mapping: CT is windowed in HU, MR is scaled between two percentiles,
so the ``Modality`` column of train.csv (CTA, MRA, MRI T2, MRI T1post) never decides it.
"""

import dataclasses
import logging
from pathlib import Path

import numpy as np

from rsna.dicom import SeriesError, Volume, localizer_to_voxel, read_series
from rsna.preprocess.settings import VolumeSpec
from rsna.preprocess.transforms import (
    apply_ct_window,
    apply_percentile_scaling,
    centre_crop_or_pad_window,
    resample_trilinear,
    resampled_coordinates,
)
from rsna.uid import validate_uid

logger = logging.getLogger(__name__)

# Saved coordinates are rounded to this many decimals (voxels) so index files are stable text.
COORDINATE_DECIMALS = 3


class PreprocessError(ValueError):
    """A series that was read but cannot become a training volume; the message gives the reason."""


@dataclasses.dataclass(frozen=True)
class Localizer:
    """One point of ``train_localizers.csv``: column ``x`` and row ``y`` in pixels of an image.

    ``frame`` is the 0-based frame of a multi-frame file, else None.
    """

    sop_instance_uid: str
    x: float
    y: float
    frame: int | None
    location: str


@dataclasses.dataclass(frozen=True)
class SeriesJob:
    """A series to preprocess.

    ``series_uid`` is the SeriesInstanceUID the caller expects (from the manifest), or None
    to take it from the DICOM headers. ``modality`` is the train.csv Modality, copied into
    the index record (None when unknown). ``size_hint`` orders work, largest first.
    ``reported_dir`` is the folder as logs and the rejects file show it (default: the path).
    """

    series_dir: Path
    series_uid: str | None = None
    modality: str | None = None
    localizers: tuple[Localizer, ...] = ()
    size_hint: int = 0
    reported_dir: str = ""

    def __post_init__(self) -> None:
        if not self.reported_dir:
            object.__setattr__(self, "reported_dir", str(self.series_dir))


def preprocess_series(job: SeriesJob, *, spec: VolumeSpec) -> tuple[np.ndarray, dict]:
    """Read and transform one series; return the float16 volume and its index record.

    The record has every field of a ``volumes_index.jsonl`` line except ``sha256``, which
    the runner adds once the file is written. Peak memory is the reader's
    float32 volume (twice the int16 size of the series), the float32 resampled volume
    before cropping (small when the target spacing is coarser than the source) and the
    float16 result. Nothing else scales with the series length. Raises
    :class:`rsna.dicom.SeriesError` for a series the reader rejects and
    :class:`PreprocessError` or :class:`rsna.preprocess.transforms.TransformError` for one
    that cannot be transformed.
    """
    volume = read_series(job.series_dir)
    series_uid = _output_uid(job, volume)
    dicom_modality = _dicom_modality(volume, series_uid)
    source_shape = tuple(int(n) for n in volume.voxels.shape)
    source_spacing_mm = tuple(float(s) for s in volume.spacing_mm)
    localizers_zyx = _map_localizers(volume, job.localizers, series_uid=series_uid)

    resampled = resample_trilinear(
        volume.voxels, spacing_mm=source_spacing_mm, target_spacing_mm=spec.spacing_mm
    )
    # Release the full-resolution volume before the remaining, smaller steps.
    del volume
    saved, intensity_range, offset = _normalize_into_shape(
        resampled, dicom_modality=dicom_modality, spec=spec, series_uid=series_uid
    )

    record = {
        "SeriesInstanceUID": series_uid,
        "file": f"{series_uid}.npy",
        "shape": list(spec.shape),
        "spacing_mm": list(spec.spacing_mm),
        "source_shape": list(source_shape),
        "source_spacing_mm": list(source_spacing_mm),
        "Modality": job.modality,
        "dicom_modality": dicom_modality,
        "normalization": "ct_window_hu" if dicom_modality == "CT" else "mr_percentiles",
        "intensity_range": [round(v, 4) for v in intensity_range],
        "localizers_zyx": _to_saved_coordinates(
            localizers_zyx, source_spacing_mm=source_spacing_mm, spec=spec, offset=offset
        ),
    }
    return saved, record


def _output_uid(job: SeriesJob, volume: Volume) -> str:
    found = validate_uid(str(volume.series_uid), what=f"SeriesInstanceUID in {job.series_dir}")
    if job.series_uid is not None and job.series_uid != found:
        raise PreprocessError(
            f"series folder {job.series_dir} contains SeriesInstanceUID {found}, but the "
            f"manifest expects {job.series_uid}; rebuild the manifest or fix the folder"
        )
    return found


def _dicom_modality(volume: Volume, series_uid: str) -> str:
    modality = str(volume.modality).upper()
    if modality not in ("CT", "MR"):
        raise PreprocessError(
            f"series {series_uid}: DICOM Modality {volume.modality!r} has no intensity mapping; "
            "expected CT (windowed in HU) or MR (percentile scaling)"
        )
    return modality


def _normalize_into_shape(
    resampled: np.ndarray, *, dicom_modality: str, spec: VolumeSpec, series_uid: str
) -> tuple[np.ndarray, tuple[float, float], tuple[int, int, int]]:
    """Crop, map intensities to [0, 1], then pad with 0 into a float16 array of spec.shape.

    MR percentiles are taken over the cropped voxels, before padding, so the padding
    (which is not image) never shifts them.
    """
    source_window, target_window, offset = centre_crop_or_pad_window(resampled.shape, spec.shape)
    region = resampled[source_window]

    if dicom_modality == "CT":
        apply_ct_window(region, window_hu=spec.ct_window_hu)
        intensity_range = spec.ct_window_hu
    else:
        region, intensity_range = apply_percentile_scaling(region, percentiles=spec.mr_percentiles)
        if intensity_range[1] <= intensity_range[0]:
            logger.warning(
                "series %s: MR percentiles %s are both %.4g, the image is constant; saved as zeros",
                series_uid,
                spec.mr_percentiles,
                intensity_range[0],
            )

    saved = np.zeros(spec.shape, dtype=np.float16)
    saved[target_window] = region
    return saved, intensity_range, offset


def _map_localizers(
    volume: Volume, localizers: tuple[Localizer, ...], *, series_uid: str
) -> list[tuple[tuple[float, float, float], str]]:
    """Return each localizer as canonical voxel coordinates ``(z, y, x)`` of ``volume``.

    A point the reader cannot place (its image was dropped, for example) is logged and left
    out; the volume itself is still usable.
    """
    mapped = []
    for point in localizers:
        try:
            zyx = localizer_to_voxel(
                volume,
                sop_instance_uid=point.sop_instance_uid,
                x=point.x,
                y=point.y,
                frame=point.frame,
            )
        except SeriesError as error:
            logger.warning("series %s: localizer %s skipped: %s", series_uid, point.location, error)
            continue
        mapped.append((tuple(float(c) for c in zyx), point.location))
    return mapped


def _to_saved_coordinates(
    localizers_zyx: list[tuple[tuple[float, float, float], str]],
    *,
    source_spacing_mm: tuple[float, float, float],
    spec: VolumeSpec,
    offset: tuple[int, int, int],
) -> list[dict]:
    """Map canonical voxel coordinates through the resampling and the crop or pad.

    Points that fall outside the saved volume (cropped away) keep their coordinates, which
    then lie outside ``[0, shape)``; users must check the bounds.
    """
    if not localizers_zyx:
        return []
    points = np.array([zyx for zyx, _ in localizers_zyx], dtype=np.float64)
    resampled = resampled_coordinates(
        points, spacing_mm=source_spacing_mm, target_spacing_mm=spec.spacing_mm
    )
    saved = resampled + np.asarray(offset, dtype=np.float64)
    return [
        {
            "z": round(float(z), COORDINATE_DECIMALS),
            "y": round(float(y), COORDINATE_DECIMALS),
            "x": round(float(x), COORDINATE_DECIMALS),
            "location": location,
        }
        for (z, y, x), (_, location) in zip(saved, localizers_zyx, strict=True)
    ]
