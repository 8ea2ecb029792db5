"""Benchmark: DICOM folder -> training volume, our path against common readers.

Builds realistic series with pydicom (a 300 x 512 x 512 CTA in int16, uncompressed and RLE
Lossless, and a 160 x 512 x 512 MRA in uint16), then times on the same files:

- ``ours``: the full per-series path of ``rsna preprocess`` (fingerprint key, header pass,
  decode, modality LUT, resampling, intensity mapping, float16 ``.npy`` write and its
  SHA-256), through :func:`rsna.preprocess.runner.preprocess_dataset` with one worker;
- ``pydicom-stack``: ``pydicom.dcmread`` of every file, sort by ImagePositionPatient, stack
  of ``pixel_array`` (no resampling): the decode reference;
- ``sitk``: SimpleITK ``ImageSeriesReader`` then ``sitk.Resample`` (linear) to the target;
- ``monai-itk`` and ``monai-pydicom``: MONAI ``LoadImage`` (ITKReader or PydicomReader),
  then ``Spacing`` (bilinear) and ``ResizeWithPadOrCrop`` to the target shape.

Each time is the median of ``--runs`` runs with a warm page cache. Every library runs on one
thread, the way a worker of the pipeline does. Peak memory is the growth of resident memory
(VmHWM after resetting it through /proc/self/clear_refs) over the process's memory before the
call, measured in a separate call. It also measures series per second of the whole runner
with 1 and 2 worker processes, and our memory growth on a 1,400-slice series.

Run from the repository root, with the extras of ``benchmarks/requirements.txt``:

    python benchmarks/preprocess.py --work-dir benchmarks/work/preprocess

Series are written once into the work folder and reused by later runs.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, RLELossless

from rsna.preprocess.runner import preprocess_dataset
from rsna.preprocess.series import SeriesJob
from rsna.preprocess.settings import DEFAULT_PARAMS, VolumeSpec

logger = logging.getLogger("benchmarks.preprocess")

UID_ROOT = "1.2.826.0.1.3680043.10.1999."
SPEC = DEFAULT_PARAMS.volume_spec()


# ----------------------------------------------------------------------------------------
# Synthetic series


def phantom_slice(k: int, *, slices: int, size: int, modality: str, seed: int) -> np.ndarray:
    """Return one stored-value slice of a head phantom: skull, brain, vessels and noise.

    CT values are HU + 1024 (int16, RescaleIntercept -1024); MR values are uint16 scanner
    units with bright vessels, as in a TOF MRA.
    """
    rng = np.random.default_rng(seed * 100_003 + k)
    z = (k + 0.5) / slices * 2.0 - 1.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size / 2.0) - 1.0
    radius_scale = max(0.05, 1.0 - 0.6 * z * z)
    head = (xx / (0.75 * radius_scale)) ** 2 + (yy / (0.85 * radius_scale)) ** 2
    brain = head < 0.85
    skull = (head >= 0.85) & (head < 1.0)
    vessels = np.zeros_like(brain)
    for phase in (0.0, 2.1, 4.2):
        cy = 0.3 * np.sin(3.0 * z + phase)
        cx = 0.3 * np.cos(2.0 * z + phase)
        vessels |= (yy - cy) ** 2 + (xx - cx) ** 2 < 0.0004

    if modality == "CT":
        image = np.full((size, size), -1000.0, dtype=np.float32)
        image[brain] = 35.0
        image[skull] = 1200.0
        image[vessels & brain] = 350.0
        image += rng.normal(0.0, 8.0, size=image.shape).astype(np.float32)
        return np.clip(image + 1024.0, -2048, 4095).astype(np.int16)
    image = rng.normal(0.0, 6.0, size=(size, size)).astype(np.float32) ** 2
    image[brain] += 300.0
    image[vessels & brain] = 1500.0
    return np.clip(image, 0, 65535).astype(np.uint16)


def write_series(
    folder: Path,
    *,
    series_number: int,
    modality: str,
    slices: int,
    size: int,
    spacing_mm: tuple[float, float, float],
    rle: bool,
) -> None:
    """Write one axial series, one file per slice, in reversed InstanceNumber order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = f"{UID_ROOT}{series_number}"
    for k in range(slices):
        pixels = phantom_slice(k, slices=slices, size=size, modality=modality, seed=series_number)
        dataset = _slice_dataset(
            series_uid=series_uid,
            instance_uid=f"{series_uid}.{k + 1}",
            modality=modality,
            position_mm=(
                -0.5 * size * spacing_mm[2],
                -0.5 * size * spacing_mm[1],
                k * spacing_mm[0],
            ),
            spacing_mm=spacing_mm,
            instance_number=slices - k,
            pixels=pixels,
        )
        if rle:
            dataset.compress(RLELossless, pixels, encoding_plugin="pylibjpeg")
        dataset.save_as(folder / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)


def _slice_dataset(
    *,
    series_uid: str,
    instance_uid: str,
    modality: str,
    position_mm: tuple[float, float, float],
    spacing_mm: tuple[float, float, float],
    instance_number: int,
    pixels: np.ndarray,
) -> FileDataset:
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = instance_uid
    dataset.StudyInstanceUID = series_uid + ".0"
    dataset.SeriesInstanceUID = series_uid
    dataset.FrameOfReferenceUID = series_uid + ".9"
    dataset.PatientID = "BENCH-" + series_uid.rsplit(".", 1)[1]
    dataset.Modality = modality
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    dataset.InstanceNumber = instance_number
    dataset.ImagePositionPatient = [f"{v:.4f}" for v in position_mm]
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.PixelSpacing = [spacing_mm[1], spacing_mm[2]]
    dataset.SliceThickness = spacing_mm[0]
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if modality == "CT":
        dataset.RescaleSlope = 1
        dataset.RescaleIntercept = -1024
    dataset.PixelData = pixels.tobytes()
    return dataset


CASES = {
    # name: (modality, slices, spacing (z, y, x) in mm, RLE)
    "cta-300-native": ("CT", 300, (0.625, 0.45, 0.45), False),
    "cta-300-rle": ("CT", 300, (0.625, 0.45, 0.45), True),
    "mra-160-native": ("MR", 160, (0.8, 0.4, 0.4), False),
}


def build_cases(work_dir: Path, *, size: int) -> dict[str, Path]:
    """Write the benchmark series once; return their folders by case name."""
    return {name: build_case(work_dir, name, size=size) for name in CASES}


def build_case(work_dir: Path, name: str, *, size: int) -> Path:
    """Write the series of case ``name`` once (a marker file records completion); return it."""
    modality, slices, spacing, rle = CASES[name]
    folder = work_dir / "series" / name
    if (folder / ".complete").exists():
        return folder

    shutil.rmtree(folder, ignore_errors=True)
    logger.info("writing %s: %d slices of %d x %d", name, slices, size, size)
    write_series(
        folder,
        series_number=list(CASES).index(name) + 1,
        modality=modality,
        slices=slices,
        size=size,
        spacing_mm=spacing,
        rle=rle,
    )
    (folder / ".complete").touch()
    return folder


def build_copies(work_dir: Path, *, count: int, slices: int, size: int) -> list[Path]:
    """Write ``count`` distinct uncompressed CTA series for the throughput runs."""
    folders = []
    for index in range(count):
        folder = work_dir / "throughput" / f"cta-{index}"
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("writing throughput series %d of %d", index + 1, count)
            write_series(
                folder,
                series_number=100 + index,
                modality="CT",
                slices=slices,
                size=size,
                spacing_mm=(0.625, 0.45, 0.45),
                rle=False,
            )
            (folder / ".complete").touch()
        folders.append(folder)
    return folders


# ----------------------------------------------------------------------------------------
# The methods under test


def dicom_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def run_ours(folder: Path, out_dir: Path) -> None:
    preprocess_dataset(
        [SeriesJob(series_dir=folder)],
        out_dir=out_dir,
        index_path=out_dir / "index.jsonl",
        rejects_path=out_dir / "rejects.jsonl",
        spec=SPEC,
        workers=1,
        threads_per_worker=1,
        force=True,
    )


def run_read_only(folder: Path) -> None:
    from rsna.dicom import read_series

    read_series(folder)


def run_pydicom_stack(folder: Path) -> np.ndarray:
    datasets = [pydicom.dcmread(path) for path in dicom_files(folder)]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array for ds in datasets])


def run_sitk(folder: Path, spec: VolumeSpec) -> np.ndarray:
    import SimpleITK as sitk  # noqa: N813 (the name SimpleITK documents)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    spacing_xyz = tuple(reversed(spec.spacing_mm))
    size_xyz = [
        int(n * s / t)
        for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing_xyz, strict=True)
    ]
    resampled = sitk.Resample(
        image,
        size_xyz,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        spacing_xyz,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled)


def run_monai(folder: Path, spec: VolumeSpec, reader: str) -> torch.Tensor:
    from monai.transforms import LoadImage, ResizeWithPadOrCrop, Spacing

    image = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(str(folder))
    # MONAI arrays are (channel, x, y, z) for these readers.
    spaced = Spacing(pixdim=tuple(reversed(spec.spacing_mm)), mode="bilinear")(image)
    return ResizeWithPadOrCrop(spatial_size=tuple(reversed(spec.shape)))(spaced)


# ----------------------------------------------------------------------------------------
# Measuring


def median_seconds(call: Callable[[], object], *, runs: int) -> tuple[float, list[float]]:
    """Run ``call`` once to warm up, then ``runs`` times; return the median and all times."""
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def peak_growth_mb(call: Callable[[], object]) -> float | None:
    """Return the growth of peak resident memory during ``call`` in MiB (Linux only)."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        return None
    before = _status_kib("VmRSS")
    clear_refs.write_text("5")
    call()
    return (_status_kib("VmHWM") - before) / 1024.0


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def throughput(folders: list[Path], out_dir: Path, *, workers: int, runs: int) -> dict:
    """Series per second of the runner over ``folders`` (median of ``runs`` runs)."""

    def call() -> None:
        preprocess_dataset(
            [SeriesJob(series_dir=folder) for folder in folders],
            out_dir=out_dir,
            index_path=out_dir / "index.jsonl",
            rejects_path=out_dir / "rejects.jsonl",
            spec=SPEC,
            workers=workers,
            threads_per_worker=1,
            force=True,
        )

    seconds, times = median_seconds(call, runs=runs)
    return {"workers": workers, "series": len(folders), "seconds": seconds, "times": times}


def cli_seconds(folders: list[Path], out_dir: Path, *, workers: int) -> float:
    """Wall time of one ``rsna preprocess --force`` process, start-up included."""
    command = [sys.executable, "-m", "rsna.cli", "preprocess", *map(str, folders)]
    command += ["--out", str(out_dir), "--workers", str(workers), "--force"]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "RSNA_NO_PROGRESS": "1"})
    return time.perf_counter() - started


def machine_description() -> dict:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pydicom": pydicom.__version__,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def library_versions() -> dict:
    versions = {}
    for name in ("SimpleITK", "monai", "itk", "pylibjpeg-rle"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def methods_for(folder: Path, out_dir: Path, *, skip: set[str]) -> dict[str, Callable[[], object]]:
    methods = {
        "ours": lambda: run_ours(folder, out_dir),
        "ours-read-only": lambda: run_read_only(folder),
        "pydicom-stack": lambda: run_pydicom_stack(folder),
    }
    if available("SimpleITK"):
        methods["sitk"] = lambda: run_sitk(folder, SPEC)
    if available("monai") and available("itk"):
        methods["monai-itk"] = lambda: run_monai(folder, SPEC, "ITKReader")
    if available("monai"):
        methods["monai-pydicom"] = lambda: run_monai(folder, SPEC, "PydicomReader")
    return {name: call for name, call in methods.items() if name not in skip}


def measure_case(name: str, folder: Path, work_dir: Path, *, runs: int, skip: set[str]) -> dict:
    """Time and measure every method on one series.

    Runs are interleaved (run 1 of every method, then run 2, ...) so that a change of load
    on a shared machine affects all methods alike. The order rotates from run to run,
    because the method that follows a large one pays for the page faults of fresh memory,
    which took up to 1.7 s for 300 MiB on the virtual machine of the README.
    """
    out_dir = work_dir / "out" / name
    methods = methods_for(folder, out_dir, skip=skip)
    names = list(methods)
    times: dict[str, list[float]] = {method: [] for method in methods}
    for method, call in methods.items():
        logger.info("%s: warm-up of %s", name, method)
        call()
    for run in range(runs):
        logger.info("%s: run %d of %d", name, run + 1, runs)
        shift = run % len(names)
        for method in names[shift:] + names[:shift]:
            started = time.perf_counter()
            methods[method]()
            times[method].append(time.perf_counter() - started)
    return {
        method: {
            "seconds": statistics.median(times[method]),
            "times": [round(t, 4) for t in times[method]],
            "peak_growth_mib": peak_growth_mb(call),
        }
        for method, call in methods.items()
    }


def breakdown(folder: Path, out_dir: Path, *, runs: int) -> dict:
    """Median seconds of each step of our per-series path, run one after the other."""
    from rsna.dicom import read_series
    from rsna.fileio import save_npy
    from rsna.preprocess.fingerprint import file_sha256, series_key
    from rsna.preprocess.series import preprocess_series

    job = SeriesJob(series_dir=folder)
    path = out_dir / "breakdown.npy"
    steps = {
        "fingerprint key": lambda: series_key(folder, spec=SPEC, job_fields={}),
        "read_series (header pass, decode, modality LUT)": lambda: read_series(folder),
        "read_series + resample + intensity mapping": lambda: preprocess_series(job, spec=SPEC),
        "save_npy (with fsync)": lambda: save_npy(path, np.zeros(SPEC.shape, np.float16)),
        "SHA-256 of the .npy": lambda: file_sha256(path),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: round(median_seconds(call, runs=runs)[0], 4) for name, call in steps.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("benchmarks/work/preprocess"))
    parser.add_argument("--runs", type=int, default=5, help="timed runs per method (median)")
    parser.add_argument("--size", type=int, default=512, help="Rows and Columns of the series")
    parser.add_argument("--copies", type=int, default=6, help="series in the throughput runs")
    parser.add_argument(
        "--long-slices", type=int, default=1400, help="slices of the memory test; 0 skips it"
    )
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help="cases to run")
    parser.add_argument(
        "--no-throughput", action="store_true", help="skip the runs with 1 and 2 workers"
    )
    parser.add_argument(
        "--output", type=Path, help="results JSON to write (default: WORK_DIR/results.json)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("RSNA_NO_PROGRESS", "1")
    logging.getLogger("rsna").setLevel(logging.WARNING)
    # MONAI warns on every load that the NVIDIA image codec (a GPU decoder) is missing.
    logging.getLogger("monai").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    if available("SimpleITK"):
        import SimpleITK as sitk  # noqa: N813 (the name SimpleITK documents)

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)

    report = {
        "machine": machine_description(),
        "libraries": library_versions(),
        "cases": {},
        "load_average_after": {},
    }
    folders = build_cases(args.work_dir, size=args.size)
    for name in args.cases:
        report["cases"][name] = measure_case(
            name, folders[name], args.work_dir, runs=args.runs, skip=set(args.skip)
        )
        report["load_average_after"][name] = [round(v, 2) for v in os.getloadavg()]
        print_case(name, report["cases"][name])
        print(f"load average after this case: {report['load_average_after'][name]}")

    if "cta-300-native" in args.cases:
        report["breakdown_cta_300_native"] = breakdown(
            folders["cta-300-native"], args.work_dir / "out" / "breakdown", runs=args.runs
        )
        print(json.dumps(report["breakdown_cta_300_native"], indent=2))
    if not args.no_throughput:
        report["throughput"] = measure_throughput(args)
    if args.long_slices:
        report["long_series"] = measure_long_series(args)
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    output = args.output or args.work_dir / "results.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report.get(key) for key in ("machine", "throughput")}, indent=2))
    if "long_series" in report:
        print(json.dumps(report["long_series"], indent=2))
    return 0


def print_case(name: str, results: dict) -> None:
    reference = results.get("pydicom-stack", {}).get("seconds")
    ours = results.get("ours", {}).get("seconds")
    print(f"\n{name}")
    print("| method | s/series (median) | vs pydicom-stack | ours faster by | peak growth MiB |")
    print("| --- | --- | --- | --- | --- |")
    for method, result in results.items():
        seconds = result["seconds"]
        versus_reference = f"{seconds / reference:.2f}x" if reference else "-"
        faster = f"{seconds / ours:.1f}x" if ours and method != "ours" else "-"
        growth = result["peak_growth_mib"]
        growth_text = f"{growth:.0f}" if growth is not None else "-"
        print(f"| {method} | {seconds:.3f} | {versus_reference} | {faster} | {growth_text} |")


def measure_throughput(args: argparse.Namespace) -> dict:
    """Series per second with 1 and 2 workers, in-process and as a whole CLI process."""
    folders = build_copies(args.work_dir, count=args.copies, slices=300, size=args.size)
    out_dir = args.work_dir / "out" / "throughput"
    results = {}
    for workers in (1, 2):
        logger.info("throughput with %d workers", workers)
        measured = throughput(folders, out_dir, workers=workers, runs=max(3, args.runs // 2))
        measured["series_per_second"] = len(folders) / measured["seconds"]
        measured["cli_seconds"] = cli_seconds(folders, out_dir, workers=workers)
        results[str(workers)] = measured
    results["speedup_2_over_1"] = (
        results["2"]["series_per_second"] / results["1"]["series_per_second"]
    )
    return results


def measure_long_series(args: argparse.Namespace) -> dict:
    """Memory growth of our path on one long series against its decoded int16 size."""
    slices = args.long_slices
    folder = args.work_dir / "series" / f"cta-{slices}-native"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("writing the %d-slice series", slices)
        write_series(
            folder,
            series_number=9,
            modality="CT",
            slices=slices,
            size=args.size,
            spacing_mm=(0.5, 0.45, 0.45),
            rle=False,
        )
        (folder / ".complete").touch()
    out_dir = args.work_dir / "out" / "long"
    run_ours(folder, out_dir)
    int16_mib = slices * args.size * args.size * 2 / 2**20
    growth = peak_growth_mb(lambda: run_ours(folder, out_dir))
    started = time.perf_counter()
    run_ours(folder, out_dir)
    return {
        "slices": slices,
        "int16_mib": round(int16_mib, 1),
        "peak_growth_mib": round(growth, 1) if growth is not None else None,
        "growth_over_int16": round(growth / int16_mib, 2) if growth is not None else None,
        "seconds": round(time.perf_counter() - started, 3),
    }


if __name__ == "__main__":
    sys.exit(main())
