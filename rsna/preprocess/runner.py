"""Dataset level: preprocess many series in parallel, incrementally and crash-safely.

Outputs, all at the paths the caller names:

- ``<out_dir>/<SeriesInstanceUID>.npy``: one float16 volume per usable series, written
  atomically (temporary name, then rename), so a killed run never leaves a truncated one;
- ``index_path``: JSON lines, one record per volume, sorted by SeriesInstanceUID, written
  atomically at the end of a run. A record describes the volume only (its geometry,
  intensity mapping, localizers and the SHA-256 of its ``.npy``), so the index has the same
  bytes whenever the volumes are the same;
- ``state_path``: the incremental-run state (see :mod:`rsna.preprocess.state`), one entry
  per volume with its fingerprint key (see :mod:`rsna.preprocess.fingerprint`), written
  atomically after the index;
- ``rejects_path``: JSON lines ``{SeriesInstanceUID, series_dir, reason}``, same rules.

Incremental runs: a series is skipped when a state entry has its current key and the
volume on disk still has the recorded SHA-256; otherwise it is processed again. At the end
the index and the state are written, the volumes of series no longer listed are deleted
(only files that earlier runs wrote, as the previous index, state or journal name them)
and the journal is removed. When a run fails or is stopped (SIGTERM, Ctrl-C), its workers
are terminated and the temporaries they leave in ``out_dir`` are deleted. The journal is
kept, so the next run reuses the volumes it lists.
"""

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from rsna.dicom import SeriesError
from rsna.fileio import remove_stale_temporaries, save_npy, write_jsonl
from rsna.logs import configure_logging, progress_disabled
from rsna.preprocess.fingerprint import file_sha256, series_key
from rsna.preprocess.series import Localizer, PreprocessError, SeriesJob, preprocess_series
from rsna.preprocess.settings import VolumeSpec
from rsna.preprocess.state import (
    DEFAULT_STATE_NAME,
    JOURNAL_NAME,
    KnownVolumes,
    index_record,
    load_known_volumes,
    state_entry,
)
from rsna.preprocess.transforms import TransformError
from rsna.signals import process_pool
from rsna.uid import InvalidUIDError

logger = logging.getLogger(__name__)

# Failures that reject one series; anything else is a bug or an environment problem
# (disk full, out of memory) and stops the run.
REJECTED_ERRORS = (SeriesError, PreprocessError, TransformError, InvalidUIDError)


@dataclasses.dataclass(frozen=True)
class PreprocessSummary:
    """Counts of one run, plus the final index records, state entries and rejects."""

    processed: int
    skipped: int
    removed: int
    records: list[dict]
    state: list[dict]
    rejects: list[dict]


@dataclasses.dataclass(frozen=True)
class _Outcome:
    status: str  # "processed", "skipped" or "rejected"
    job: SeriesJob
    entry: dict | None = None  # state entry: the index record plus the key
    reason: str = ""


def preprocess_dataset(
    jobs: Sequence[SeriesJob],
    *,
    out_dir: Path,
    index_path: Path,
    rejects_path: Path,
    spec: VolumeSpec,
    workers: int,
    threads_per_worker: int,
    state_path: Path | None = None,
    force: bool = False,
) -> PreprocessSummary:
    """Preprocess ``jobs`` into ``out_dir`` and write the index, the state and the rejects.

    ``state_path`` defaults to :data:`~rsna.preprocess.state.DEFAULT_STATE_NAME` beside
    the index. ``workers`` processes (0: one per CPU core) each run ``threads_per_worker``
    torch threads; with one worker everything runs in this process. ``force`` ignores
    earlier results. Series that cannot be read or transformed are rejected with a reason
    and the rest go on. The outputs do not depend on ``workers`` or ``threads_per_worker``.

    Workers start with multiprocessing's forkserver method, which imports the main module
    of the caller in each worker: a script that calls this with more than one worker needs
    the usual ``if __name__ == "__main__":`` guard.
    """
    started = time.perf_counter()
    journal_path = out_dir / JOURNAL_NAME
    if state_path is None:
        state_path = index_path.parent / DEFAULT_STATE_NAME
    known = _prepare_out_dir(
        out_dir, state_path=state_path, index_path=index_path, journal_path=journal_path
    )
    previous_by_key = {} if force else {entry["key"]: entry for entry in known.entries}

    unique_jobs = _drop_repeated_folders(jobs)
    worker_count = workers or os.cpu_count() or 1
    logger.info(
        "preprocessing %d series with %d workers x %d threads; %d earlier volumes known",
        len(unique_jobs),
        worker_count,
        threads_per_worker,
        len(previous_by_key),
    )
    worker = _SeriesWorker(spec=spec, out_dir=out_dir, previous_by_key=previous_by_key)
    outcomes = _process_all(
        unique_jobs,
        worker=worker,
        workers=worker_count,
        threads=threads_per_worker,
        out_dir=out_dir,
    )

    summary = _write_results(
        outcomes,
        known=known,
        out_dir=out_dir,
        index_path=index_path,
        state_path=state_path,
        rejects_path=rejects_path,
        journal_path=journal_path,
    )
    logger.info(
        "wrote %d volumes (%d processed, %d up to date), %d rejected, %d stale removed in %.1f s",
        len(summary.records),
        summary.processed,
        summary.skipped,
        len(summary.rejects),
        summary.removed,
        time.perf_counter() - started,
    )
    return summary


def _prepare_out_dir(
    out_dir: Path, *, state_path: Path, index_path: Path, journal_path: Path
) -> KnownVolumes:
    """Create ``out_dir``, delete temporaries of a killed run, return the known volumes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    removed_temporaries = remove_stale_temporaries(out_dir)
    if removed_temporaries:
        logger.info("removed %d temporaries of a killed run from %s", removed_temporaries, out_dir)

    return load_known_volumes(
        state_path=state_path, index_path=index_path, journal_path=journal_path
    )


def _process_all(
    jobs: list[SeriesJob], *, worker: "_SeriesWorker", workers: int, threads: int, out_dir: Path
) -> list[_Outcome]:
    """Run every job and return the outcomes, or delete the workers' temporaries and raise.

    The journal is kept on failure, so the next run reuses the volumes it lists.
    """
    try:
        return _collect(
            _run_jobs(jobs, worker=worker, workers=workers, threads=threads),
            journal_path=out_dir / JOURNAL_NAME,
            total=len(jobs),
        )
    except BaseException:
        # Workers terminated in the middle of a write leave temporaries behind.
        remove_stale_temporaries(out_dir)
        raise


def _write_results(
    outcomes: list[_Outcome],
    *,
    known: KnownVolumes,
    out_dir: Path,
    index_path: Path,
    state_path: Path,
    rejects_path: Path,
    journal_path: Path,
) -> PreprocessSummary:
    """Write the index, the state and the rejects, delete unlisted volumes, then the journal."""
    entries, rejects = _split_outcomes(outcomes, out_dir=out_dir)
    records = [index_record(entry) for entry in entries]
    write_jsonl(index_path, records)
    write_jsonl(state_path, entries)
    write_jsonl(rejects_path, rejects)
    removed = _remove_unlisted_volumes(known.files, records, out_dir=out_dir)
    journal_path.unlink(missing_ok=True)

    return PreprocessSummary(
        processed=sum(o.status == "processed" for o in outcomes),
        skipped=sum(o.status == "skipped" for o in outcomes),
        removed=removed,
        records=records,
        state=entries,
        rejects=rejects,
    )


def jobs_from_manifest(records: Sequence[dict], *, data_root: Path) -> list[SeriesJob]:
    """Turn ``data/manifest.jsonl`` records into jobs; folders are relative to ``data_root``."""
    jobs = []
    for record in records:
        localizers = tuple(
            Localizer(
                sop_instance_uid=point["SOPInstanceUID"],
                x=float(point["x"]),
                y=float(point["y"]),
                frame=point.get("f"),
                location=point["location"],
            )
            for point in record.get("localizers") or ()
        )
        jobs.append(
            SeriesJob(
                series_dir=data_root / record["series_dir"],
                series_uid=record["SeriesInstanceUID"],
                modality=record.get("Modality"),
                localizers=localizers,
                size_hint=int(record.get("frame_count") or record.get("file_count") or 0),
                reported_dir=record["series_dir"],
            )
        )
    return jobs


@dataclasses.dataclass(frozen=True)
class _SeriesWorker:
    """Callable that processes one job, or skips it when its volume is current.

    ``previous_by_key`` maps fingerprint keys to the state entries of earlier runs.
    """

    spec: VolumeSpec
    out_dir: Path
    previous_by_key: dict[str, dict]

    def __call__(self, job: SeriesJob) -> _Outcome:
        try:
            key = series_key(job.series_dir, spec=self.spec, job_fields=_job_fields(job))
        except OSError as error:
            reason = f"series folder cannot be listed or read: {error}"
            return _Outcome("rejected", job, reason=reason)

        previous = self.previous_by_key.get(key)
        if previous is not None and self._is_intact(previous):
            return _Outcome("skipped", job, entry=previous)

        try:
            volume, record = preprocess_series(job, spec=self.spec)
        except REJECTED_ERRORS as error:
            return _Outcome("rejected", job, reason=str(error))

        path = self.out_dir / record["file"]
        save_npy(path, volume)
        record["sha256"] = file_sha256(path)
        return _Outcome("processed", job, entry=state_entry(record, key=key))

    def _is_intact(self, entry: dict) -> bool:
        path = self.out_dir / entry["file"]
        return path.is_file() and file_sha256(path) == entry["sha256"]


def _job_fields(job: SeriesJob) -> dict:
    return {
        "series_uid": job.series_uid,
        "modality": job.modality,
        "localizers": [dataclasses.asdict(point) for point in job.localizers],
    }


def _run_jobs(
    jobs: list[SeriesJob], *, worker: _SeriesWorker, workers: int, threads: int
) -> Iterator[_Outcome]:
    """Yield one outcome per job, in completion order; the largest series start first."""
    ordered = sorted(jobs, key=lambda job: -job.size_hint)
    if workers == 1 or len(ordered) <= 1:
        with _torch_threads(threads):
            for job in ordered:
                yield worker(job)
        return

    # forkserver: workers fork from a clean process that has imported the reader and torch
    # but never run a parallel region. OpenMP runtimes do not support a child forked after
    # one, and the parent may have run torch operations before.
    # ProcessPoolExecutor, unlike multiprocessing.Pool, raises BrokenProcessPool when a worker
    # dies (out of memory, for example) instead of waiting forever for its result.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["rsna.preprocess.series"])
    with process_pool(
        min(workers, len(ordered)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(worker, threads, _console_log_level()),
    ) as executor:
        futures = [executor.submit(_run_in_worker, job) for job in ordered]
        for future in as_completed(futures):
            yield future.result()


_WORKER: _SeriesWorker | None = None


def _console_log_level() -> int | None:
    """Return the root logger's level when the caller configured logging, else None."""
    root = logging.getLogger()
    return root.level if root.handlers else None


def _init_worker(worker: _SeriesWorker, threads: int, log_level: int | None) -> None:
    global _WORKER
    _WORKER = worker
    torch.set_num_threads(threads)

    # A forkserver worker starts with logging unconfigured, so the reader's warnings about
    # one series (dropped files, corrected spacing) would be lost. Mirror the caller's setup.
    if log_level is not None:
        configure_logging(log_level)


def _run_in_worker(job: SeriesJob) -> _Outcome:
    return _WORKER(job)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _collect(outcomes: Iterator[_Outcome], *, journal_path: Path, total: int) -> list[_Outcome]:
    """Gather outcomes, journaling each new volume at once, with a progress bar.

    ``outcomes`` is closed before an exception leaves, so a pool that it runs stops its
    workers then, not when the generator is garbage-collected.
    """
    collected = []
    progress = tqdm(total=total, desc="preprocess", unit="series", disable=progress_disabled())
    with (
        contextlib.closing(outcomes),
        open(journal_path, "a", encoding="utf-8") as journal,
        progress,
    ):
        for outcome in outcomes:
            if outcome.status == "processed":
                journal.write(json.dumps(outcome.entry) + "\n")
                journal.flush()
            elif outcome.status == "rejected":
                name = outcome.job.series_uid or outcome.job.reported_dir
                logger.warning("series %s rejected: %s", name, outcome.reason)
            collected.append(outcome)
            progress.update(1)
    return collected


def _split_outcomes(outcomes: list[_Outcome], *, out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Return state entries sorted by UID and rejects sorted by folder.

    Folders that turn out to contain the same SeriesInstanceUID are all rejected, because
    their volumes would share one file name. The volume written under that name is deleted.
    """
    by_uid: dict[str, list[_Outcome]] = {}
    rejects = []
    for outcome in outcomes:
        if outcome.status == "rejected":
            rejects.append(_reject_entry(outcome.job, outcome.reason))
        else:
            by_uid.setdefault(outcome.entry["SeriesInstanceUID"], []).append(outcome)

    entries = []
    for uid, group in sorted(by_uid.items()):
        if len(group) == 1:
            entries.append(group[0].entry)
            continue
        folders = ", ".join(o.job.reported_dir for o in group)
        for outcome in group:
            reason = f"SeriesInstanceUID {uid} is in several folders ({folders}); keep one of them"
            logger.warning("series %s rejected: %s", uid, reason)
            rejects.append(_reject_entry(outcome.job, reason, series_uid=uid))
        (out_dir / group[0].entry["file"]).unlink(missing_ok=True)

    rejects.sort(key=lambda entry: (entry["series_dir"], entry["SeriesInstanceUID"] or ""))
    return entries, rejects


def _reject_entry(job: SeriesJob, reason: str, *, series_uid: str | None = None) -> dict:
    return {
        "SeriesInstanceUID": series_uid or job.series_uid,
        "series_dir": job.reported_dir,
        "reason": reason,
    }


def _drop_repeated_folders(jobs: Sequence[SeriesJob]) -> list[SeriesJob]:
    unique: dict[Path, SeriesJob] = {}
    for job in jobs:
        folder = Path(os.path.realpath(job.series_dir))
        if folder in unique:
            logger.warning("series folder %s is listed twice; processing it once", job.reported_dir)
            continue
        unique[folder] = job
    return list(unique.values())


def _remove_unlisted_volumes(known_files: set[str], records: list[dict], *, out_dir: Path) -> int:
    """Delete volumes that earlier runs wrote and the new index no longer lists."""
    listed = {record["file"] for record in records}
    removed = 0
    for name in sorted(known_files - listed):
        path = out_dir / Path(name).name
        if path.suffix == ".npy" and path.is_file():
            path.unlink()
            removed += 1
    return removed
