"""Dataset level: preprocess many series in parallel, incrementally and crash-safely.

Outputs, all in the folders the caller names:

- ``<out_dir>/<SeriesInstanceUID>.npy``: one float16 volume per usable series, written
  atomically (temporary name, then rename), so a killed run never leaves a truncated one;
- ``index_path``: JSON lines, one record per volume, sorted by SeriesInstanceUID, written
  atomically at the end of a run;
- ``rejects_path``: JSON lines ``{SeriesInstanceUID, series_dir, reason}``, same rules.

Incremental runs: every record carries ``key`` (see :mod:`rsna.preprocess.fingerprint`)
and ``sha256`` of its ``.npy``. A series is skipped when a known record has its current
key and the file on disk still has the recorded SHA-256; otherwise it is processed again.
Known records come from the previous index plus a journal, ``<out_dir>/.journal.jsonl``,
to which each finished series is appended as soon as its volume is written, so a run
killed halfway loses at most the series in flight. At the end the index is written, the
volumes of series no longer listed are deleted (only files this runner wrote earlier,
as named in the old index or journal) and the journal is removed.
"""

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from rsna.dicom import SeriesError
from rsna.fileio import read_jsonl, remove_stale_temporaries, save_npy, write_jsonl
from rsna.logs import progress_disabled
from rsna.preprocess.fingerprint import file_sha256, series_key
from rsna.preprocess.series import Localizer, PreprocessError, SeriesJob, preprocess_series
from rsna.preprocess.settings import VolumeSpec
from rsna.preprocess.transforms import TransformError
from rsna.uid import InvalidUIDError

logger = logging.getLogger(__name__)

JOURNAL_NAME = ".journal.jsonl"
# Failures that reject one series; anything else is a bug or an environment problem
# (disk full, out of memory) and stops the run.
REJECTED_ERRORS = (SeriesError, PreprocessError, TransformError, InvalidUIDError)


@dataclasses.dataclass(frozen=True)
class PreprocessSummary:
    """Counts of one run, plus the final index records and rejects."""

    processed: int
    skipped: int
    removed: int
    records: list[dict]
    rejects: list[dict]


@dataclasses.dataclass(frozen=True)
class _Outcome:
    status: str  # "processed", "skipped" or "rejected"
    job: SeriesJob
    record: dict | None = None
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
    force: bool = False,
) -> PreprocessSummary:
    """Preprocess ``jobs`` into ``out_dir`` and write the index and the rejects.

    ``workers`` processes (0: one per CPU core) each run ``threads_per_worker`` torch
    threads; with one worker everything runs in this process. ``force`` ignores earlier
    results. Series that cannot be read or transformed are rejected with a reason and the
    rest go on. The outputs do not depend on ``workers`` or ``threads_per_worker``.

    Workers start with multiprocessing's forkserver method, which imports the main module
    of the caller in each worker: a script that calls this with more than one worker needs
    the usual ``if __name__ == "__main__":`` guard.
    """
    started = time.perf_counter()
    journal_path = out_dir / JOURNAL_NAME
    known = _prepare_out_dir(out_dir, index_path=index_path, journal_path=journal_path)
    previous_by_key = {} if force else {r["key"]: r for r in known if "key" in r and "sha256" in r}

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
    outcomes = _collect(
        _run_jobs(unique_jobs, worker=worker, workers=worker_count, threads=threads_per_worker),
        journal_path=journal_path,
        total=len(unique_jobs),
    )

    summary = _write_results(
        outcomes,
        known=known,
        out_dir=out_dir,
        index_path=index_path,
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


def _prepare_out_dir(out_dir: Path, *, index_path: Path, journal_path: Path) -> list[dict]:
    """Create ``out_dir``, delete temporaries of a killed run, return the known records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    removed_temporaries = remove_stale_temporaries(out_dir)
    if removed_temporaries:
        logger.info("removed %d temporaries of a killed run from %s", removed_temporaries, out_dir)

    known = _load_known_records(index_path, journal_path)
    if not known and any(out_dir.glob("*.npy")):
        # The keys live in the index: without it nothing can be skipped. Under DVC this
        # happens when the index is not declared `persist: true` next to the volumes.
        logger.warning(
            "%s contains volumes but %s is missing, so every series is processed again; "
            "keep the index with the volumes (in dvc.yaml: persist: true on both)",
            out_dir,
            index_path,
        )
    return known


def _write_results(
    outcomes: list[_Outcome],
    *,
    known: list[dict],
    out_dir: Path,
    index_path: Path,
    rejects_path: Path,
    journal_path: Path,
) -> PreprocessSummary:
    """Write the index and the rejects, delete unlisted volumes, then the journal."""
    records, rejects = _split_outcomes(outcomes, out_dir=out_dir)
    write_jsonl(index_path, records)
    write_jsonl(rejects_path, rejects)
    removed = _remove_unlisted_volumes(known, records, out_dir=out_dir)
    journal_path.unlink(missing_ok=True)

    return PreprocessSummary(
        processed=sum(o.status == "processed" for o in outcomes),
        skipped=sum(o.status == "skipped" for o in outcomes),
        removed=removed,
        records=records,
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
    """Callable that processes one job, or skips it when its volume is current."""

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
            return _Outcome("skipped", job, record=previous)

        try:
            volume, record = preprocess_series(job, spec=self.spec)
        except REJECTED_ERRORS as error:
            return _Outcome("rejected", job, reason=str(error))

        path = self.out_dir / record["file"]
        save_npy(path, volume)
        record["key"] = key
        record["sha256"] = file_sha256(path)
        return _Outcome("processed", job, record=record)

    def _is_intact(self, record: dict) -> bool:
        path = self.out_dir / record["file"]
        return path.is_file() and file_sha256(path) == record["sha256"]


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
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(ordered)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(worker, threads),
    )
    try:
        futures = [executor.submit(_run_in_worker, job) for job in ordered]
        for future in as_completed(futures):
            yield future.result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


_WORKER: _SeriesWorker | None = None


def _init_worker(worker: _SeriesWorker, threads: int) -> None:
    global _WORKER
    _WORKER = worker
    torch.set_num_threads(threads)


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
    """Gather outcomes, journaling each new volume at once, with a progress bar."""
    collected = []
    progress = tqdm(total=total, desc="preprocess", unit="series", disable=progress_disabled())
    with open(journal_path, "a", encoding="utf-8") as journal, progress:
        for outcome in outcomes:
            if outcome.status == "processed":
                journal.write(json.dumps(outcome.record) + "\n")
                journal.flush()
            elif outcome.status == "rejected":
                name = outcome.job.series_uid or outcome.job.reported_dir
                logger.warning("series %s rejected: %s", name, outcome.reason)
            collected.append(outcome)
            progress.update(1)
    return collected


def _split_outcomes(outcomes: list[_Outcome], *, out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Return index records sorted by UID and rejects sorted by folder.

    Folders that turn out to contain the same SeriesInstanceUID are all rejected, because
    their volumes would share one file name. The volume written under that name is deleted.
    """
    by_uid: dict[str, list[_Outcome]] = {}
    rejects = []
    for outcome in outcomes:
        if outcome.status == "rejected":
            rejects.append(_reject_entry(outcome.job, outcome.reason))
        else:
            by_uid.setdefault(outcome.record["SeriesInstanceUID"], []).append(outcome)

    records = []
    for uid, group in sorted(by_uid.items()):
        if len(group) == 1:
            records.append(group[0].record)
            continue
        folders = ", ".join(o.job.reported_dir for o in group)
        for outcome in group:
            reason = f"SeriesInstanceUID {uid} is in several folders ({folders}); keep one of them"
            logger.warning("series %s rejected: %s", uid, reason)
            rejects.append(_reject_entry(outcome.job, reason, series_uid=uid))
        (out_dir / group[0].record["file"]).unlink(missing_ok=True)

    rejects.sort(key=lambda entry: (entry["series_dir"], entry["SeriesInstanceUID"] or ""))
    return records, rejects


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


def _load_known_records(index_path: Path, journal_path: Path) -> list[dict]:
    """Return the records of the previous index, then those of the journal of a killed run.

    A journal line cut short by a kill is ignored.
    """
    known = read_jsonl(index_path) if index_path.is_file() else []
    if journal_path.is_file():
        with open(journal_path, encoding="utf-8") as handle:
            for line in handle:
                with contextlib.suppress(json.JSONDecodeError):
                    known.append(json.loads(line))
    return [record for record in known if isinstance(record, dict) and "file" in record]


def _remove_unlisted_volumes(known: list[dict], records: list[dict], *, out_dir: Path) -> int:
    """Delete volumes that earlier runs wrote and the new index no longer lists."""
    listed = {record["file"] for record in records}
    removed = 0
    for name in sorted({record["file"] for record in known} - listed):
        path = out_dir / Path(name).name
        if path.suffix == ".npy" and path.is_file():
            path.unlink()
            removed += 1
    return removed
