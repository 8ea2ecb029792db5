import pytest
import torch

from rsna.labels import LABEL_COLUMNS
from rsna.training.localizers import MAX_MAP_POS_WEIGHT, location_map_loss, location_targets

LEFT_MCA = LABEL_COLUMNS.index("Left Middle Cerebral Artery")
BASILAR = LABEL_COLUMNS.index("Basilar Tip")


def _rows(*points):
    rows = torch.full((1, 4, 4), -1.0)
    for index, point in enumerate(points):
        rows[0, index] = torch.tensor(point, dtype=torch.float32)
    return rows


def test_target_cross_at_scaled_point():
    rows = _rows((8.0, 12.0, 19.0, LEFT_MCA))

    targets = location_targets(rows, image_shape=(16, 32, 32), map_shape=(4, 8, 8))

    assert targets.shape == (1, 13, 4, 8, 8)
    # (8, 12, 19) / 4 rounds to (2, 3, 5).
    expected = {(2, 3, 5), (1, 3, 5), (3, 3, 5), (2, 2, 5), (2, 4, 5), (2, 3, 4), (2, 3, 6)}
    found = {tuple(v) for v in targets[0, LEFT_MCA].nonzero().tolist()}
    assert found == expected
    assert targets.sum() == 7


def test_target_cross_clipped_at_border():
    rows = _rows((0.0, 0.0, 31.0, BASILAR))

    targets = location_targets(rows, image_shape=(16, 32, 32), map_shape=(4, 8, 8))

    found = {tuple(v) for v in targets[0, BASILAR].nonzero().tolist()}
    assert found == {(0, 0, 7), (1, 0, 7), (0, 1, 7), (0, 0, 6)}


def test_target_ignores_padding_and_aneurysm_present():
    rows = _rows((8.0, 8.0, 8.0, LABEL_COLUMNS.index("Aneurysm Present")))

    targets = location_targets(rows, image_shape=(16, 32, 32), map_shape=(4, 8, 8))

    assert targets.sum() == 0


def test_map_loss_weighs_positives():
    targets = torch.zeros(1, 13, 4, 8, 8)
    targets[0, 0, 0, 0, 0] = 1.0
    maps = torch.zeros_like(targets)

    loss = location_map_loss(maps, targets)

    # log(2) per voxel; the positive voxel weighs 200 (clamped from 3327).
    count = targets.numel()
    assert loss.item() == pytest.approx(
        torch.log(torch.tensor(2.0)).item() * (count - 1 + MAX_MAP_POS_WEIGHT) / count
    )


def test_target_ignores_points_outside_image():
    rows = _rows((-1.0, 8.0, 8.0, BASILAR), (8.0, 8.0, 32.5, BASILAR))

    targets = location_targets(rows, image_shape=(16, 32, 32), map_shape=(4, 8, 8))

    assert targets.sum() == 0
