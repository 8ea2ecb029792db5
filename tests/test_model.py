import logging

import pytest
import torch

from rsna.model import (
    MODEL_DEPTHS,
    BasicBlock,
    ModelConfigError,
    build_model,
    coordinate_grid,
    load_initial_weights,
    unwrap_model,
)

SHAPE = (2, 1, 32, 32, 32)


def _model(**kwargs):
    torch.manual_seed(0)
    settings = {"name": "resnet18", "width": 4, "norm": "batch", "norm_groups": 2}
    return build_model(**{**settings, **kwargs})


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_output_shape_and_finite(norm, checkpointing):
    model = _model(norm=norm, gradient_checkpointing=checkpointing)
    images = torch.rand(SHAPE)

    logits = model(images)
    logits.square().sum().backward()

    assert logits.shape == (2, 14)
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODEL_DEPTHS))
def test_depth_sets_blocks_per_stage(name):
    model = _model(name=name)

    blocks = [
        sum(isinstance(m, BasicBlock) for m in stage.modules()) for _, stage in model.stages()
    ]

    assert tuple(blocks) == MODEL_DEPTHS[name]


def test_anisotropic_input_shape():
    model = _model().eval()

    assert model(torch.rand(1, 1, 32, 48, 64)).shape == (1, 14)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_checkpointing_matches_plain_training_step(norm):
    images = torch.rand(SHAPE)
    results = []
    for checkpointing in (False, True):
        model = _model(norm=norm, gradient_checkpointing=checkpointing)
        logits = model(images)
        (logits.square().sum() + logits.sum()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        results.append((logits.detach(), grads, model.state_dict()))

    (plain_logits, plain_grads, plain_state), (ckpt_logits, ckpt_grads, ckpt_state) = results
    assert torch.equal(plain_logits, ckpt_logits)
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7)
    # BatchNorm running statistics are updated once per step, not once per recomputation.
    for name in plain_state:
        assert torch.equal(plain_state[name], ckpt_state[name]), name


def test_channels_last_matches_contiguous():
    images = torch.rand(SHAPE)
    plain = _model().eval()
    channels_last = _model(channels_last=True).eval()

    assert channels_last.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(channels_last(images), plain(images), rtol=1e-4, atol=1e-5)


def test_unknown_model_lists_choices():
    with pytest.raises(
        ModelConfigError,
        match=r"unknown model 'resnet50'; valid choices: \['resnet10', 'resnet18', 'resnet34'\]",
    ):
        build_model(name="resnet50")


def test_unknown_norm_lists_choices():
    with pytest.raises(
        ModelConfigError, match=r"unknown norm 'layer'; valid choices: \['batch', 'group'\]"
    ):
        build_model(width=4, norm="layer")


def test_group_count_must_divide_width():
    with pytest.raises(ModelConfigError, match="norm_groups=3 does not divide 4 channels"):
        build_model(width=4, norm="group", norm_groups=3)


def test_init_weights_copies_state_dict(tmp_path):
    source = _model()
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(1.0)
    path = tmp_path / "weights.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)

    model = build_model(name="resnet18", width=4, norm="batch", init_weights=path)

    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_init_weights_skips_other_classifier(tmp_path, caplog):
    source = build_model(width=4, num_classes=3)
    path = tmp_path / "weights.pt"
    torch.save({"model": source.state_dict()}, path)
    target = build_model(width=4)

    with caplog.at_level(logging.WARNING):
        loaded = load_initial_weights(target, path)

    assert "fc.weight" not in loaded and "fc.bias" not in loaded
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert "2 tensors skipped" in caplog.text


def test_init_weights_without_match_raises(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, path)

    with pytest.raises(ModelConfigError, match="has no tensor matching"):
        build_model(width=4, init_weights=path)


def test_init_weights_missing_file(tmp_path):
    with pytest.raises(ModelConfigError, match="not found"):
        build_model(width=4, init_weights=tmp_path / "absent.pt")


def test_unwrap_model_returns_network():
    model = _model()

    assert unwrap_model(model) is model


def test_position_encoding_starts_neutral_and_learns():
    images = torch.rand(SHAPE)
    plain = _model().eval()
    encoded = _model(position_encoding=True).eval()

    logits = encoded(images)
    logits.sum().backward()

    assert encoded.position.weight.shape == (4, 3, 1, 1, 1)
    assert torch.equal(logits, plain(images))
    assert encoded.position.weight.grad.abs().sum() > 0


def test_coordinate_grid_values():
    grid = coordinate_grid(torch.zeros(2, 1, 3, 2, 5))

    assert grid.shape == (2, 3, 3, 2, 5)
    assert grid[0, 0, :, 0, 0].tolist() == [-1.0, 0.0, 1.0]
    assert grid[1, 1, 0, :, 0].tolist() == [-1.0, 1.0]
    assert grid[0, 2, 2, 1, :].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_location_head_maps_quarter_resolution():
    model = _model(location_head=True)

    logits, maps = model(torch.rand(2, 1, 32, 48, 64), with_location_maps=True)

    assert logits.shape == (2, 14)
    assert maps.shape == (2, 13, 8, 12, 16)
    assert model.eval()(torch.rand(1, 1, 32, 32, 32)).shape == (1, 14)


def test_location_maps_need_head():
    with pytest.raises(ModelConfigError, match="built without location_head"):
        _model()(torch.rand(SHAPE), with_location_maps=True)


def test_location_maps_same_with_checkpointing():
    images = torch.rand(SHAPE)
    results = []
    for checkpointing in (False, True):
        model = _model(
            location_head=True, position_encoding=True, gradient_checkpointing=checkpointing
        )
        logits, maps = model(images, with_location_maps=True)
        (logits.sum() + maps.square().mean()).backward()
        results.append((maps.detach(), model.conv1.weight.grad.clone()))

    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-7)
