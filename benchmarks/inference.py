"""Benchmark: seconds per series of inference on a 300-slice 512 x 512 CTA.

For each setting (preprocessing plus network) it times, as the median of ``--runs`` runs
after one warm-up run:

- ``read``: :func:`rsna.dicom.read_series`, the header pass, decode and modality LUT;
- ``preprocess``: :func:`rsna.preprocess.series.preprocess_series` (read, resampling,
  intensity mapping, crop or pad) minus the median ``read`` time, an estimate of the
  transforms alone because that function reads the series itself;
- ``forward``: the network on the prepared image, through
  :func:`rsna.evaluation.predict_probabilities`, without and with the left-right flip;
- ``predict``: the whole :func:`rsna.inference.predict` call, for comparison with the sum.

The network is untrained (random weights written with the train stage's checkpoint
writer), which costs the same time as trained weights. Settings:

- ``default``: the ``preprocess`` section and ``train.model`` of ``--params``;
- ``real-gpu``: :data:`REAL_GPU_SETTING`, a ResNet-18 of width 64 at 128 x 256 x 256
  voxels, the input size of the challenge's first-place classifier.

Run from the repository root; the CTA series is written once into the work folder:

    python benchmarks/inference.py --out benchmarks/work/inference/results.json
"""

import argparse
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from preprocess import CASES, build_case, median_seconds

import rsna.inference
from rsna import fileio
from rsna.config import dataclass_to_section, load_section, section_to_dataclass
from rsna.dicom import read_series
from rsna.evaluation import predict_probabilities, prepare_image
from rsna.labels import LABEL_COLUMNS
from rsna.model import ModelSettings, build_model
from rsna.preprocess.series import SeriesJob, preprocess_series
from rsna.preprocess.settings import PreprocessParams, VolumeSpec
from rsna.training.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from rsna.training.distributed import resolve_device
from rsna.training.settings import plain, train_settings_from_section

logger = logging.getLogger("benchmarks.inference")

BENCHMARKS = Path(__file__).resolve().parent
# 128 x 256 x 256 voxels of 1.0 x 0.8 x 0.8 mm cover 128 mm along z and 205 mm axially, an
# adult head's width. The model is ResNet-18 at width 64, the defaults of ModelSettings.
# NOTE: an assumed real-data setting, not one read from params.yaml. Pass --real-spacing-mm,
# --real-shape and --real-width to time another.
REAL_GPU_SETTING = {
    "spacing_mm": (1.0, 0.8, 0.8),
    "shape": (128, 256, 256),
    "model": ModelSettings(name="resnet18", width=64),
}
# The uncompressed 300-slice CTA of the preprocessing benchmark, 512 x 512.
CTA_CASE = "cta-300-native"
CTA_SIZE = 512


@dataclasses.dataclass(frozen=True)
class Setting:
    """Preprocessing and network of one benchmark run."""

    name: str
    spec: VolumeSpec
    model: ModelSettings
    input_shape: tuple[int, int, int] | None


def write_checkpoint(path: Path, setting: Setting) -> Path:
    """Save an untrained network with the train stage's checkpoint writer and fields."""
    torch.manual_seed(0)
    network = build_model(**dataclasses.asdict(setting.model))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": "best",
        "model": network.state_dict(),
        "params": {
            "model": plain(setting.model),
            "train": {"input_shape": plain(setting.input_shape)},
            "preprocess": dataclass_to_section(setting.spec),
        },
        "fingerprint": f"benchmark-{setting.name}",
        "epoch": 0,
        "label_columns": list(LABEL_COLUMNS),
        "train_prevalence": [0.5] * len(LABEL_COLUMNS),
    }
    save_checkpoint(path, payload)
    return path


def measure(setting: Setting, folder: Path, work_dir: Path, *, runs: int, device: str) -> dict:
    """Return the median seconds of each part for one setting."""
    checkpoint = write_checkpoint(work_dir / f"{setting.name}.pt", setting)
    # Without the flip, as recorded in the results page; the flip is timed separately below.
    model = rsna.inference.load_model(checkpoint, device=device, tta_flip=False)
    job = SeriesJob(series_dir=folder)
    volume, _ = preprocess_series(job, spec=setting.spec)
    image = prepare_image(volume, input_shape=setting.input_shape)

    def forward(tta_flip: bool) -> Callable[[], object]:
        def call() -> None:
            predict_probabilities(model.network, image, tta_flip=tta_flip, device=model.device)
            if model.device.type == "cuda":
                torch.cuda.synchronize()

        return call

    calls = {
        "read": lambda: read_series(folder),
        "read_and_preprocess": lambda: preprocess_series(job, spec=setting.spec),
        "forward": forward(False),
        "forward_tta_flip": forward(True),
        "predict": lambda: rsna.inference.predict(str(folder)),
    }
    results: dict[str, Any] = {"setting": _describe(setting), "device": str(model.device)}
    for name, call in calls.items():
        seconds, times = median_seconds(call, runs=runs)
        results[name] = {"median_s": round(seconds, 3), "times_s": [round(t, 3) for t in times]}
        logger.info("%s %s: %.2f s", setting.name, name, seconds)
    preprocess_s = results["read_and_preprocess"]["median_s"] - results["read"]["median_s"]
    results["preprocess_estimate_s"] = round(preprocess_s, 3)
    return results


def _describe(setting: Setting) -> dict:
    return {
        "spacing_mm": list(setting.spec.spacing_mm),
        "shape": list(setting.spec.shape),
        "input_shape": plain(setting.input_shape),
        "model": f"{setting.model.name} width {setting.model.width} norm {setting.model.norm}",
    }


def settings_from_args(args: argparse.Namespace) -> list[Setting]:
    """Return the ``default`` setting of the params file and the ``real-gpu`` setting."""
    preprocess = section_to_dataclass(
        PreprocessParams, load_section(args.params, "preprocess"), section="preprocess"
    )
    train = train_settings_from_section(load_section(args.params, "train"))
    default = Setting("default", preprocess.volume_spec(), train.model, train.input_shape)
    real_spec = dataclasses.replace(
        preprocess.volume_spec(),
        spacing_mm=tuple(args.real_spacing_mm),
        shape=tuple(args.real_shape),
    )
    real_model = dataclasses.replace(REAL_GPU_SETTING["model"], width=args.real_width)
    real = Setting("real-gpu", real_spec, real_model, None)
    return [setting for setting in (default, real) if setting.name in args.settings]


def machine_description() -> dict:
    """Return CPU, thread count, versions and the load average (``uptime``) at the start."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "uptime_at_start": _uptime(),
    }


def _uptime() -> str:
    result = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file of the default")
    parser.add_argument("--work-dir", type=Path, default=BENCHMARKS / "work" / "inference")
    parser.add_argument("--out", type=Path, help="results JSON (default: WORK_DIR/results.json)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per part (median)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--settings", nargs="+", default=["default", "real-gpu"], help="settings to run"
    )
    parser.add_argument(
        "--real-spacing-mm", nargs=3, type=float, default=REAL_GPU_SETTING["spacing_mm"]
    )
    parser.add_argument("--real-shape", nargs=3, type=int, default=REAL_GPU_SETTING["shape"])
    parser.add_argument("--real-width", type=int, default=REAL_GPU_SETTING["model"].width)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("RSNA_NO_PROGRESS", "1")
    logging.getLogger("rsna").setLevel(logging.WARNING)
    resolve_device(args.device)

    report = {"machine": machine_description(), "series": _series_description(), "results": {}}
    folder = build_case(args.work_dir, CTA_CASE, size=CTA_SIZE)
    for setting in settings_from_args(args):
        report["results"][setting.name] = measure(
            setting, folder, args.work_dir, runs=args.runs, device=args.device
        )
    report["machine"]["uptime_at_end"] = _uptime()

    fileio.write_json(args.out or args.work_dir / "results.json", report)
    print(json.dumps(report, indent=2))
    return 0


def _series_description() -> dict:
    _, slices, spacing_mm, _ = CASES[CTA_CASE]
    return {
        "slices": slices,
        "rows_columns": CTA_SIZE,
        "spacing_mm": list(spacing_mm),
        "transfer_syntax": "Explicit VR Little Endian (uncompressed int16)",
    }


if __name__ == "__main__":
    sys.exit(main())
