"""Benchmark: dependency designs of the ``manifest`` stage on a raw tree of many DICOM files.

The challenge data has about one million DICOM files in about 4,300 series folders. DVC
hashes every file of a folder dependency, so the way ``manifest`` depends on the raw data
decides how long ``dvc status`` and a ``dvc repro`` with nothing to do take. This script
writes a synthetic tree of empty files in the Kaggle layout
(``series/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` plus ``train.csv`` and
``train_localizers.csv``) inside a fresh git and DVC repository, then times, for each design:

- ``folder``: ``deps`` on the whole ``series/`` folder;
- ``csv``: ``deps`` on ``train.csv`` and ``train_localizers.csv`` only;
- ``listing-files``: an ``always_changed`` stage writes one line per series with the
  SHA-256 of its file names, sizes and modification times; ``manifest`` depends on it;
- ``listing-folders``: the same, but from the series folders' own modification times
  (one ``stat`` per series), which change when files are added, removed or renamed but
  not when a file is rewritten in place.

Per design it records the first ``dvc repro`` (every hash computed), ``dvc status``, a
``dvc repro`` with nothing changed, and whether ``manifest`` reruns after a series is
added and after a file of an existing series is rewritten in place, with the peak memory
of the largest DVC process. Empty files measure
the per-file cost of DVC's bookkeeping; hashing real content (hundreds of GB) adds read
time to the first run of ``folder`` only. All times are with a warm page cache. Each design
starts without DVC's state database and run cache. When the run cache restores the
``manifest`` outputs instead of running the stage, the change counts as detected.

Run from the repository root (the work folder is git-ignored). It needs one inode per file
and, for a million files, about 1 GB of disk, mostly DVC's state database. The output of
every DVC command goes to ``commands.log`` in the work folder.

    python benchmarks/dvc_scale.py --files 1000000 --work-dir benchmarks/work/dvc_scale

The tree is reused by later runs with the same ``--files``, ``--series`` and ``--seed``.
``--clean`` deletes the work folder at the end.
"""

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rsna.labels import LOCALIZER_CSV_COLUMNS, TRAIN_CSV_COLUMNS

UID_ROOT = "1.2.826.0.1.3680043.8.498."

LISTING_SCRIPT = '''"""Write one line per series folder: UID, file count and a fingerprint."""
import hashlib
import os
import sys

series_root, destination, mode = sys.argv[1], sys.argv[2], sys.argv[3]
lines = []
for entry in sorted(os.scandir(series_root), key=lambda item: item.name):
    if mode == "folders":
        status = entry.stat()
        lines.append(f"{entry.name}\\t{status.st_mtime_ns}\\n")
        continue
    digest = hashlib.sha256()
    count = 0
    for item in sorted(os.scandir(entry.path), key=lambda item: item.name):
        status = item.stat()
        digest.update(f"{item.name}\\0{status.st_size}\\0{status.st_mtime_ns}\\n".encode())
        count += 1
    lines.append(f"{entry.name}\\t{count}\\t{digest.hexdigest()}\\n")
temporary = destination + ".tmp"
with open(temporary, "w", encoding="utf-8") as handle:
    handle.writelines(lines)
os.replace(temporary, destination)
'''

# Stands in for the real manifest stage, whose header reads are not what is measured here.
MANIFEST_SCRIPT = '''"""Write the number of rows of train.csv: a stand-in for the manifest stage."""
import sys

with open(sys.argv[1], encoding="utf-8") as handle:
    rows = sum(1 for _ in handle) - 1
with open(sys.argv[2], "w", encoding="utf-8") as handle:
    handle.write(f"{rows}\\n")
'''

MANIFEST_STAGE = """  manifest:
    cmd: python manifest.py raw/train.csv manifest.txt
    deps:
      - manifest.py
      - raw/train.csv
      - raw/train_localizers.csv
{extra_deps}    outs:
      - manifest.txt
"""

LISTING_STAGE = """  listing:
    cmd: python listing.py raw/series listing.tsv {mode}
    always_changed: true
    deps:
      - listing.py
    outs:
      - listing.tsv:
          cache: false
"""


@dataclass(frozen=True)
class Design:
    name: str
    description: str
    dvc_yaml: str


def build_designs() -> dict[str, Design]:
    """Return the dvc.yaml of each candidate design, keyed by name."""

    def manifest(extra: list[str]) -> str:
        return MANIFEST_STAGE.format(extra_deps="".join(f"      - {dep}\n" for dep in extra))

    designs = [
        Design("folder", "deps on the whole series/ folder", manifest(["raw/series"])),
        Design("csv", "deps on train.csv and train_localizers.csv only", manifest([])),
        Design(
            "listing-files",
            "always_changed listing of file names, sizes and mtimes",
            LISTING_STAGE.format(mode="files") + manifest(["listing.tsv"]),
        ),
        Design(
            "listing-folders",
            "always_changed listing of series folder mtimes",
            LISTING_STAGE.format(mode="folders") + manifest(["listing.tsv"]),
        ),
    ]
    return {design.name: design for design in designs}


@dataclass
class Result:
    design: str
    description: str
    files: int
    series: int
    first_repro_s: float = 0.0
    status_s: float = 0.0
    status_clean: bool = False
    noop_repro_s: float = 0.0
    noop_reran_manifest: bool = False
    added_series_status_s: float = 0.0
    added_series_repro_s: float = 0.0
    added_series_reran_manifest: bool = False
    rewritten_file_repro_s: float = 0.0
    rewritten_file_reran_manifest: bool = False
    max_rss_mb: float = 0.0


def make_uid(rng: random.Random) -> str:
    return UID_ROOT + ".".join(str(rng.randrange(1, 10**9)) for _ in range(3))


def write_tree(raw: Path, *, files: int, series: int, seed: int) -> list[str]:
    """Write ``files`` empty ``.dcm`` files spread over ``series`` folders and the two CSVs.

    Returns the series UIDs. The CSVs have the challenge's columns with zero labels.
    """
    rng = random.Random(seed)
    uids = [make_uid(rng) for _ in range(series)]
    base, extra = divmod(files, series)
    started = time.perf_counter()
    for index, uid in enumerate(uids):
        folder = raw / "series" / uid
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(base + (1 if index < extra else 0)):
            os.close(os.open(folder / f"{make_uid(rng)}.dcm", os.O_CREAT | os.O_WRONLY, 0o644))
    print(f"wrote {files} files in {series} series in {time.perf_counter() - started:.1f} s")

    write_csvs(raw, uids)
    return uids


def write_csvs(raw: Path, uids: list[str]) -> None:
    header = ",".join(f'"{name}"' if " " in name else name for name in TRAIN_CSV_COLUMNS)
    label_zeros = ",".join("0" for _ in TRAIN_CSV_COLUMNS[4:])
    rows = [f"{uid},60,Female,CTA,{label_zeros}" for uid in uids]
    (raw / "train.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    (raw / "train_localizers.csv").write_text(",".join(LOCALIZER_CSV_COLUMNS) + "\n")


def benchmark_environment(work_dir: Path, design: str) -> dict[str, str]:
    """Environment with DVC's state database in a folder of its own for each design."""
    environment = dict(os.environ)
    environment.update(
        {
            "DVC_NO_ANALYTICS": "1",
            "DVC_STUDIO_OFFLINE": "true",
            "DVC_SITE_CACHE_DIR": str(work_dir / "site-cache" / design),
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "benchmark",
            "GIT_AUTHOR_EMAIL": "benchmark@example.invalid",
            "GIT_COMMITTER_NAME": "benchmark",
            "GIT_COMMITTER_EMAIL": "benchmark@example.invalid",
        }
    )
    return environment


@dataclass(frozen=True)
class Timed:
    seconds: float
    output: str
    max_rss_mb: float


def run(args: list[str], *, cwd: Path, env: dict[str, str]) -> Timed:
    """Run a command and return its time, output and peak resident memory; raise on failure."""
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
        # wait4 reports the peak memory of this one child, which getrusage cannot.
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    exit_code = os.waitstatus_to_exitcode(status)
    if exit_code != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({exit_code}):\n{text}")
    return Timed(seconds=elapsed, output=text, max_rss_mb=usage.ru_maxrss / 1024)


def init_repo(repo: Path, env: dict[str, str]) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").is_dir():
        run(["git", "init", "--quiet", "--initial-branch=main"], cwd=repo, env=env)
    if not (repo / ".dvc").is_dir():
        run(["dvc", "init", "--quiet"], cwd=repo, env=env)
    run(["dvc", "config", "core.analytics", "false"], cwd=repo, env=env)
    (repo / ".gitignore").write_text("/raw/\n", encoding="utf-8")
    (repo / "listing.py").write_text(LISTING_SCRIPT, encoding="utf-8")
    (repo / "manifest.py").write_text(MANIFEST_SCRIPT, encoding="utf-8")


def manifest_ran(output: str) -> bool:
    """Return whether ``dvc repro`` found ``manifest`` changed.

    DVC either runs the stage or, when its run cache has seen the same dependencies
    before, restores the outputs ("Stage 'manifest' is cached").
    """
    return "Running stage 'manifest'" in output or "Stage 'manifest' is cached" in output


def measure_design(repo: Path, design: Design, result: Result, env: dict[str, str]) -> None:
    """Fill ``result`` with the timings of ``design``; leaves the tree as it found it."""
    (repo / "dvc.yaml").write_text("stages:\n" + design.dvc_yaml, encoding="utf-8")
    (repo / "dvc.lock").unlink(missing_ok=True)
    shutil.rmtree(Path(env["DVC_SITE_CACHE_DIR"]), ignore_errors=True)
    shutil.rmtree(repo / ".dvc" / "cache" / "runs", ignore_errors=True)

    first = dvc(repo, env, result, "repro")
    status = dvc(repo, env, result, "status")
    noop = dvc(repo, env, result, "repro")
    result.first_repro_s = first.seconds
    result.status_s = status.seconds
    result.status_clean = "Data and pipelines are up to date." in status.output
    result.noop_repro_s = noop.seconds
    result.noop_reran_manifest = manifest_ran(noop.output)
    print(
        f"{design.name}: first repro {first.seconds:.1f} s, status {status.seconds:.1f} s, "
        f"no-op repro {noop.seconds:.1f} s",
        flush=True,
    )

    measure_added_series(repo, result, env)
    measure_rewritten_file(repo, result, env)


def dvc(repo: Path, env: dict[str, str], result: Result, *args: str) -> Timed:
    """Run ``dvc ARGS``, keep the design's peak memory in ``result`` and log the output.

    The output of every command goes to ``commands.log`` beside the repository.
    """
    timed = run(["dvc", *args], cwd=repo, env=env)
    result.max_rss_mb = max(result.max_rss_mb, timed.max_rss_mb)
    with open(repo.parent / "commands.log", "a", encoding="utf-8") as log:
        log.write(f"### {result.design}: dvc {' '.join(args)} ({timed.seconds:.1f} s)\n")
        log.write(timed.output + "\n")
    return timed


def added_series_folder(repo: Path) -> Path:
    return repo / "raw" / "series" / (UID_ROOT + "999.999.999")


def rewritten_file(repo: Path) -> Path:
    """Return the first file of the first series folder, in name order."""
    series = min(
        path for path in (repo / "raw" / "series").iterdir() if path != added_series_folder(repo)
    )
    return min(series.iterdir())


def measure_added_series(repo: Path, result: Result, env: dict[str, str]) -> None:
    """Add a series folder without touching the CSVs; does manifest rerun?"""
    added = added_series_folder(repo)
    added.mkdir()
    for index in range(10):
        (added / f"{UID_ROOT}999.999.{index + 1}.dcm").touch()
    try:
        result.added_series_status_s = dvc(repo, env, result, "status").seconds
        repro = dvc(repo, env, result, "repro")
        result.added_series_repro_s = repro.seconds
        result.added_series_reran_manifest = manifest_ran(repro.output)
    finally:
        shutil.rmtree(added)
    dvc(repo, env, result, "repro")


def measure_rewritten_file(repo: Path, result: Result, env: dict[str, str]) -> None:
    """Rewrite one existing file in place with new bytes; does manifest rerun?"""
    target = rewritten_file(repo)
    target.write_bytes(b"DICM")
    try:
        repro = dvc(repo, env, result, "repro")
        result.rewritten_file_repro_s = repro.seconds
        result.rewritten_file_reran_manifest = manifest_ran(repro.output)
    finally:
        target.write_bytes(b"")
    dvc(repo, env, result, "repro")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000, help="number of empty .dcm files")
    parser.add_argument("--series", type=int, default=4_300, help="number of series folders")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random UIDs")
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/work/dvc_scale"))
    parser.add_argument(
        "--designs", nargs="+", default=list(build_designs()), help="designs to measure"
    )
    parser.add_argument("--output", type=Path, help="JSON file for the results")
    parser.add_argument("--clean", action="store_true", help="delete the work folder at the end")
    return parser.parse_args(argv)


def prepare_tree(repo: Path, *, files: int, series: int, seed: int) -> None:
    """Write the raw tree unless one with the same size is already there.

    A reused tree first loses what an interrupted run may have left: the added series
    folder and the bytes written into the rewritten file.
    """
    raw = repo / "raw"
    marker = raw / "tree.json"
    wanted = {"files": files, "series": series, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        shutil.rmtree(added_series_folder(repo), ignore_errors=True)
        rewritten_file(repo).write_bytes(b"")
        return
    shutil.rmtree(raw, ignore_errors=True)
    write_tree(raw, files=files, series=series, seed=seed)
    marker.write_text(json.dumps(wanted))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    designs = build_designs()
    work_dir = args.work_dir.resolve()
    repo = work_dir / "repo"
    init_repo(repo, benchmark_environment(work_dir, "init"))
    prepare_tree(repo, files=args.files, series=args.series, seed=args.seed)

    results = []
    for name in args.designs:
        result = Result(name, designs[name].description, args.files, args.series)
        measure_design(repo, designs[name], result, benchmark_environment(work_dir, name))
        results.append(asdict(result))
        print(json.dumps(results[-1]), flush=True)

    report = {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "load_average": os.getloadavg(),
        "results": results,
    }
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.clean:
        shutil.rmtree(work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
