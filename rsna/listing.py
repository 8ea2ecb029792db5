"""Listing of the raw series folders: the small file DVC watches instead of the DICOM files.

The challenge download has about a million DICOM files. A DVC dependency on the whole
``series`` folder makes DVC hash every file on each ``dvc status``, which took 30 to 60 s and
4 GB of memory per call at that size (benchmarks/README.md, "DVC with a million raw
files"). The ``listing`` stage instead writes one JSON line per series folder: its name,
its file count and a SHA-256 of every file's name, size and modification time. That takes
about 5 s per million files, and the file changes whenever a series is added, removed or
rewritten, so the stages that read the DICOM files depend on it.
"""

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from rsna.fileio import write_jsonl
from rsna.logs import progress_disabled

logger = logging.getLogger(__name__)

__all__ = ["ListingError", "SeriesListing", "list_series_folders", "write_series_listing"]


class ListingError(ValueError):
    """The series root cannot be listed."""


@dataclass(frozen=True)
class SeriesListing:
    """One series folder: ``name`` (the SeriesInstanceUID in the Kaggle layout), the number
    of files the reader would read, and ``sha256``, the hex digest of their names, sizes in
    bytes and modification times in ns."""

    name: str
    files: int
    sha256: str


def list_series_folders(series_root: str | os.PathLike) -> list[SeriesListing]:
    """List every folder directly inside ``series_root``, sorted by name.

    Files are counted as :func:`rsna.dicom.read_headers` reads them: regular files directly
    inside the folder whose names do not start with a dot. Entries of ``series_root`` that
    are not folders are logged and left out, since no stage reads them. Raises
    :class:`ListingError` when ``series_root`` is not a folder.
    """
    root = Path(series_root)
    if not root.is_dir():
        raise ListingError(
            f"series folder {root} does not exist or is not a folder; set data.root in "
            "params.yaml to a dataset in the Kaggle layout (train.csv, series/<UID>/...)"
        )
    entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    folders = [entry for entry in entries if entry.is_dir()]
    for entry in entries:
        if not entry.is_dir():
            logger.warning("%s is not a series folder; left out of the listing", entry.path)

    progress = tqdm(folders, desc="list series", unit="series", disable=progress_disabled())
    return [_list_folder(entry) for entry in progress]


def _list_folder(folder: os.DirEntry) -> SeriesListing:
    digest = hashlib.sha256()
    files = 0
    for entry in sorted(os.scandir(folder.path), key=lambda entry: entry.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        status = entry.stat()
        digest.update(f"{entry.name}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
        files += 1
    return SeriesListing(name=folder.name, files=files, sha256=digest.hexdigest())


def write_series_listing(*, series_root: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Write the listing of ``series_root`` to ``out_path`` (JSON lines, atomically).

    Each line contains the fields of :class:`SeriesListing`. Returns the number of series.
    """
    listing = list_series_folders(series_root)
    write_jsonl(out_path, (asdict(item) for item in listing))

    logger.info(
        "listed %d series folders (%d files) of %s",
        len(listing),
        sum(item.files for item in listing),
        series_root,
    )
    return len(listing)
