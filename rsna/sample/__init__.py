"""Synthetic sample dataset in the layout of the RSNA challenge download.

:func:`write_sample_dataset` writes ``train.csv``, ``train_localizers.csv`` and
``series/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. The series are CT angiography and
MR (TOF angiography, T2, post-contrast T1) of a simplified head with a skull and a
circle of Willis. Positive series add bright spheres on the vessel of each labelled
location, and the localizer rows point at their centres. The same seed gives
byte-identical files with the same numpy, pydicom and pylibjpeg-rle versions, so DVC
hashes of the sample are reproducible.
"""

import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from rsna.labels import LOCATION_COLUMNS
from rsna.logs import progress_disabled
from rsna.sample.plan import SeriesPlan, plan_dataset
from rsna.sample.writer import write_series, write_tables
from rsna.signals import process_pool

logger = logging.getLogger(__name__)

__all__ = ["SampleSettings", "SampleSummary", "write_sample_dataset"]

MIN_MATRIX = 16
MIN_SLICES = 8
# Modification time of every file written, in seconds since the epoch (2025-01-01 UTC). The
# listing stage fingerprints names, sizes and modification times, so a sample written
# again from the same seed must carry the same times to give the same dvc.lock.
FILE_MTIME_S = 1_735_689_600


@dataclass(frozen=True)
class SampleSettings:
    """The ``sample`` section of params.yaml."""

    series: int = 300
    seed: int = 2025
    workers: int = 0

    def __post_init__(self) -> None:
        for name in ("series", "seed", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class SampleSummary:
    """Summary of a dataset written by :func:`write_sample_dataset`.

    ``positives_per_location`` counts the positive series of each location, in
    train.csv column order.
    """

    root: Path
    series: int
    patients: int
    files: int
    positives_per_location: dict[str, int]


def write_sample_dataset(
    out_dir: str | os.PathLike,
    *,
    series: int,
    seed: int,
    matrix: int | None = None,
    slices: int | None = None,
    noise: float = 1.0,
    workers: int = 0,
) -> SampleSummary:
    """Write a synthetic dataset of ``series`` series into ``out_dir``, replacing it whole.

    ``matrix`` (Rows = Columns) and ``slices`` fix the grid of every series, for quick
    test data; by default each series draws 96 to 128 pixels and 40 to 90 slices over
    the same field of view. ``noise`` scales the Gaussian noise (0 gives noise-free
    images). ``workers`` is the number of processes, 0 for one per CPU core; the output
    does not depend on it. ``series = 0`` writes the two CSV headers and an empty
    ``series`` folder.

    The dataset is built in a temporary folder beside ``out_dir`` and renamed into place,
    so a crash never leaves a partial dataset at ``out_dir``.
    """
    _validate_arguments(series=series, matrix=matrix, slices=slices, noise=noise, workers=workers)
    out_dir = Path(out_dir)
    plans = plan_dataset(series=series, seed=seed, matrix=matrix, slices=slices)
    logger.info("writing %d synthetic series (seed %d) to %s", series, seed, out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / "series").mkdir()
        files = _write_all_series(plans, staging / "series", noise, workers)
        write_tables(plans, staging)
        _set_modification_times(staging, FILE_MTIME_S)
        staging.chmod(0o755)
        _replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    summary = _summarize(plans, out_dir, files)
    logger.info(
        "wrote %d series of %d patients (%d files) to %s",
        summary.series,
        summary.patients,
        summary.files,
        out_dir,
    )
    return summary


def _validate_arguments(
    *, series: int, matrix: int | None, slices: int | None, noise: float, workers: int
) -> None:
    if series < 0:
        raise ValueError(f"series must be >= 0, got {series}")
    if matrix is not None and matrix < MIN_MATRIX:
        raise ValueError(f"matrix must be >= {MIN_MATRIX} pixels or None, got {matrix}")
    if slices is not None and slices < MIN_SLICES:
        raise ValueError(f"slices must be >= {MIN_SLICES} or None, got {slices}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = one per CPU core), got {workers}")


def _write_all_series(
    plans: list[SeriesPlan], series_root: Path, noise: float, workers: int
) -> int:
    """Render and write every series, in parallel processes when ``workers`` allows.

    SIGTERM or an error stops the worker processes at once (see
    :func:`rsna.signals.process_pool`), before the caller deletes the staging folder.
    """
    workers = min(workers or os.cpu_count() or 1, max(len(plans), 1))
    write = partial(_write_one, series_root=series_root, noise=noise)
    progress = partial(
        tqdm, total=len(plans), desc="sample series", unit="series", disable=progress_disabled()
    )
    if workers == 1:
        return sum(progress(map(write, plans)))
    with process_pool(workers) as executor:
        return sum(progress(executor.map(write, plans, chunksize=2)))


def _write_one(plan: SeriesPlan, *, series_root: Path, noise: float) -> int:
    return write_series(plan, series_root, noise)


def _set_modification_times(folder: Path, mtime_s: int) -> None:
    """Give every file and folder under ``folder`` (itself included) the time ``mtime_s``."""
    for path in folder.rglob("*"):
        os.utime(path, (mtime_s, mtime_s))
    os.utime(folder, (mtime_s, mtime_s))


def _replace_folder(new: Path, destination: Path) -> None:
    """Move ``new`` to ``destination``, deleting an old ``destination`` only after the move.

    Two renames: between them ``destination`` does not exist, which readers see as a
    missing dataset rather than a partial one.
    """
    if not destination.exists():
        new.replace(destination)
        return
    old = Path(tempfile.mkdtemp(prefix=f".tmp-{destination.name}.old.", dir=destination.parent))
    destination.replace(old / destination.name)
    new.replace(destination)
    shutil.rmtree(old)


def _summarize(plans: list[SeriesPlan], root: Path, files: int) -> SampleSummary:
    counts = Counter(aneurysm.location for plan in plans for aneurysm in plan.patient.aneurysms)
    positives = {location: counts[location] for location in LOCATION_COLUMNS}
    return SampleSummary(
        root=root,
        series=len(plans),
        patients=len({plan.patient.PatientID for plan in plans}),
        files=files,
        positives_per_location=positives,
    )
