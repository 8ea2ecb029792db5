"""Fingerprint keys that tell whether a saved volume is still current.

A key is the SHA-256 of everything that decides a saved volume and its index record:

- each file the reader reads (see :func:`series_files`): its name, its size in bytes, its
  first bytes (:data:`HEAD_BYTES`, or more in a series of few files: see
  :data:`HEAD_BUDGET_BYTES`) and its last :data:`TAIL_BYTES`, or the whole file when it
  is smaller;
- the :class:`~rsna.preprocess.settings.VolumeSpec`;
- the job's expected SeriesInstanceUID, train.csv Modality and localizer points;
- the source code of the modules that compute the voxels and the versions of numpy,
  torch and pydicom, so a change of code or library reprocesses everything.

Modification times are left out on purpose: ``dvc checkout``, ``git clone`` and copies
give files new mtimes without changing them, and a key built on mtimes would then
reprocess every series. Hashing every byte would cost about as much as decoding the
series. The first bytes hold the DICOM header (UIDs, geometry, RescaleSlope and
RescaleIntercept), so an edited header changes the key even when the size stays the
same.

NOTE: an in-place edit that keeps the file size and changes neither the head nor the tail
bytes (pixel values in the middle, or a value past the hashed head of a long header) goes
unnoticed. Delete the volume (or run with ``--force``) after such an edit.
"""

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import torch

from rsna.preprocess.settings import VolumeSpec

# Bytes hashed at the start of every file: the DICOM header, including the private groups
# that precede the image pixel group (0028). Single-frame headers are mostly 1 to 8 KiB.
HEAD_BYTES = 16 * 1024
# Bytes hashed at the start of the files of one series together, when that is more than
# HEAD_BYTES per file: Enhanced multi-frame headers (per-frame geometry and rescale values)
# reach about 100 KiB, and such a series is one file.
HEAD_BUDGET_BYTES = 4 * 1024 * 1024
# Bytes hashed at the end of every file (pixel data), a cheap check beyond the size.
TAIL_BYTES = 4 * 1024
# Bump when the key layout changes, so old keys never match.
KEY_FORMAT = 1
# Sources (relative to the rsna package) that decide the saved voxels; a change in any of
# them changes every key.
_VOXEL_SOURCES = ("dicom", "preprocess/series.py", "preprocess/transforms.py")


def series_files(series_dir: Path) -> list[Path]:
    """Return the files the DICOM reader reads: those directly in the folder, not hidden.

    Sorted by name, as :func:`rsna.dicom.read_headers` lists them. Raises
    ``FileNotFoundError`` or ``NotADirectoryError`` for a missing folder.
    """
    if not series_dir.exists():
        raise FileNotFoundError(f"series folder {series_dir} not found")
    if not series_dir.is_dir():
        raise NotADirectoryError(f"series folder {series_dir} is not a folder")
    with os.scandir(series_dir) as entries:
        names = sorted(
            entry.name for entry in entries if entry.is_file() and not entry.name.startswith(".")
        )
    return [series_dir / name for name in names]


def series_key(
    series_dir: Path,
    *,
    spec: VolumeSpec,
    job_fields: dict,
) -> str:
    """Return the hex SHA-256 key of a series folder, the volume spec and the job fields.

    ``job_fields`` is JSON-serializable (the expected UID, Modality and localizers).
    """
    digest = hashlib.sha256()
    header = {
        "key_format": KEY_FORMAT,
        "code": code_digest(),
        "versions": _library_versions(),
        "spec": {
            "spacing_mm": list(spec.spacing_mm),
            "shape": list(spec.shape),
            "ct_window_hu": list(spec.ct_window_hu),
            "mr_percentiles": list(spec.mr_percentiles),
        },
        "job": job_fields,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())

    files = series_files(series_dir)
    head_bytes = max(HEAD_BYTES, HEAD_BUDGET_BYTES // max(1, len(files)))
    for path in files:
        size, edges = _file_edges(path, head_bytes=head_bytes)
        digest.update(path.name.encode() + b"\0" + size.to_bytes(8, "little"))
        digest.update(edges)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a whole file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def code_digest() -> str:
    """Return the SHA-256 of the source files that decide the saved voxels."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for source in _VOXEL_SOURCES:
        path = root / source
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _library_versions() -> dict:
    # The local build suffix (+cpu, +cu128) is left out, so the CPU and CUDA builds of one
    # torch release share keys. Preprocessing runs on the CPU with both.
    return {
        "numpy": np.__version__,
        "torch": torch.__version__.split("+")[0],
        "pydicom": pydicom.__version__,
    }


def _file_edges(path: Path, *, head_bytes: int) -> tuple[int, bytes]:
    """Return the size of a file and its head and tail bytes (all of a small file)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(descriptor).st_size
        if size <= head_bytes + TAIL_BYTES:
            return size, os.pread(descriptor, size, 0)
        head = os.pread(descriptor, head_bytes, 0)
        return size, head + os.pread(descriptor, TAIL_BYTES, size - TAIL_BYTES)
    finally:
        os.close(descriptor)
