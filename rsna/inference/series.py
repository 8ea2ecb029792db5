"""Series folders for inference: finding them, reading them and preparing the model input.

A series goes through the preprocess stage's own function,
:func:`rsna.preprocess.series.preprocess_series`, with the checkpoint's settings, then
through :func:`rsna.evaluation.prepare_image`, the crop or pad the evaluate stage applies.
A series that fails keeps its reason, and its SeriesInstanceUID comes from whichever
headers are readable, or from the folder name.
"""

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from rsna.dicom import SeriesError, read_headers
from rsna.evaluation import prepare_image
from rsna.preprocess.runner import REJECTED_ERRORS
from rsna.preprocess.series import SeriesJob, preprocess_series
from rsna.preprocess.settings import VolumeSpec
from rsna.uid import InvalidUIDError, validate_uid

logger = logging.getLogger(__name__)

STATUS_OK = "ok"
# DICOM PS3.10 section 7.1: a 128-byte preamble, then the four bytes "DICM".
DICOM_PREAMBLE_BYTES = 128
DICOM_PREFIX = b"DICM"
# Failures of one series that give it the fallback prediction: what the preprocess stage
# rejects a series for, plus files that vanish or cannot be opened while being read.
SERIES_ERRORS = (*REJECTED_ERRORS, OSError)
# Entries of the reader's dropped list named in a fallback status. The status is one cell
# of the output table, and a folder of stray files can have hundreds of entries.
MAX_DROPPED_SHOWN = 5


class SeriesPathError(ValueError):
    """A path given for inference that is not a folder."""


@dataclasses.dataclass(frozen=True)
class PreparedSeries:
    """One series ready for the network, or the reason it is not.

    ``image`` is float32 ``(1, 1, z, y, x)`` with the checkpoint's input shape (its
    preprocessing shape when it has none), or None when the series failed. ``status`` is
    :data:`STATUS_OK` or the reason it failed.
    """

    series_dir: str
    series_uid: str
    image: torch.Tensor | None
    status: str


def is_dicom_file(path: Path) -> bool:
    """Return whether ``path`` is named ``*.dcm`` or carries the DICOM file prefix."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(DICOM_PREAMBLE_BYTES)
            return handle.read(len(DICOM_PREFIX)) == DICOM_PREFIX
    except OSError:
        return False


def contains_dicom_files(folder: Path) -> bool:
    """Return whether a visible file directly inside ``folder`` is a DICOM file."""
    return any(
        is_dicom_file(path)
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".")
    )


def find_series_dirs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Return the series folders of ``paths``, in the order given, each folder once.

    A path that directly contains DICOM files is one series. Otherwise each visible
    subfolder is a series, in name order. A folder with neither is kept as one series,
    so that it gets a fallback row saying why. Raises :class:`SeriesPathError` for a
    path that is not a folder.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise SeriesPathError(
                f"series path {path} is not a folder; pass a folder of DICOM files "
                "or a folder whose subfolders are series"
            )
        if contains_dicom_files(path):
            found.append(path)
            continue
        subfolders = sorted(
            child for child in path.iterdir() if child.is_dir() and not child.name.startswith(".")
        )
        if not subfolders:
            logger.warning("Folder %s has no DICOM files and no subfolders", path)
        found.extend(subfolders or [path])
    return _unique_folders(found)


def _unique_folders(folders: list[Path]) -> list[Path]:
    seen: set[Path] = set()
    unique = []
    for folder in folders:
        resolved = folder.resolve()
        if resolved in seen:
            logger.warning("Series folder %s was given more than once; scored once", folder)
            continue
        seen.add(resolved)
        unique.append(folder)
    return unique


def prepare_series(
    series_dir: str | os.PathLike,
    *,
    spec: VolumeSpec,
    input_shape: tuple[int, int, int] | None,
) -> PreparedSeries:
    """Read and preprocess one series folder into the network input, or record why not.

    Every failure becomes a :class:`PreparedSeries` without image and a WARNING (an
    ERROR with traceback for an unexpected exception) naming the folder and the reason.
    """
    series_dir = Path(series_dir)
    try:
        volume, record = preprocess_series(SeriesJob(series_dir=series_dir), spec=spec)
    except SERIES_ERRORS as error:
        reason = str(error) or type(error).__name__
        if isinstance(error, SeriesError) and error.dropped:
            reason = f"{reason.rstrip('.')}. Dropped: {describe_dropped(error.dropped)}"
        logger.warning("Series folder %s cannot be read: %s", series_dir, reason)
        return _failed(series_dir, reason)
    except Exception as error:
        # One bad series must never abort a whole submission, so a failure that the
        # reader does not anticipate (a decoder bug, for example) still gives a row.
        # The traceback is logged because it may be a bug in this package.
        logger.exception("Series folder %s failed with an unexpected error", series_dir)
        return _failed(series_dir, f"unexpected {type(error).__name__}: {error}")

    image = prepare_image(volume, input_shape=input_shape)
    return PreparedSeries(str(series_dir), record["SeriesInstanceUID"], image, STATUS_OK)


def describe_dropped(dropped: Sequence[dict], *, limit: int = MAX_DROPPED_SHOWN) -> str:
    """Return the reader's dropped entries as "what: reason" joined by "; ", at most ``limit``."""
    shown = [f"{entry['what']}: {entry['reason']}" for entry in dropped[:limit]]
    if len(dropped) > limit:
        shown.append(f"{len(dropped) - limit} more (rsna inspect SERIES_DIR lists all)")
    return "; ".join(shown)


def _failed(series_dir: Path, reason: str) -> PreparedSeries:
    return PreparedSeries(str(series_dir), series_uid_from_headers(series_dir), None, reason)


def series_uid_from_headers(series_dir: Path) -> str:
    """Return the most frequent valid SeriesInstanceUID in the folder's headers.

    Falls back to the folder name when no header is readable or none has a valid UID.
    """
    try:
        headers = read_headers(series_dir)
    except OSError:
        headers = []
    counts = Counter(
        header.series_instance_uid
        for header in headers
        if header.problem is None and _is_valid_uid(header.series_instance_uid)
    )
    if counts:
        return counts.most_common(1)[0][0]
    return Path(series_dir).resolve().name


def _is_valid_uid(uid: str) -> bool:
    try:
        validate_uid(uid)
    except InvalidUIDError:
        return False
    return True
