"""Benchmark: the header pass (``rsna.dicom.read_headers``) with and without the fast parse.

Times ``read_headers(folder)`` (the fast parse of ``rsna.dicom.rawparse``, with pydicom
for the files it declines) against ``read_headers(folder, fast_path=False)`` (every file
through ``pydicom.dcmread(stop_before_pixels=True)``) on the phantom series of
``benchmarks/preprocess.py``: a 300-file 512 x 512 CTA and a 160-file 512 x 512 MRA,
uncompressed. Both give the same records; the script checks that too.

Each time is the median of ``--runs`` runs after one warm-up run, with the files in the page
cache, on one thread (the header pass uses no threads). Runs alternate between the two
paths, so that load changes fall on both alike. ``--profile`` adds the functions with the
most cumulative time in one run of each path.

Run from the repository root:

    python benchmarks/headers.py --work-dir benchmarks/work/preprocess

The series are written once into ``WORK_DIR/series/<case>``, the same folders as
``benchmarks/preprocess.py`` uses, so either script reuses the other's files.
"""

import argparse
import cProfile
import dataclasses
import io
import json
import logging
import os
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, so that Python puts benchmarks/ on the module path.
from preprocess import CASES, build_case, library_versions, machine_description

from rsna.dicom.headers import SEQUENCES_READ, read_headers
from rsna.dicom.rawparse import UnsupportedHeaderError, parse_header

logger = logging.getLogger("benchmarks.headers")

DEFAULT_CASES = ("cta-300-native", "mra-160-native")
PATHS = {
    "fast": lambda folder: read_headers(folder),
    "pydicom": lambda folder: read_headers(folder, fast_path=False),
}


def fast_parse_count(folder: Path) -> tuple[int, int]:
    """Return (files the fast parse takes, files in the folder)."""
    paths = [path for path in sorted(folder.iterdir()) if path.suffix == ".dcm"]
    parsed = 0
    for path in paths:
        with open(path, "rb") as handle:
            try:
                parse_header(handle, sequences_read=SEQUENCES_READ)
            except UnsupportedHeaderError:
                continue
        parsed += 1
    return parsed, len(paths)


def time_paths(folder: Path, *, runs: int) -> dict[str, list[float]]:
    """Time both paths ``runs`` times each, alternating and in rotating order."""
    for call in PATHS.values():
        call(folder)
    times: dict[str, list[float]] = {name: [] for name in PATHS}
    names = list(PATHS)
    for run in range(runs):
        for name in names[run % 2 :] + names[: run % 2]:
            started = time.perf_counter()
            PATHS[name](folder)
            times[name].append(time.perf_counter() - started)
    return times


def check_equal_records(folder: Path) -> None:
    fast = [dataclasses.asdict(header) for header in PATHS["fast"](folder)]
    reference = [dataclasses.asdict(header) for header in PATHS["pydicom"](folder)]
    if fast != reference:
        raise SystemExit(f"{folder}: the fast path and the pydicom path give different records")


def profile_text(call: Callable[[], object], *, top: int) -> str:
    profile = cProfile.Profile()
    profile.runcall(call)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def measure_case(name: str, folder: Path, *, runs: int, profile_top: int) -> dict:
    check_equal_records(folder)
    parsed, files = fast_parse_count(folder)
    times = time_paths(folder, runs=runs)
    result = {
        "files": files,
        "fast_parse_files": parsed,
        "seconds": {path: statistics.median(values) for path, values in times.items()},
        "min_seconds": {path: min(values) for path, values in times.items()},
        "all_seconds": times,
    }
    if profile_top:
        for path, call in PATHS.items():
            print(f"--- {name}, {path} path: cumulative time of one run")
            print(profile_text(lambda call=call: call(folder), top=profile_top))
    return result


def print_table(results: dict[str, dict]) -> None:
    print(
        "| case | files | fast parse takes | pydicom path s | fast path s "
        "| pydicom ms/file | fast ms/file | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        slow, fast = result["seconds"]["pydicom"], result["seconds"]["fast"]
        files = result["files"]
        print(
            f"| {name} | {files} | {result['fast_parse_files']} | {slow:.3f} | {fast:.3f} "
            f"| {1000 * slow / files:.3f} | {1000 * fast / files:.3f} | {slow / fast:.2f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/work/preprocess"))
    parser.add_argument("--runs", type=int, default=7, help="timed runs per path (median)")
    parser.add_argument("--size", type=int, default=512, help="Rows and Columns of the series")
    parser.add_argument("--cases", nargs="*", default=list(DEFAULT_CASES), choices=list(CASES))
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print the top N functions by profile"
    )
    parser.add_argument(
        "--output", type=Path, help="results JSON to write (default: WORK_DIR/headers.json)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    report = {
        "machine": machine_description(),
        "libraries": library_versions(),
        "cases": {},
    }
    for name in args.cases:
        folder = build_case(args.work_dir, name, size=args.size)
        report["cases"][name] = measure_case(name, folder, runs=args.runs, profile_top=args.profile)
    report["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]

    print_table(report["cases"])
    print(
        f"load average at start {report['machine']['load_average_at_start']}, at end "
        f"{report['load_average_at_end']}"
    )
    output = args.output or args.work_dir / "headers.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
