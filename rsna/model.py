"""3D ResNet classifiers for volumes of shape ``(N, 1, z, y, x)`` with one logit per label.

The file is ordered from small to large: normalization layers, the basic residual block,
residual stages, the network, then the constructors (:func:`build_model` and the named
depths in :data:`MODEL_DEPTHS`). The layout follows the ResNet of He et al. (2016,
"Deep Residual Learning for Image Recognition") with every 2D operation made 3D: a 7x7x7
stride-2 stem convolution and a 3x3x3 stride-2 max pool, four residual stages of widths
``(w, 2w, 4w, 8w)`` with strides ``(1, 2, 2, 2)``, global average pooling and a linear
layer. The output is logits of shape ``(N, num_classes)`` in :data:`rsna.labels.LABEL_COLUMNS`
order.
"""

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rsna.labels import LABEL_COLUMNS, LOCATION_COLUMNS

logger = logging.getLogger(__name__)

NORMS: tuple[str, ...] = ("batch", "group")
MODEL_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "resnet10": (1, 1, 1, 1),
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}
STAGE_NAMES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
# Parts recomputed under gradient checkpointing. The deeper stages run on maps 8 and 16
# times smaller per axis than the stem convolution's output and keep under a tenth of the
# activation memory, so recomputing them would cost step time and save almost nothing.
CHECKPOINTED_PARTS: tuple[str, ...] = ("stem", "layer1", "layer2")


class ModelConfigError(ValueError):
    """An unknown model or normalization name, or hyperparameters that do not fit together."""


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Hyperparameters of :func:`build_model`; a checkpoint stores them to rebuild the model."""

    name: str = "resnet18"
    width: int = 64
    norm: str = "batch"
    norm_groups: int = 8
    position_encoding: bool = False
    location_head: bool = False
    gradient_checkpointing: bool = False
    channels_last: bool = False
    compile: bool = False
    init_weights: str | None = None


class _RecomputeState(threading.local):
    active = False


_RECOMPUTE = _RecomputeState()


@contextlib.contextmanager
def _recomputing() -> Iterator[None]:
    previous = _RECOMPUTE.active
    _RECOMPUTE.active = True
    try:
        yield
    finally:
        _RECOMPUTE.active = previous


def _checkpoint_contexts() -> tuple[contextlib.AbstractContextManager, ...]:
    return contextlib.nullcontext(), _recomputing()


class BatchNorm3d(nn.BatchNorm3d):
    """Batch normalization that leaves its running statistics alone during recomputation.

    Gradient checkpointing runs a stage's forward pass twice. A plain BatchNorm would
    update its running mean and variance twice per step, so a model trained with
    checkpointing would drift from one trained without. In training mode the output uses
    batch statistics only, so sending the second pass's update to throwaway copies of the
    statistics changes nothing else. Copies rather than no statistics at all, because the
    recomputation must save the same tensors as the first pass.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and _RECOMPUTE.active):
            return super().forward(input)
        return nn.functional.batch_norm(
            input,
            self.running_mean.clone(),
            self.running_var.clone(),
            self.weight,
            self.bias,
            True,
            self.momentum or 0.0,
            self.eps,
        )


def make_norm(norm: str, channels: int, *, norm_groups: int) -> nn.Module:
    """Return a normalization layer over ``channels`` feature maps.

    ``norm`` is ``"batch"`` (BatchNorm3d) or ``"group"`` (GroupNorm with ``norm_groups``
    groups, which must divide ``channels``). GroupNorm does not depend on the batch size,
    so it suits the batches of 1 or 2 that large volumes allow on one GPU.
    """
    if norm == "batch":
        return BatchNorm3d(channels)
    if norm == "group":
        if norm_groups < 1 or channels % norm_groups:
            raise ModelConfigError(
                f"norm_groups={norm_groups} does not divide {channels} channels; "
                "choose a norm_groups that divides the base width"
            )
        return nn.GroupNorm(norm_groups, channels)
    raise ModelConfigError(f"unknown norm {norm!r}; valid choices: {list(NORMS)}")


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with a residual connection (ResNet-18/34 block).

    A 1x1x1 convolution projects the shortcut when the stride or the channel count changes.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int, norm: str, norm_groups: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_channels, norm_groups=norm_groups)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_channels, norm_groups=norm_groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                make_norm(norm, out_channels, norm_groups=norm_groups),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)

        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))

        return self.relu(out + identity)


def make_stage(
    in_channels: int, out_channels: int, *, blocks: int, stride: int, norm: str, norm_groups: int
) -> nn.Sequential:
    """Return ``blocks`` basic blocks; the first one applies ``stride``."""
    layers = [
        BasicBlock(in_channels, out_channels, stride=stride, norm=norm, norm_groups=norm_groups)
    ]
    for _ in range(blocks - 1):
        layers.append(
            BasicBlock(out_channels, out_channels, stride=1, norm=norm, norm_groups=norm_groups)
        )
    return nn.Sequential(*layers)


class ResNet3d(nn.Module):
    """3D ResNet: input ``(N, in_channels, z, y, x)`` float, output logits ``(N, num_classes)``.

    The spatial size is free because of the global average pooling. Each side should be
    at least 32 voxels, so that the last stage keeps one voxel.

    With ``position_encoding`` a learned linear function of the voxel coordinates (z, y,
    x, each from -1 to 1 across the map) is added to the stem convolution's output, in
    the spirit of CoordConv (Liu et al. 2018, "An intriguing failing of convolutional
    neural networks and the CoordConv solution"). Global average pooling otherwise
    discards where a feature was found, and in volumes of canonical orientation the
    position of a finding tells its location label. Adding the encoding after the stem
    convolution costs almost nothing, whereas coordinate input channels would multiply
    the cost of that convolution, the most expensive layer.

    With ``location_head`` a 1x1x1 convolution on the first stage's output gives one
    logit map per artery location, at a quarter of the input resolution per axis. Training
    fits it to the localizer points (see :mod:`rsna.training.localizers`), as an auxiliary
    task that tells the network where the aneurysms are; prediction ignores it.

    With ``gradient_checkpointing``, training keeps only the inputs of the stem's
    normalization and of the first two residual stages (:data:`CHECKPOINTED_PARTS`) and
    recomputes the rest of those parts during the backward pass: less activation memory
    for one more forward pass of those parts. The stem convolution itself is not
    recomputed, because on a one-channel input at full resolution it is the most
    expensive layer of the network.
    """

    def __init__(
        self,
        *,
        depths: tuple[int, int, int, int],
        width: int,
        in_channels: int = 1,
        num_classes: int = len(LABEL_COLUMNS),
        norm: str = "batch",
        norm_groups: int = 8,
        position_encoding: bool = False,
        location_head: bool = False,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        self.channels_last = channels_last

        self.conv1 = nn.Conv3d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(
            make_norm(norm, width, norm_groups=norm_groups),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        channels = width
        for index, (name, blocks) in enumerate(zip(STAGE_NAMES, depths, strict=True)):
            out_channels = width * 2**index
            stride = 1 if index == 0 else 2
            stage = make_stage(
                channels,
                out_channels,
                blocks=blocks,
                stride=stride,
                norm=norm,
                norm_groups=norm_groups,
            )
            self.add_module(name, stage)
            channels = out_channels
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(channels, num_classes)

        self._init_weights()
        # Created after the other layers drew their initial weights, so that they draw the
        # same ones with and without it. It starts at zero, a network without encoding.
        self.position = None
        if position_encoding:
            self.position = nn.Conv3d(3, width, 1, bias=False)
            nn.init.zeros_(self.position.weight)
        self.location_head = None
        if location_head:
            self.location_head = nn.Conv3d(width, len(LOCATION_COLUMNS), 1)
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d | nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Zero scale on the last normalization of each block makes every block start as
        # the identity, which stabilises early training (Goyal et al. 2017, section 5.1).
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.norm2.weight)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Return the residual stages by name, for activation hooks."""
        return [(name, getattr(self, name)) for name in STAGE_NAMES]

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        part = getattr(self, name)
        recompute = self.gradient_checkpointing and name in CHECKPOINTED_PARTS
        if recompute and self.training and torch.is_grad_enabled():
            return checkpoint(part, x, use_reentrant=False, context_fn=_checkpoint_contexts)
        return part(x)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return pooled features ``(N, 8 * width)`` of a batch ``(N, C, z, y, x)`` and the
        first stage's output ``(N, width, z / 4, y / 4, x / 4)`` (sides rounded up)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)

        x = self.conv1(x)
        if self.position is not None:
            x = x + self.position(coordinate_grid(x))
        x = self._run("stem", x)
        first_stage = x = self._run("layer1", x)
        for name in STAGE_NAMES[1:]:
            x = self._run(name, x)

        return torch.flatten(self.pool(x), 1), first_stage

    def forward(
        self, x: torch.Tensor, *, with_location_maps: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Return logits ``(N, num_classes)``; with ``with_location_maps`` also the location
        logit maps ``(N, 13, z / 4, y / 4, x / 4)`` of the location head."""
        features, first_stage = self.forward_features(x)
        logits = self.fc(features)
        if not with_location_maps:
            return logits
        if self.location_head is None:
            raise ModelConfigError(
                "location maps requested from a model built without location_head"
            )
        return logits, self.location_head(first_stage)


def coordinate_grid(x: torch.Tensor) -> torch.Tensor:
    """Return voxel coordinates ``(N, 3, z, y, x)`` from -1 to 1 along each axis of ``x``.

    The grid has the dtype, device and memory format of ``x``.
    """
    axes = [torch.linspace(-1.0, 1.0, size, device=x.device, dtype=x.dtype) for size in x.shape[2:]]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    grid = grid.expand(x.shape[0], -1, -1, -1, -1)
    if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        grid = grid.contiguous(memory_format=torch.channels_last_3d)
    return grid


def resnet10(**kwargs) -> ResNet3d:
    """Return a 3D ResNet-10 (one block per stage); keyword arguments as :class:`ResNet3d`."""
    return ResNet3d(depths=MODEL_DEPTHS["resnet10"], **kwargs)


def resnet18(**kwargs) -> ResNet3d:
    """Return a 3D ResNet-18 (two blocks per stage); keyword arguments as :class:`ResNet3d`."""
    return ResNet3d(depths=MODEL_DEPTHS["resnet18"], **kwargs)


def resnet34(**kwargs) -> ResNet3d:
    """Return a 3D ResNet-34 (3, 4, 6, 3 blocks); keyword arguments as :class:`ResNet3d`."""
    return ResNet3d(depths=MODEL_DEPTHS["resnet34"], **kwargs)


def build_model(
    *,
    name: str = "resnet18",
    width: int = 64,
    norm: str = "batch",
    norm_groups: int = 8,
    position_encoding: bool = False,
    location_head: bool = False,
    gradient_checkpointing: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    init_weights: str | os.PathLike | None = None,
    in_channels: int = 1,
    num_classes: int = len(LABEL_COLUMNS),
) -> nn.Module:
    """Build a model by name with the given hyperparameters.

    ``init_weights`` is a local file with a state dict (or a checkpoint of this package)
    whose tensors are copied where names and shapes match. Nothing is ever downloaded.
    With ``compile`` the model is wrapped by ``torch.compile``, and
    :func:`unwrap_model` returns the network inside.
    """
    if name not in MODEL_DEPTHS:
        raise ModelConfigError(f"unknown model {name!r}; valid choices: {sorted(MODEL_DEPTHS)}")
    if width < 1:
        raise ModelConfigError(f"width must be a positive number of channels, got {width}")

    model = ResNet3d(
        depths=MODEL_DEPTHS[name],
        width=width,
        in_channels=in_channels,
        num_classes=num_classes,
        norm=norm,
        norm_groups=norm_groups,
        position_encoding=position_encoding,
        location_head=location_head,
        gradient_checkpointing=gradient_checkpointing,
        channels_last=channels_last,
    )
    if init_weights is not None:
        load_initial_weights(model, init_weights)

    if compile:
        return torch.compile(model)
    return model


def unwrap_model(model: nn.Module) -> ResNet3d:
    """Return the plain network inside DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def load_initial_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy matching tensors from the state dict in ``path`` into ``model``; return their names.

    The file is read with ``torch.load(weights_only=True)``, so it cannot run code. A
    checkpoint of this package (a mapping with a ``model`` entry) is accepted too, and
    ``module.`` and ``_orig_mod.`` prefixes left by wrappers are removed. Tensors whose
    name or shape does not match, such as a classifier with another number of labels,
    are skipped with a warning. A file with no matching tensor raises
    :class:`ModelConfigError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelConfigError(f"init_weights file {path} not found; set a local state-dict file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    state = {_strip_wrapper_prefixes(key): value for key, value in state.items()}

    target = model.state_dict()
    matched = {
        key: value
        for key, value in state.items()
        if key in target and tuple(value.shape) == tuple(target[key].shape)
    }
    skipped = sorted(set(state) - set(matched))
    if not matched:
        raise ModelConfigError(
            f"init_weights file {path} has no tensor matching the model's names and shapes "
            f"(first names in the file: {sorted(state)[:5]}); "
            "pass a state dict of this architecture"
        )

    model.load_state_dict(matched, strict=False)
    if skipped:
        logger.warning(
            "init_weights %s: %d tensors skipped (name or shape differs): %s",
            path,
            len(skipped),
            ", ".join(skipped[:10]),
        )
    logger.info("Loaded %d of %d model tensors from %s", len(matched), len(target), path)
    return sorted(matched)


def _strip_wrapper_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key.removeprefix(prefix)
    return key
