"""Experiment tracking: optional Weights & Biases runs and activation statistics.

W&B is never required. It runs only when enabled in params, and in offline mode unless
online mode is requested and an API key is configured (``WANDB_API_KEY`` or an
``api.wandb.ai`` entry in ``~/.netrc``). Offline runs are written under ``wandb_dir``,
and ``wandb sync`` uploads them later. A missing ``wandb`` package disables tracking
with a warning.
"""

import importlib
import logging
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"
ACTIVATION_COLUMNS: tuple[str, ...] = ("step", "epoch", "stage", "mean", "std", "zero_fraction")
# Values drawn (by a fixed stride, so no random generator is touched) per histogram.
HISTOGRAM_SAMPLE_SIZE = 65536
HISTOGRAM_BINS = 64


def wandb_api_key_configured() -> bool:
    """Return whether W&B could authenticate: ``WANDB_API_KEY`` or a ``~/.netrc`` entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(requested: str) -> str:
    """Return ``"online"`` only when requested and an API key is configured, else ``"offline"``."""
    if requested == "online" and not wandb_api_key_configured():
        logger.info("No W&B API key configured; tracking offline instead of online")
        return "offline"
    return requested


class Tracker:
    """Logs scalars and histograms to a W&B run; every method is a no-op when disabled."""

    def __init__(
        self,
        *,
        enabled: bool,
        project: str,
        mode: str,
        directory: str | os.PathLike,
        config: dict[str, Any],
        run_id: str | None = None,
    ) -> None:
        self.run = None
        self._wandb = None
        if not enabled:
            return
        try:
            self._wandb = importlib.import_module("wandb")
        except ImportError:
            logger.warning(
                "W&B tracking is enabled but the wandb package is not installed; tracking off"
            )
            return
        self._start(
            project=project,
            mode=resolve_wandb_mode(mode),
            directory=Path(directory),
            config=config,
            run_id=run_id,
        )

    def _start(
        self,
        *,
        project: str,
        mode: str,
        directory: Path,
        config: dict[str, Any],
        run_id: str | None,
    ) -> None:
        if mode == "offline":
            # Error reports would go to a third-party server; offline means no network.
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        directory.mkdir(parents=True, exist_ok=True)
        settings = self._wandb.Settings(console="off", silent=True, x_disable_stats=True)
        self.run = self._wandb.init(
            project=project,
            mode=mode,
            dir=str(directory),
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
            settings=settings,
        )
        logger.info("W&B run %s (%s) in %s", self.run.id, mode, directory)

    @property
    def run_id(self) -> str | None:
        """The W&B run id, or ``None`` when tracking is off."""
        return None if self.run is None else self.run.id

    def log(self, values: dict[str, float | None], *, step: int) -> None:
        """Log scalars at optimizer step ``step``; ``None`` values are left out."""
        if self.run is not None:
            self.run.log(
                {key: value for key, value in values.items() if value is not None}, step=step
            )

    def log_histograms(
        self, histograms: dict[str, tuple[np.ndarray, np.ndarray]], *, step: int
    ) -> None:
        """Log ``{name: (counts, bin_edges)}`` histograms at ``step``."""
        if self.run is None or not histograms:
            return
        payload = {
            name: self._wandb.Histogram(np_histogram=(counts.tolist(), edges.tolist()))
            for name, (counts, edges) in histograms.items()
        }
        self.run.log(payload, step=step)

    def finish(self) -> None:
        """Close the run, flushing its files."""
        if self.run is not None:
            self.run.finish()
            self.run = None


class ActivationMonitor:
    """Forward hooks that record output statistics of named modules every ``every`` steps.

    For each module and recorded step: mean, standard deviation and fraction of exact
    zeros of the output (float32), and with ``histograms`` a 64-bin histogram of up to
    65,536 values taken at a fixed stride. A module runs twice per step under gradient
    checkpointing; only its first output of a step is recorded.
    """

    def __init__(
        self, modules: Sequence[tuple[str, nn.Module]], *, every: int, histograms: bool
    ) -> None:
        self.every = every
        self.histograms = histograms
        self.rows: list[dict[str, Any]] = []
        self.pending_histograms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._step: int | None = None
        self._epoch = 0
        self._seen: set[str] = set()
        self._handles = []
        if every > 0:
            self._handles = [
                module.register_forward_hook(self._hook(name)) for name, module in modules
            ]

    def start_step(self, step: int, *, epoch: int) -> None:
        """Arm the hooks when optimizer step ``step`` is one to record."""
        self._step = step if self.every > 0 and step % self.every == 0 else None
        self._epoch = epoch
        self._seen = set()

    def stop(self) -> None:
        """Disarm the hooks, for example during validation."""
        self._step = None

    def take_histograms(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Return and clear the histograms recorded since the last call."""
        pending, self.pending_histograms = self.pending_histograms, {}
        return pending

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if self._step is None or name in self._seen:
                return
            self._seen.add(name)
            self._record(name, output.detach())

        return record

    @torch.no_grad()
    def _record(self, name: str, output: torch.Tensor) -> None:
        values = output.float()
        self.rows.append(
            {
                "step": self._step,
                "epoch": self._epoch,
                "stage": name,
                "mean": values.mean().item(),
                "std": values.std().item(),
                "zero_fraction": (values == 0).float().mean().item(),
            }
        )
        if self.histograms:
            flat = values.flatten()
            sample = flat[:: max(1, flat.numel() // HISTOGRAM_SAMPLE_SIZE)].cpu().numpy()
            self.pending_histograms[f"activations/{name}"] = np.histogram(
                sample, bins=HISTOGRAM_BINS
            )
