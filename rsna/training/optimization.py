"""Loss weights, optimizer, learning-rate schedule and numeric precision of training."""

import logging
import math

import numpy as np
import torch
from torch import nn

from rsna.labels import LABEL_COLUMNS

logger = logging.getLogger(__name__)

PRECISION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def label_prevalence(labels: np.ndarray) -> list[float]:
    """Return the fraction of positive series per label of ``labels`` ``(N, 14)``."""
    if len(labels) == 0:
        raise ValueError("no labels to compute the prevalence of")
    return [float(value) for value in labels.mean(axis=0)]


def compute_pos_weight(labels: np.ndarray, *, clamp_range: tuple[float, float]) -> torch.Tensor:
    """Return BCE ``pos_weight`` per label: negatives / positives, clamped to ``clamp_range``.

    ``labels`` is ``(N, 14)`` of 0/1 from the training split; the result is float32
    ``(14,)``. A label without positives gets the upper bound, with a warning.
    """
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels.sum(axis=0)
    negatives = len(labels) - positives
    absent = [name for name, count in zip(LABEL_COLUMNS, positives, strict=True) if count == 0]
    if absent:
        logger.warning(
            "No positive training series for %s; their pos_weight is the upper bound %s",
            ", ".join(absent),
            clamp_range[1],
        )

    with np.errstate(divide="ignore"):
        ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), np.inf)
    return torch.tensor(np.clip(ratio, clamp_range[0], clamp_range[1]), dtype=torch.float32)


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Return AdamW with weight decay on convolution and linear weights only.

    Decaying normalization scales and biases pulls them toward zero for no regularizing
    benefit, as in the ResNet training recipes of Goyal et al. (2017).
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim > 1 else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, min_factor: float) -> float:
    """Return the learning-rate multiplier at optimizer step ``step`` (0-based).

    Linear warm-up from ``1 / warmup_steps`` to 1 over ``warmup_steps`` steps, then a
    cosine decay from 1 to ``min_factor`` at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_factor: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Return a per-optimizer-step warm-up then cosine schedule (see :func:`lr_factor`)."""

    def factor(step: int) -> float:
        return lr_factor(
            step, total_steps=total_steps, warmup_steps=warmup_steps, min_factor=min_factor
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Return the autocast dtype: ``auto`` is bfloat16 on CUDA that supports it, else float16
    on CUDA, and float32 on CPU. Half precision asked for on CPU falls back to float32.
    """
    if device.type != "cuda":
        if precision not in ("auto", "float32"):
            logger.warning("precision %s is for GPUs; training in float32 on %s", precision, device)
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return PRECISION_DTYPES[precision]


def make_grad_scaler(dtype: torch.dtype, device: torch.device) -> torch.amp.GradScaler:
    """Return a gradient scaler, enabled only for float16 on CUDA.

    float16 gradients underflow without loss scaling; bfloat16 has float32's exponent
    range and needs none.
    """
    return torch.amp.GradScaler(
        device.type, enabled=dtype == torch.float16 and device.type == "cuda"
    )
