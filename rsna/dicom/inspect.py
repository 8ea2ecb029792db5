"""The JSON report of ``rsna inspect``: what the reader makes of one series folder."""

import os
from pathlib import Path

from rsna.dicom.errors import SeriesError
from rsna.dicom.reader import read_series


def inspect_series(series_dir: str | os.PathLike) -> dict:
    """Read a series and return the report ``rsna inspect`` prints; never raises SeriesError.

    Keys: ``series_dir``, ``series_uid``, ``verdict`` ("volume" or "rejected"), ``reason``
    (the rejection, or what was resampled, or None), ``shape`` and ``spacing_mm`` (z, y, x)
    of the chosen stack as acquired (z along the slice normal, after z was made uniform,
    before reorientation), ``canonical_shape`` and ``canonical_spacing_mm`` after
    reorientation, ``modality``, ``transfer_syntaxes``, ``dropped`` and ``warnings``.
    Geometry keys are None for a rejected series. For a volume whose ``reason`` names
    corrections (gantry tilt, uneven z spacing, oblique resampling), ``warnings`` repeats
    them as one entry starting with "corrected: ", so that a resampled volume never shows
    an empty warnings list.
    """
    series_dir = Path(series_dir)
    try:
        volume = read_series(series_dir)
    except SeriesError as error:
        return {
            "series_dir": str(series_dir),
            "series_uid": error.series or None,
            "verdict": "rejected",
            "reason": str(error),
            "shape": None,
            "spacing_mm": None,
            "canonical_shape": None,
            "canonical_spacing_mm": None,
            "modality": None,
            "transfer_syntaxes": [],
            "dropped": list(error.dropped),
            "warnings": [],
        }
    return {
        "series_dir": str(series_dir),
        "series_uid": volume.series_uid,
        "verdict": "volume",
        "reason": volume.reason,
        "shape": list(volume.acquired_shape),
        "spacing_mm": list(volume.acquired_spacing_mm),
        "canonical_shape": list(volume.shape),
        "canonical_spacing_mm": list(volume.spacing_mm),
        "modality": volume.modality,
        "transfer_syntaxes": list(volume.transfer_syntaxes),
        "dropped": list(volume.dropped),
        "warnings": [*volume.warnings, *_corrections(volume.reason)],
    }


def _corrections(reason: str | None) -> list[str]:
    # Volume.reason joins its corrections with "; ", which the z-spacing text also
    # contains, so it is reported as one entry instead of being split.
    return [] if reason is None else [f"corrected: {reason}"]
