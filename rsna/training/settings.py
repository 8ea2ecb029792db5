"""Settings of the training loop: the ``train`` section of ``params.yaml``.

The section contains two nested mappings, ``model`` (:class:`rsna.model.ModelSettings`)
and ``augment`` (:class:`rsna.data.AugmentSettings`). Every other key is a field of
:class:`TrainSettings`. params.yaml documents each key.
"""

import dataclasses
from typing import Any

from rsna.config import ParamsError, section_to_dataclass
from rsna.data import AugmentSettings
from rsna.model import MODEL_DEPTHS, NORMS, ModelSettings

PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
RESUME_MODES: tuple[str, ...] = ("auto", "never", "require")
BACKENDS: tuple[str, ...] = ("auto", "gloo", "nccl")
LAUNCHERS: tuple[str, ...] = ("torchrun", "spawn")

# Keys that change how fast or where a run goes, or what it logs, but not the weights it
# ends with. A checkpoint written under other values of these keys may still be resumed.
RUNTIME_TRAIN_KEYS: frozenset[str] = frozenset(
    {
        "device",
        "deterministic",
        "threads",
        "num_workers",
        "pin_memory",
        "prefetch_factor",
        "launcher",
        "backend",
        "checkpoint_every_steps",
        "resume",
        "check_values",
        "max_bad_fraction",
        "activation_stats_every",
        "activation_histograms",
        "wandb",
        "wandb_project",
        "wandb_mode",
        "wandb_dir",
    }
)
RUNTIME_MODEL_KEYS: frozenset[str] = frozenset(
    {"gradient_checkpointing", "channels_last", "compile"}
)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Every setting of the training loop; units and valid values are in params.yaml."""

    model: ModelSettings
    augment: AugmentSettings
    seed: int = 0
    epochs: int = 10
    batch_size: int = 8
    accumulation_steps: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip_norm: float = 1.0
    pos_weight_range: tuple[float, float] = (1.0, 10.0)
    localizer_loss_weight: float = 0.0
    positive_fraction: float | None = None
    input_shape: tuple[int, int, int] | None = None
    precision: str = "auto"
    device: str = "auto"
    deterministic: bool = True
    threads: int = 0
    num_workers: int = 1
    pin_memory: bool = True
    prefetch_factor: int = 2
    processes: int = 1
    launcher: str = "torchrun"
    backend: str = "auto"
    sync_batchnorm: bool = True
    checkpoint_every_steps: int = 0
    resume: str = "auto"
    check_values: bool = True
    max_bad_fraction: float = 0.05
    activation_stats_every: int = 0
    activation_histograms: bool = False
    wandb: bool = False
    wandb_project: str = "rsna-aneurysm"
    wandb_mode: str = "offline"
    wandb_dir: str = "wandb"

    def __post_init__(self) -> None:
        _check_choice(self.model.name, sorted(MODEL_DEPTHS), "model.name")
        _check_choice(self.model.norm, NORMS, "model.norm")
        _check_choice(self.precision, PRECISIONS, "precision")
        _check_choice(self.resume, RESUME_MODES, "resume")
        _check_choice(self.backend, BACKENDS, "backend")
        _check_choice(self.launcher, LAUNCHERS, "launcher")
        _check_choice(self.wandb_mode, ("offline", "online"), "wandb_mode")
        for name in ("epochs", "batch_size", "accumulation_steps", "processes"):
            _check_at_least(getattr(self, name), 1, name)
        for name in ("threads", "num_workers", "checkpoint_every_steps", "activation_stats_every"):
            _check_at_least(getattr(self, name), 0, name)
        _check_at_least(self.prefetch_factor, 1, "prefetch_factor")
        self._check_ranges()

    def _check_ranges(self) -> None:
        low, high = self.pos_weight_range
        if not 0 < low <= high:
            raise ValueError(
                "pos_weight_range must be [low, high] with 0 < low <= high, "
                f"got {self.pos_weight_range}"
            )
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.positive_fraction is not None and not 0 < self.positive_fraction < 1:
            raise ValueError(
                f"positive_fraction must be null or in (0, 1), got {self.positive_fraction}"
            )
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.localizer_loss_weight < 0:
            raise ValueError(
                f"localizer_loss_weight must be >= 0, got {self.localizer_loss_weight}"
            )
        if (self.localizer_loss_weight > 0) != self.model.location_head:
            raise ValueError(
                "set localizer_loss_weight > 0 together with model.location_head: true, "
                "because only that loss trains the head (got localizer_loss_weight "
                f"{self.localizer_loss_weight}, model.location_head {self.model.location_head})"
            )
        if self.input_shape is not None and (
            len(self.input_shape) != 3 or min(self.input_shape) < 32
        ):
            raise ValueError(
                "input_shape must be null or (z, y, x) with each side >= 32, "
                f"got {self.input_shape}"
            )


def _check_choice(value: Any, choices: tuple[str, ...] | list[str], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} {value!r} is invalid; valid choices: {list(choices)}")


def _check_at_least(value: Any, minimum: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def train_settings_from_section(section: dict[str, Any]) -> TrainSettings:
    """Build :class:`TrainSettings` from the ``train`` section, checking every key name."""
    values = dict(section)
    model = section_to_dataclass(
        ModelSettings, values.pop("model", {}) or {}, section="train.model"
    )
    augment = section_to_dataclass(
        AugmentSettings, values.pop("augment", {}) or {}, section="train.augment"
    )
    return section_to_dataclass(
        TrainSettings, {**values, "model": model, "augment": augment}, section="train"
    )


def plain(value: Any) -> Any:
    """Return dataclasses, tuples and lists as plain dicts and lists, as JSON stores them."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def result_params(settings: TrainSettings) -> dict[str, Any]:
    """Return the train and model settings that decide the trained weights, as plain dicts."""
    train = plain(settings)
    model = train.pop("model")
    for key in RUNTIME_TRAIN_KEYS:
        train.pop(key)
    for key in RUNTIME_MODEL_KEYS:
        model.pop(key)
    return {"model": model, "train": train}


__all__ = [
    "ParamsError",
    "TrainSettings",
    "plain",
    "result_params",
    "train_settings_from_section",
]
