"""Distributed data parallel training: launching, process groups and collective helpers.

Two launchers start one process per device:

- ``torchrun`` (``python -m torch.distributed.run --standalone``): the standard launcher,
  also across nodes. Its rendezvous store listens on a TCP port of every interface.
- ``spawn``: ``torch.multiprocessing`` on one node, with a file-based store in a temporary
  folder and collectives over the loopback interface, so nothing listens on the network.

Every rank runs the same training function; only rank 0 writes files.
"""

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from rsna.logs import configure_logging

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Place of this process in a run: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, metrics and logs."""
        return self.rank == 0


def process_log_level(level: int | str = logging.INFO) -> int | str:
    """Return ``level`` for rank 0 and WARNING for the other torchrun ranks, which repeat rank 0."""
    return level if os.environ.get("RANK", "0") == "0" else logging.WARNING


def launched_by_torchrun() -> bool:
    """Return whether this process was started by torchrun (it sets ``LOCAL_RANK``)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(requested: str, *, local_rank: int = 0) -> torch.device:
    """Return the device for ``requested`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    ``auto`` and ``cuda`` pick GPU ``local_rank`` when CUDA is available; ``auto`` falls back
    to the CPU.
    """
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        requested = f"cuda:{local_rank}"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {requested} requested but CUDA is not available; set the device to cpu or auto"
        )
    return device


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return ``backend``, or for ``auto`` NCCL on CUDA devices and gloo on the CPU."""
    if backend != "auto":
        return backend
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(
    *,
    device: str,
    backend: str,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> DistributedContext:
    """Join the process group when several processes train, and return this process's context.

    Under torchrun, rank and world size come from its environment variables. The spawn
    launcher passes ``init_method``, ``rank`` and ``world_size``. A single process joins no
    group.
    """
    if world_size is None and launched_by_torchrun():
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank, init_method = int(os.environ["LOCAL_RANK"]), "env://"
    else:
        local_rank = rank or 0
    if not world_size or world_size == 1:
        return DistributedContext(device=resolve_device(device))

    torch_device = resolve_device(device, local_rank=local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    dist.init_process_group(
        backend=resolve_backend(backend, torch_device),
        init_method=init_method,
        rank=rank,
        world_size=world_size,
    )
    logger.info("Process %d of %d on %s", rank, world_size, torch_device)
    return DistributedContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device
    )


def shutdown(context: DistributedContext) -> None:
    """Leave the process group."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, context: DistributedContext, *, sync_batchnorm: bool) -> nn.Module:
    """Return ``model`` wrapped in DistributedDataParallel when several processes train.

    With ``sync_batchnorm`` on CUDA, BatchNorm layers compute statistics over the whole
    global batch; PyTorch's SyncBatchNorm has no CPU implementation, so on the CPU each
    process keeps its own batch statistics.
    """
    if not context.enabled:
        return model
    if sync_batchnorm and context.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_batchnorm and context.device.type == "cpu":
        logger.warning("sync_batchnorm needs CUDA; CPU processes keep per-process statistics")
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def broadcast_buffers(model: nn.Module, context: DistributedContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if not context.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def all_gather_tensor(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Return the concatenation along dimension 0 of ``tensor`` from every rank, in rank order.

    Every rank must pass a tensor of the same shape (the distributed sampler pads ranks
    to equal lengths).
    """
    if not context.enabled:
        return tensor
    device_tensor = tensor.to(context.device)
    parts = [torch.empty_like(device_tensor) for _ in range(context.world_size)]
    dist.all_gather(parts, device_tensor)
    return torch.cat([part.cpu() for part in parts])


def all_reduce_sum(values: Sequence[float], context: DistributedContext) -> list[float]:
    """Return the element-wise sum of ``values`` over every rank (float64)."""
    if not context.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(context: DistributedContext) -> None:
    """Wait until every rank reaches this point."""
    if context.enabled:
        dist.barrier()


def torchrun_command(
    *, script: str | os.PathLike, argv: Sequence[str], processes: int
) -> list[str]:
    """Return the command that runs ``script argv`` as ``processes`` processes on this node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        str(script),
        *argv,
    ]


def launch_torchrun(*, script: str | os.PathLike, argv: Sequence[str], processes: int) -> int:
    """Run ``script`` under torchrun with ``processes`` processes; return its exit status."""
    command = torchrun_command(script=script, argv=argv, processes=processes)
    logger.info("Launching %d training processes: %s", processes, " ".join(command))
    return subprocess.run(command, check=False).returncode


def launch_spawn(
    function: Callable[..., Any],
    *,
    processes: int,
    backend: str,
    device: str,
    log_level: int | str,
    kwargs: dict[str, Any],
) -> None:
    """Run ``function(context=..., **kwargs)`` in ``processes`` processes on this node.

    The processes meet through a file store in a temporary folder and exchange tensors
    over the loopback interface. An exception in any process is raised here. CPU
    processes are forked, which skips importing the libraries again; GPU processes are
    spawned, because CUDA cannot be used in a forked child.
    """
    # Collectives of a single node need no other interface than the loopback.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    start_method = "fork" if on_cpu and sys.platform == "linux" else "spawn"
    with tempfile.TemporaryDirectory(prefix="rsna-ddp-") as folder:
        init_method = Path(folder, "store").resolve().as_uri()
        logger.info("Starting %d training processes (%s)", processes, start_method)
        mp.start_processes(
            _spawned_worker,
            args=(processes, init_method, backend, device, log_level, function, kwargs),
            nprocs=processes,
            join=True,
            start_method=start_method,
        )


def _spawned_worker(
    rank: int,
    world_size: int,
    init_method: str,
    backend: str,
    device: str,
    log_level: int | str,
    function: Callable[..., Any],
    kwargs: dict[str, Any],
) -> None:
    configure_logging(log_level if rank == 0 else logging.WARNING)
    context = init_distributed(
        device=device, backend=backend, init_method=init_method, rank=rank, world_size=world_size
    )
    try:
        function(context=context, **kwargs)
    finally:
        shutdown(context)
