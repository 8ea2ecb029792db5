"""The training loop: data, model, optimization, validation, checkpoints and exact resume.

:func:`run_training` trains one model and writes, on rank 0 only:

- ``models_dir/last.pt`` after every epoch (and every ``checkpoint_every_steps`` optimizer
  steps), ``models_dir/best.pt`` whenever the validation challenge score improves;
- the metrics JSON, the history CSV (epoch, train_loss, val_loss, val_score, lr) and
  the activation statistics CSV after every epoch.

Resume: with ``resume: auto`` a run starts from ``last.pt`` when that checkpoint
belongs to an unfinished run of the same params and data (see :meth:`Trainer.resume`).
Otherwise the old checkpoints are removed and training starts over. The sampler order
and every augmentation depend only on the seed, the epoch and the position in it, and
the optimizer, scheduler, scaler and generator states are restored, so on the CPU a
resumed run ends with the same weights as an uninterrupted one.
"""

import contextlib
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from rsna import fileio
from rsna.config import ParamsError
from rsna.data import (
    EpochSampler,
    VolumeDataset,
    load_split_records,
    make_loader,
    positive_sampling_weights,
    screen_volumes,
)
from rsna.labels import LABEL_COLUMNS
from rsna.logs import progress_disabled
from rsna.metrics import score_predictions
from rsna.model import build_model, unwrap_model
from rsna.training import checkpoint as ckpt
from rsna.training.distributed import (
    DistributedContext,
    all_gather_tensor,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    resolve_device,
    wrap_model,
)
from rsna.training.localizers import location_map_loss, location_targets
from rsna.training.optimization import (
    compute_pos_weight,
    label_prevalence,
    make_grad_scaler,
    make_optimizer,
    make_scheduler,
    resolve_precision,
)
from rsna.training.reporting import HISTORY_COLUMNS, train_metrics, write_rows_csv
from rsna.training.settings import TrainSettings, plain, result_params
from rsna.training.tracking import ACTIVATION_COLUMNS, ActivationMonitor, Tracker

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class TrainPaths:
    """Inputs and outputs of a training run."""

    volumes_dir: Path
    index: Path
    splits: Path
    manifest: Path
    models_dir: Path
    metrics: Path
    history: Path
    activations: Path | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                object.__setattr__(self, field.name, Path(value))


def configure_runtime(settings: TrainSettings, context: DistributedContext) -> None:
    """Set the thread count, the global seed and deterministic algorithms.

    With ``threads`` 0, CPU processes of a distributed run share the cores evenly.
    Deterministic mode uses ``warn_only``: an operation without a deterministic
    implementation on this device warns instead of stopping the run.
    """
    threads = settings.threads
    if threads == 0 and context.enabled and context.device.type == "cpu":
        threads = max(1, (os.cpu_count() or 1) // context.world_size)
    if threads > 0:
        torch.set_num_threads(threads)
    device = context.device
    torch.manual_seed(settings.seed)
    if settings.deterministic:
        # cuBLAS needs this workspace setting for reproducible matrix products (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = settings.deterministic
        torch.backends.cudnn.benchmark = not settings.deterministic


def run_training(
    *,
    settings: TrainSettings,
    volume_spec: dict[str, Any],
    paths: TrainPaths,
    fold: int | None = None,
    context: DistributedContext | None = None,
) -> dict[str, Any]:
    """Train a model with ``settings`` and return the metrics written to ``paths.metrics``.

    ``volume_spec`` holds the preprocessing settings that decided the volumes
    (spacing_mm, shape, ct_window_hu, mr_percentiles); it is stored in the checkpoints
    and ``shape`` is the shape every volume must have. ``fold`` trains cross-validation
    fold ``k`` (see :func:`rsna.data.select_series`). ``context`` is the process's place
    in distributed training; by default a single process on ``settings.device``.
    """
    if context is None:
        context = DistributedContext(device=resolve_device(settings.device))
    configure_runtime(settings, context)

    trainer = Trainer(
        settings=settings, volume_spec=volume_spec, paths=paths, fold=fold, context=context
    )
    try:
        trainer.resume()
        return trainer.fit()
    finally:
        trainer.close()


class Trainer:
    """State of one training run; :func:`run_training` is the entry point."""

    def __init__(
        self,
        *,
        settings: TrainSettings,
        volume_spec: dict[str, Any],
        paths: TrainPaths,
        fold: int | None,
        context: DistributedContext,
    ) -> None:
        self.settings = settings
        self.volume_spec = plain(volume_spec)
        self.paths = paths
        self.fold = fold
        self.context = context
        self.device = context.device

        self._prepare_data()
        self._prepare_params()
        self._prepare_model()
        self._prepare_optimization()
        self._reset_progress()

        self.monitor = ActivationMonitor(
            [("stem", self.network.stem), *self.network.stages()],
            every=settings.activation_stats_every,
            histograms=settings.activation_histograms,
        )
        self.tracker: Tracker | None = None

    # Set-up

    def _prepare_data(self) -> None:
        settings = self.settings
        self.train_set, train_skipped = self._load_split("train", augment=True)
        self.val_set, val_skipped = self._load_split("val", augment=False)
        self.skipped_series = train_skipped + val_skipped
        self.train_labels = self.train_set.labels_array()

        weights = None
        if settings.positive_fraction is not None:
            weights = positive_sampling_weights(
                self.train_labels, positive_fraction=settings.positive_fraction
            )
        self.train_sampler = self._sampler(self.train_set, shuffle=True, weights=weights)
        self.val_sampler = self._sampler(self.val_set, shuffle=False, weights=None)
        self.train_loader = self._loader(self.train_set, self.train_sampler, drop_last=True)
        self.val_loader = self._loader(self.val_set, self.val_sampler, drop_last=False)

        self.batches_per_epoch = self.train_sampler.num_samples // settings.batch_size
        if self.batches_per_epoch == 0:
            raise ParamsError(
                f"batch_size {settings.batch_size} exceeds the {self.train_sampler.num_samples} "
                "training series per process; lower train.batch_size"
            )
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / settings.accumulation_steps)

    def _load_split(self, role: str, *, augment: bool) -> tuple[VolumeDataset, int]:
        records = load_split_records(
            split=role,
            fold=self.fold,
            volumes_dir=self.paths.volumes_dir,
            index_path=self.paths.index,
            splits_path=self.paths.splits,
            manifest_path=self.paths.manifest,
        )
        usable = screen_volumes(
            records,
            split=role,
            expected_shape=tuple(self.volume_spec["shape"]),
            check_values=self.settings.check_values,
            max_bad_fraction=self.settings.max_bad_fraction,
        )
        dataset = VolumeDataset(
            usable,
            input_shape=self.settings.input_shape,
            augment=self.settings.augment if augment else None,
        )
        return dataset, len(records) - len(usable)

    def _sampler(
        self, dataset: VolumeDataset, *, shuffle: bool, weights: np.ndarray | None
    ) -> EpochSampler:
        return EpochSampler(
            dataset,
            seed=self.settings.seed,
            shuffle=shuffle,
            weights=weights,
            num_replicas=self.context.world_size,
            rank=self.context.rank,
        )

    def _loader(self, dataset: VolumeDataset, sampler: EpochSampler, *, drop_last: bool):
        settings = self.settings
        return make_loader(
            dataset,
            sampler=sampler,
            batch_size=settings.batch_size,
            num_workers=settings.num_workers,
            pin_memory=settings.pin_memory and self.device.type == "cuda",
            prefetch_factor=settings.prefetch_factor,
            drop_last=drop_last,
        )

    def _prepare_params(self) -> None:
        train = plain(self.settings)
        model = train.pop("model")
        self.params = {"model": model, "train": train, "preprocess": self.volume_spec}

        records = [
            (role, record.SeriesInstanceUID, record.volume_sha256, list(record.labels))
            for role, dataset in (("train", self.train_set), ("val", self.val_set))
            for record in dataset.records
        ]
        self.data_fingerprint = ckpt.fingerprint(records)
        # NOTE: the fingerprint leaves out the code. A killed run that is resumed after a
        # code change continues with the new code; a finished run is never resumed.
        self.fingerprint_params = {
            **result_params(self.settings),
            "preprocess": self.volume_spec,
            "data": {"fingerprint": self.data_fingerprint, "fold": self.fold},
        }
        self.fingerprint = ckpt.fingerprint(self.fingerprint_params)

    def _prepare_model(self) -> None:
        model_settings = dataclasses.asdict(self.settings.model)
        model_settings["compile"] = False
        # The same seed gives the same initial weights on every rank and in every rerun.
        torch.manual_seed(self.settings.seed)
        self.network = build_model(**model_settings).to(self.device)

        self.model: nn.Module = wrap_model(
            self.network, self.context, sync_batchnorm=self.settings.sync_batchnorm
        )
        self.eval_model: nn.Module = self.network
        if self.settings.model.compile:
            self.model = torch.compile(self.model)
            self.eval_model = torch.compile(self.network)

    def _prepare_optimization(self) -> None:
        settings = self.settings
        self.amp_dtype = resolve_precision(settings.precision, self.device)
        self.pos_weight = compute_pos_weight(
            self.train_labels, clamp_range=settings.pos_weight_range
        )
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=self.pos_weight.to(self.device))
        self.optimizer = make_optimizer(
            self.network, lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.scheduler = make_scheduler(
            self.optimizer,
            total_steps=settings.epochs * self.steps_per_epoch,
            warmup_steps=round(settings.warmup_epochs * self.steps_per_epoch),
            min_factor=settings.min_lr / settings.lr,
        )
        self.scaler = make_grad_scaler(self.amp_dtype, self.device)

    def _reset_progress(self) -> None:
        self.epoch = 0
        self.batches_done = 0
        self.global_step = 0
        self.loss_sum = 0.0
        self.loss_count = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"score": None, "epoch": None, "auc": None}
        self.wandb_run_id: str | None = None

    # Resume

    def resume(self) -> bool:
        """Continue from ``last.pt`` when allowed and compatible; return whether it did.

        The params fingerprint covers the model, training and preprocessing settings that
        decide the weights, and the training and validation series with their labels and
        volume keys. A checkpoint is used only when its fingerprint equals this run's, its
        run did not finish, and ``best.pt`` matches it. With ``resume: auto`` any other
        checkpoint is removed with a warning that names the differences. With ``require``
        it is an error.
        """
        last_path = self.paths.models_dir / ckpt.LAST_NAME
        mode = self.settings.resume
        if mode == "never" or not last_path.is_file():
            if mode == "require":
                raise ckpt.CheckpointError(f"resume: require, but {last_path} not found")
            self._remove_stale_checkpoints("starting a new run")
            return False

        problems, checkpoint = self._resume_problems(last_path)
        if problems:
            if mode == "require":
                raise ckpt.IncompatibleCheckpointError(
                    f"cannot resume from {last_path}: {'; '.join(problems)}"
                )
            logger.warning("Not resuming from %s: %s", last_path, "; ".join(problems))
            self._remove_stale_checkpoints("they belong to another run")
            return False

        self._restore(checkpoint)
        logger.info(
            "Resuming from %s: epoch %d of %d, batch %d of %d",
            last_path,
            self.epoch + 1,
            self.settings.epochs,
            self.batches_done,
            self.batches_per_epoch,
        )
        return True

    def _resume_problems(self, last_path: Path) -> tuple[list[str], dict[str, Any] | None]:
        try:
            checkpoint = ckpt.load_checkpoint(last_path)
        except ckpt.CheckpointError as error:
            return [str(error)], None
        if checkpoint["fingerprint"] != self.fingerprint:
            differences = ckpt.differing_params(
                checkpoint.get("fingerprint_params", {}), self.fingerprint_params
            )
            return [
                f"params or data differ ({'; '.join(differences) or 'fingerprint'})"
            ], checkpoint
        if checkpoint.get("finished"):
            return ["its run finished; training again from scratch"], checkpoint
        return self._best_checkpoint_problems(checkpoint), checkpoint

    def _best_checkpoint_problems(self, last: dict[str, Any]) -> list[str]:
        best_epoch = last["best"]["epoch"]
        if best_epoch is None:
            return []
        best_path = self.paths.models_dir / ckpt.BEST_NAME
        try:
            best = ckpt.load_checkpoint(best_path)
        except ckpt.CheckpointError as error:
            return [f"its best checkpoint is unusable: {error}"]
        # best.pt may be one epoch ahead when a kill came between writing it and last.pt;
        # that epoch is trained again identically and rewrites it.
        if best["fingerprint"] != self.fingerprint or best["epoch"] < best_epoch:
            return [
                f"{best_path} does not belong to this run "
                f"(epoch {best['epoch']}, best epoch {best_epoch})"
            ]
        return []

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.network.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if self.device.type == "cuda" and checkpoint["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])

        self.epoch = checkpoint["epoch"]
        self.batches_done = checkpoint["batches_done"]
        self.global_step = checkpoint["global_step"]
        # The saved loss sums are totals over every rank; rank 0 carries them on.
        self.loss_sum = checkpoint["epoch_loss_sum"] if self.context.is_main else 0.0
        self.loss_count = checkpoint["epoch_loss_count"] if self.context.is_main else 0
        self.history = list(checkpoint["history"])
        self.best = dict(checkpoint["best"])
        self.monitor.rows = list(checkpoint["activation_rows"])
        self.wandb_run_id = checkpoint["wandb_run_id"]

    def _remove_stale_checkpoints(self, reason: str) -> None:
        # Every rank has read the checkpoints before rank 0 removes them.
        barrier(self.context)
        if not self.context.is_main:
            return
        for name in (ckpt.LAST_NAME, ckpt.BEST_NAME):
            path = self.paths.models_dir / name
            if path.exists():
                logger.info("Removing old checkpoint %s: %s", path, reason)
                path.unlink()

    # Training

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs and return the final metrics."""
        self._start_tracker()
        logger.info(
            "Training %d series, validating %d, on %s x%d: %d epochs of %d batches of %d, %s",
            len(self.train_set),
            len(self.val_set),
            self.device,
            self.context.world_size,
            self.settings.epochs,
            self.batches_per_epoch,
            self.settings.batch_size,
            str(self.amp_dtype).removeprefix("torch."),
        )
        while self.epoch < self.settings.epochs:
            self._train_epoch(self.epoch)
            self._end_epoch(self.epoch)

        return train_metrics(
            history=self.history,
            best=self.best,
            series=self._series_counts(),
            skipped_series=self.skipped_series,
        )

    def _start_tracker(self) -> None:
        settings = self.settings
        self.tracker = Tracker(
            enabled=settings.wandb and self.context.is_main,
            project=settings.wandb_project,
            mode=settings.wandb_mode,
            directory=settings.wandb_dir,
            config={**self.params, "fold": self.fold, "fingerprint": self.fingerprint},
            run_id=self.wandb_run_id,
        )
        self.wandb_run_id = self.tracker.run_id

    def _train_epoch(self, epoch: int) -> None:
        self.train_sampler.set_epoch(epoch)
        self.train_sampler.set_start(self.batches_done * self.settings.batch_size)
        self.model.train()

        progress = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{self.settings.epochs}",
            unit="batch",
            initial=self.batches_done,
            total=self.batches_per_epoch,
            disable=progress_disabled() or not self.context.is_main,
        )
        started, samples = time.perf_counter(), 0
        for batch in progress:
            loss = self._train_batch(batch, epoch=epoch)
            samples += len(batch["image"])
            rate = samples * self.context.world_size / (time.perf_counter() - started)
            progress.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{rate:.1f}")

    def _train_batch(self, batch: dict[str, Any], *, epoch: int) -> float:
        accumulation = self.settings.accumulation_steps
        group_start = (self.batches_done // accumulation) * accumulation
        group_size = min(accumulation, self.batches_per_epoch - group_start)
        position = self.batches_done - group_start
        if position == 0:
            self.monitor.start_step(self.global_step, epoch=epoch)
        is_step = position == group_size - 1

        loss, location_loss = self._forward_backward(
            batch, scale=1.0 / group_size, synchronize=is_step
        )
        self.loss_sum += loss * len(batch["image"])
        self.loss_count += len(batch["image"])
        self.batches_done += 1

        if is_step:
            grad_norm = self._optimizer_step()
            self.global_step += 1
            self._after_step(loss=loss, location_loss=location_loss, grad_norm=grad_norm)
        return loss

    def _forward_backward(
        self, batch: dict[str, Any], *, scale: float, synchronize: bool
    ) -> tuple[float, float | None]:
        """Return the classification loss and the location map loss (None when unused)."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        weight = self.settings.localizer_loss_weight
        # Gradients of DDP processes are averaged only on the micro-batch that steps.
        no_sync = getattr(self.model, "no_sync", None)
        sync_context = contextlib.nullcontext() if synchronize or no_sync is None else no_sync()

        with sync_context:
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32
            ):
                output = self.model(images, with_location_maps=weight > 0)
            logits, maps = output if weight > 0 else (output, None)
            loss = self.criterion(logits.float(), labels)
            location_loss = None
            total = loss
            if maps is not None:
                location_loss = self._location_loss(batch, images=images, maps=maps)
                total = loss + weight * location_loss
            self._check_finite(total, batch)
            self.scaler.scale(total * scale).backward()
        return loss.item(), None if location_loss is None else location_loss.item()

    def _location_loss(
        self, batch: dict[str, Any], *, images: torch.Tensor, maps: torch.Tensor
    ) -> torch.Tensor:
        targets = location_targets(
            batch["localizers"],
            image_shape=tuple(images.shape[2:]),
            map_shape=tuple(maps.shape[2:]),
        )
        return location_map_loss(maps, targets.to(self.device, non_blocking=True))

    def _check_finite(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {self.global_step} on series "
                f"{', '.join(batch['SeriesInstanceUID'])}; "
                "check those volumes, or lower train.lr"
            )

    def _optimizer_step(self) -> float | None:
        grad_norm = None
        if self.settings.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(
                nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.grad_clip_norm)
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    def _after_step(
        self, *, loss: float, location_loss: float | None, grad_norm: float | None
    ) -> None:
        self.monitor.stop()
        self.tracker.log(
            {
                "train/loss": loss,
                "train/location_loss": location_loss,
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/grad_norm": grad_norm,
            },
            step=self.global_step,
        )
        self.tracker.log_histograms(self.monitor.take_histograms(), step=self.global_step)

        every = self.settings.checkpoint_every_steps
        if every and self.global_step % every == 0 and self.batches_done < self.batches_per_epoch:
            self._save_mid_epoch()

    def _save_mid_epoch(self) -> None:
        # Every rank takes part in the sum; rank 0 stores the totals.
        loss_sum, loss_count = all_reduce_sum([self.loss_sum, self.loss_count], self.context)
        if self.context.is_main:
            payload = self._payload(
                "last", loss_sum=loss_sum, loss_count=int(loss_count), finished=False
            )
            ckpt.save_checkpoint(self.paths.models_dir / ckpt.LAST_NAME, payload)
            logger.debug("Saved mid-epoch checkpoint at step %d", self.global_step)

    # Validation and epoch end

    def _end_epoch(self, epoch: int) -> None:
        loss_sum, loss_count = all_reduce_sum([self.loss_sum, self.loss_count], self.context)
        broadcast_buffers(self.network, self.context)
        val_loss, val_score, aucs = self.validate(context=f"val epoch {epoch + 1}")

        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(loss_count, 1),
            "val_loss": val_loss,
            "val_score": val_score,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        self.history.append(row)
        improved = self._update_best(val_score, aucs, epoch=epoch + 1)
        self.epoch, self.batches_done, self.loss_sum, self.loss_count = epoch + 1, 0, 0.0, 0

        if self.context.is_main:
            self._save_epoch(improved=improved)
        barrier(self.context)
        self.tracker.log(
            {f"epoch/{key}": value for key, value in row.items()}, step=self.global_step
        )
        self._log_epoch(row)

    def validate(self, *, context: str) -> tuple[float, float | None, dict[str, float | None]]:
        """Return validation loss, challenge score and per-label AUROC over every rank."""
        _, logits, labels = self._predict_validation()
        loss = float(
            nn.functional.binary_cross_entropy_with_logits(
                logits, labels, pos_weight=self.pos_weight
            )
        )
        score, aucs = score_predictions(
            torch.sigmoid(logits).numpy(), labels.numpy(), context=context
        )
        return loss, score, aucs

    @torch.no_grad()
    def _predict_validation(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        self.monitor.stop()
        self.eval_model.eval()
        indices, logits, labels = [], [], []
        for batch in self.val_loader:
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32
            ):
                output = self.eval_model(batch["image"].to(self.device, non_blocking=True))
            logits.append(output.float().cpu())
            labels.append(batch["labels"])
            indices.append(torch.as_tensor(batch["index"]))
        self.eval_model.train()

        gathered = [
            all_gather_tensor(torch.cat(part), self.context) for part in (indices, logits, labels)
        ]
        # The distributed sampler repeats a few series to give ranks equal counts.
        _, first = np.unique(gathered[0].numpy(), return_index=True)
        return gathered[0].numpy()[first], gathered[1][first], gathered[2][first]

    def _update_best(
        self, score: float | None, aucs: dict[str, float | None], *, epoch: int
    ) -> bool:
        if score is None:
            improved = self.best["epoch"] is None
        else:
            improved = self.best["score"] is None or score > self.best["score"]
        if improved:
            self.best = {"score": score, "epoch": epoch, "auc": aucs}
        return improved

    def _save_epoch(self, *, improved: bool) -> None:
        models_dir = self.paths.models_dir
        finished = self.epoch >= self.settings.epochs
        # best.pt first: a kill between the two writes leaves last.pt one epoch behind,
        # and that epoch is trained again identically.
        if improved:
            ckpt.save_checkpoint(
                models_dir / ckpt.BEST_NAME, self._payload("best", finished=finished)
            )
        self._write_outputs()
        ckpt.save_checkpoint(models_dir / ckpt.LAST_NAME, self._payload("last", finished=finished))

    def _payload(
        self, kind: str, *, finished: bool, loss_sum: float = 0.0, loss_count: int = 0
    ) -> dict[str, Any]:
        full = kind == "last"
        return {
            "format": ckpt.CHECKPOINT_FORMAT,
            "kind": kind,
            "finished": finished,
            "model": unwrap_model(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict() if full else None,
            "scheduler": self.scheduler.state_dict() if full else None,
            "scaler": self.scaler.state_dict() if full else None,
            "params": self.params,
            "fingerprint": self.fingerprint,
            "fingerprint_params": self.fingerprint_params,
            "data_fingerprint": self.data_fingerprint,
            "fold": self.fold,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "global_step": self.global_step,
            "sampler": {
                "seed": self.settings.seed,
                "epoch": self.epoch,
                "start": self.batches_done * self.settings.batch_size,
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            },
            "epoch_loss_sum": loss_sum,
            "epoch_loss_count": loss_count,
            "history": self.history,
            "activation_rows": self.monitor.rows,
            "best": self.best,
            "label_columns": list(LABEL_COLUMNS),
            "train_prevalence": label_prevalence(self.train_labels),
            "pos_weight": self.pos_weight.tolist(),
            "wandb_run_id": self.wandb_run_id,
            "torch_version": str(torch.__version__),
        }

    def _write_outputs(self) -> None:
        paths = self.paths
        write_rows_csv(paths.history, self.history, columns=HISTORY_COLUMNS)
        if paths.activations is not None:
            write_rows_csv(paths.activations, self.monitor.rows, columns=ACTIVATION_COLUMNS)
        metrics = train_metrics(
            history=self.history,
            best=self.best,
            series=self._series_counts(),
            skipped_series=self.skipped_series,
        )
        fileio.write_json(paths.metrics, metrics)

    def _series_counts(self) -> dict[str, int]:
        return {"train": len(self.train_set), "val": len(self.val_set)}

    def _log_epoch(self, row: dict[str, Any]) -> None:
        score = "undefined" if row["val_score"] is None else f"{row['val_score']:.4f}"
        best = "undefined" if self.best["score"] is None else f"{self.best['score']:.4f}"
        logger.info(
            "Epoch %d/%d: train_loss %.4f val_loss %.4f val_score %s lr %.2e (best %s at epoch %s)",
            row["epoch"],
            self.settings.epochs,
            row["train_loss"],
            row["val_loss"],
            score,
            row["lr"],
            best,
            self.best["epoch"],
        )

    def close(self) -> None:
        """Remove hooks and close the tracking run."""
        self.monitor.close()
        if self.tracker is not None:
            self.tracker.finish()
