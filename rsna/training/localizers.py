"""Auxiliary supervision with the localizer points: target maps and their loss.

The location head of :class:`rsna.model.ResNet3d` predicts one logit map per artery
location at a quarter of the input resolution. Its target is 1 in a small cross of map
voxels around each localizer point of that location and 0 elsewhere. Knowing where the
aneurysms are teaches the network far faster than the 14 series labels alone, as the
winning solutions of the challenge found (an auxiliary loss on spheres around the
localizers).
"""

import torch
from torch import nn

from rsna.labels import LOCATION_COLUMNS

# Map voxels around a point set to 1: the point's voxel and its six face neighbours.
_CROSS_OFFSETS = torch.tensor(
    [[0, 0, 0], [-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]]
)
# Upper bound of the positive weight of the map loss. A batch of 8 of the embedded sample
# has about 2,400 negative voxels per positive one, so the bound is what applies there.
# NOTE: 200 is the value of the first trial that learned the sample, not a tuned one.
MAX_MAP_POS_WEIGHT = 200.0


def location_targets(
    localizers: torch.Tensor, *, image_shape: tuple[int, ...], map_shape: tuple[int, ...]
) -> torch.Tensor:
    """Return target maps ``(N, 13, *map_shape)`` float32 for localizer rows ``(N, K, 4)``.

    Rows are ``(z, y, x, label)`` in voxels of the image ``image_shape`` ``(z, y, x)``.
    Rows with a label outside the 13 locations (padding -1, ``Aneurysm Present``) or a
    point outside the image (cropped away) are ignored. A point maps to the map voxel at
    ``round(coordinate * map_size / image_size)``, the voxel whose receptive field is
    centred nearest to it, kept inside the map. That voxel and its face neighbours inside
    the map become 1.
    """
    count = localizers.shape[0]
    targets = torch.zeros((count, len(LOCATION_COLUMNS), *map_shape), dtype=torch.float32)
    labels = localizers[..., 3].long()
    coordinates = localizers[..., :3]
    in_image = ((coordinates >= 0) & (coordinates <= torch.tensor(image_shape) - 1)).all(dim=-1)
    keep = (labels >= 0) & (labels < len(LOCATION_COLUMNS)) & in_image
    if not keep.any():
        return targets

    sample, _ = keep.nonzero(as_tuple=True)
    scale = torch.tensor(map_shape, dtype=torch.float32) / torch.tensor(
        image_shape, dtype=torch.float32
    )
    upper = torch.tensor(map_shape) - 1
    centres = torch.round(localizers[keep][:, :3] * scale).long().clamp(min=0)
    centres = torch.minimum(centres, upper)
    voxels = centres[:, None, :] + _CROSS_OFFSETS[None]
    inside = ((voxels >= 0) & (voxels < torch.tensor(map_shape))).all(dim=-1)

    rows = sample[:, None].expand_as(inside)[inside]
    channels = labels[keep][:, None].expand_as(inside)[inside]
    z, y, x = voxels[inside].unbind(-1)
    targets[rows, channels, z, y, x] = 1.0
    return targets


def location_map_loss(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the binary cross-entropy of logit maps against targets of the same shape.

    Positive voxels weigh ``negatives / positives`` of the batch, at most
    :data:`MAX_MAP_POS_WEIGHT`, so that the few positive voxels are not drowned out.
    """
    positives = targets.sum().clamp(min=1.0)
    negatives = targets.numel() - positives
    pos_weight = (negatives / positives).clamp(max=MAX_MAP_POS_WEIGHT)
    return nn.functional.binary_cross_entropy_with_logits(
        maps.float(), targets, pos_weight=pos_weight
    )
