"""Training benchmarks: gradient checkpointing cost and DataLoader headroom.

1. Gradient checkpointing: one training step (forward, backward, AdamW step) of the
   configured model at the configured input shape and batch size, with and without
   checkpointing. Reported: the activation memory held for the backward pass (tensor
   bytes allocated by the forward pass and still alive at its end), the peak tensor
   memory of the step above what was allocated before it, and the median step time.
   On the CPU the bytes come from the PyTorch profiler's allocation records; on CUDA
   from ``torch.cuda.memory_allocated`` and ``torch.cuda.max_memory_allocated``.
2. DataLoader headroom: samples per second that the training DataLoader delivers alone
   (volumes read from disk, cropped and augmented, with the configured workers) against
   samples per second that the training step consumes on batches already in memory.

Settings come from the ``train`` and ``preprocess`` sections of a params file. The
loader reads the preprocessed training split when it exists. Otherwise it reads
synthetic volumes of the configured shape, written to a temporary folder. Results are
printed and written as JSON.

    python benchmarks/training.py --out benchmarks/results/training-cpu.json
"""

import argparse
import dataclasses
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from rsna import fileio
from rsna.config import load_section
from rsna.data import EpochSampler, VolumeDataset, VolumeRecord, load_split_records, make_loader
from rsna.logs import configure_logging
from rsna.model import build_model
from rsna.training.distributed import resolve_device
from rsna.training.optimization import make_optimizer, resolve_precision
from rsna.training.settings import TrainSettings, train_settings_from_section

logger = logging.getLogger("benchmarks.training")


def train_step(model, optimizer, images, labels, *, dtype: torch.dtype) -> None:
    """Run one forward, backward and optimizer step."""
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits = model(images)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def cpu_step_memory(model, optimizer, images, labels, *, dtype: torch.dtype) -> dict[str, int]:
    """Return activation and peak tensor bytes of one CPU step from the profiler's records."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
        with record_function("forward"), autocast:
            logits = model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    events = profiler.profiler.kineto_results.events()
    forward_end = next(event.end_ns() for event in events if event.name() == "forward")
    records = sorted(
        (event.start_ns(), event.nbytes())
        for event in events
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = at_forward_end = 0
    for start, nbytes in records:
        current += nbytes
        peak = max(peak, current)
        if start <= forward_end:
            at_forward_end = current
    return {"activation_bytes": at_forward_end, "peak_bytes": peak}


def cuda_step_memory(model, optimizer, images, labels, *, dtype: torch.dtype) -> dict[str, int]:
    """Return activation and peak bytes of one CUDA step from the caching allocator's counters."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = model(images)
    torch.cuda.synchronize()
    activation = torch.cuda.memory_allocated() - before
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return {
        "activation_bytes": activation,
        "peak_bytes": torch.cuda.max_memory_allocated() - before,
    }


def timed_step(model, optimizer, images, labels, *, dtype) -> tuple[float, float]:
    """Return the wall and process CPU seconds of one training step."""
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    train_step(model, optimizer, images, labels, dtype=dtype)
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def benchmark_checkpointing(
    settings: TrainSettings, *, shape: tuple[int, int, int], device: torch.device, steps: int
) -> dict:
    """Return memory and time of a training step with and without gradient checkpointing.

    The two models take turns step by step, so that a change of load on a shared machine
    affects both alike. Times are medians over ``steps`` steps after two warm-up steps.
    """
    dtype = resolve_precision(settings.precision, device)
    images = torch.rand(settings.batch_size, 1, *shape, device=device)
    labels = (torch.rand(settings.batch_size, 14, device=device) < 0.3).float()
    runs = {}
    for name, checkpointing in (("off", False), ("on", True)):
        torch.manual_seed(0)
        model_settings = dataclasses.asdict(settings.model)
        model_settings.update(
            gradient_checkpointing=checkpointing, compile=False, init_weights=None
        )
        model = build_model(**model_settings).to(device).train()
        optimizer = make_optimizer(model, lr=settings.lr, weight_decay=settings.weight_decay)
        # The first step allocates the optimizer state, which is not activation memory.
        train_step(model, optimizer, images, labels, dtype=dtype)
        measure = cuda_step_memory if device.type == "cuda" else cpu_step_memory
        runs[name] = (model, optimizer, measure(model, optimizer, images, labels, dtype=dtype))

    times = {"off": [], "on": []}
    for index in range(steps + 2):
        for name, (model, optimizer, _) in runs.items():
            if index >= 2:
                times[name].append(timed_step(model, optimizer, images, labels, dtype=dtype))
            else:
                train_step(model, optimizer, images, labels, dtype=dtype)

    results = {}
    for name, (_, _, memory) in runs.items():
        results[name] = {
            **memory,
            "step_seconds": statistics.median(wall for wall, _ in times[name]),
            "min_step_seconds": min(wall for wall, _ in times[name]),
            "step_cpu_seconds": statistics.median(cpu for _, cpu in times[name]),
            "min_step_cpu_seconds": min(cpu for _, cpu in times[name]),
            "all_step_seconds": [round(wall, 4) for wall, _ in times[name]],
        }
        logger.info("checkpointing %s: %s", name, results[name])
    off, on = results["off"], results["on"]
    results["activation_memory_reduction"] = 1 - on["activation_bytes"] / off["activation_bytes"]
    results["peak_memory_reduction"] = 1 - on["peak_bytes"] / off["peak_bytes"]
    results["step_time_increase"] = on["step_seconds"] / off["step_seconds"] - 1
    results["step_cpu_time_increase"] = on["step_cpu_seconds"] / off["step_cpu_seconds"] - 1
    # The fastest step is the one least disturbed by other jobs on a shared machine.
    results["min_step_time_increase"] = on["min_step_seconds"] / off["min_step_seconds"] - 1
    results["min_step_cpu_time_increase"] = (
        on["min_step_cpu_seconds"] / off["min_step_cpu_seconds"] - 1
    )
    return results


def training_records(
    args: argparse.Namespace, shape: tuple[int, int, int], folder: Path
) -> list[VolumeRecord]:
    """Return the preprocessed training split, or synthetic volumes when it is absent."""
    if Path(args.index).is_file() and Path(args.splits).is_file():
        return load_split_records(
            split="train",
            volumes_dir=args.volumes,
            index_path=args.index,
            splits_path=args.splits,
            manifest_path=args.manifest,
        )
    logger.info("No preprocessed data at %s; writing 64 synthetic volumes", args.index)
    rng = np.random.default_rng(0)
    records = []
    for number in range(64):
        path = folder / f"{number}.npy"
        np.save(path, rng.random(shape, dtype=np.float32).astype(np.float16))
        records.append(
            VolumeRecord(
                SeriesInstanceUID=f"1.{number}", path=path, labels=(0,) * 14, modality="CTA"
            )
        )
    return records


def benchmark_loader(
    settings: TrainSettings,
    records: list[VolumeRecord],
    *,
    train_samples_per_second: float,
    batches: int,
) -> dict:
    """Return the samples per second the training DataLoader delivers, and the headroom ratio."""
    dataset = VolumeDataset(records, input_shape=settings.input_shape, augment=settings.augment)
    sampler = EpochSampler(dataset, seed=0, shuffle=True)
    loader = make_loader(
        dataset,
        sampler=sampler,
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        pin_memory=False,
        prefetch_factor=settings.prefetch_factor,
        drop_last=True,
    )
    delivered, started, epoch = 0, None, 0
    while delivered < batches * settings.batch_size:
        sampler.set_epoch(epoch)
        for batch in loader:
            if started is None:
                # The first batch includes worker start-up, which happens once per run.
                started = time.perf_counter()
                continue
            delivered += len(batch["image"])
            if delivered >= batches * settings.batch_size:
                break
        epoch += 1
    rate = delivered / (time.perf_counter() - started)
    return {
        "num_workers": settings.num_workers,
        "loader_samples_per_second": rate,
        "train_samples_per_second": train_samples_per_second,
        "ratio": rate / train_samples_per_second,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", default="params.yaml", help="params file with train and preprocess"
    )
    parser.add_argument("--volumes", default="data/volumes", help="folder of preprocessed volumes")
    parser.add_argument("--index", default="data/volumes_index.jsonl", help="volume index")
    parser.add_argument("--splits", default="data/splits.csv", help="splits CSV")
    parser.add_argument("--manifest", default="data/manifest.jsonl", help="manifest JSONL")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--steps", type=int, default=5, help="timed training steps per configuration"
    )
    parser.add_argument(
        "--batches", type=int, default=40, help="batches read in the loader benchmark"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads; default: train.threads of the params file"
    )
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    configure_logging()

    settings = train_settings_from_section(load_section(args.params, "train"))
    shape = tuple(settings.input_shape or load_section(args.params, "preprocess")["shape"])
    device = resolve_device(args.device)
    threads = args.threads if args.threads is not None else settings.threads
    if threads:
        torch.set_num_threads(threads)

    checkpointing = benchmark_checkpointing(settings, shape=shape, device=device, steps=args.steps)
    train_rate = settings.batch_size / checkpointing["off"]["step_seconds"]
    with tempfile.TemporaryDirectory() as folder:
        records = training_records(args, shape, Path(folder))
        loader = benchmark_loader(
            settings, records, train_samples_per_second=train_rate, batches=args.batches
        )

    results = {
        "command": " ".join(
            ["python", "benchmarks/training.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "processor": platform.processor() or platform.machine(),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "model": dataclasses.asdict(settings.model),
        "input_shape": list(shape),
        "batch_size": settings.batch_size,
        "precision": str(resolve_precision(settings.precision, device)).removeprefix("torch."),
        "checkpointing": checkpointing,
        "loader": loader,
    }
    fileio.write_json(args.out, results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
