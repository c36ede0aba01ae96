"""Every model equals its counterpart in the study's own code (tests/data/parity, copied from
shared/parity: official state dicts, inputs and the official modules' logits).

The official state dict goes through the same reader and name mapping as ``lrscan import``;
the logits must match in eval mode and in train mode (BatchNorm on the batch's statistics,
dropout off) to 1e-5 of their scale.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from lrscan.importer import read_checkpoint
from lrscan.models import MODELS, official_names
from lrscan.train.flat import layout

PARITY = Path(__file__).parent / "data" / "parity"

# fixture -> (lrscan model, its options, input shape, classes)
CASES = {
    "mlp_synthetic_w8.pt": ("mlp", {}, (32,), 2),
    "convnetsi_w8.pt": ("convnetsi", {"width": 8}, (3, 32, 32), 10),
    "resnet18si_w8.pt": ("resnet18si", {"width": 8}, (3, 32, 32), 10),
    "resnet18_affine_w8.pt": ("resnet18", {"width": 8}, (3, 32, 32), 10),
    "vit_small_si_w8.pt": ("vitsi", {"dim": 64, "depth": 2, "heads": 2, "dim_head": 32, "mlp_dim": 64}, (3, 32, 32),
                           10),
}


def build(name: str, options: dict, input_shape, n_classes, **extra):
    entry = MODELS[name]
    options = entry.validate({**entry.defaults, **options, **extra})
    torch.manual_seed(0)
    module = entry.build(options, input_shape, n_classes)
    return entry, module, options


def official_state(fixture: str, **extra):
    """The lrscan module of a fixture and its parameters/buffers as read from the official file."""
    name, options, input_shape, n_classes = CASES[fixture]
    entry, module, options = build(name, options, input_shape, n_classes, **extra)
    layers = layout(entry, module)
    mapping = official_names(entry, [layer.name for layer in layers], options)
    flat, _ = read_checkpoint(str(PARITY / fixture), layers, official=mapping)
    state = {layer.name: torch.from_numpy(flat[layer.start:layer.stop].copy()).reshape(layer.shape)
             for layer in layers}
    return module, state


def assert_logits_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = theirs.abs().max().item()
    worst = (ours - theirs).abs().max().item()
    assert worst <= 1e-5 * scale, f"logits differ by {worst:.3g}, {worst / scale:.3g} of their scale {scale:.3g}"


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("fixture", sorted(CASES))
def test_logits_equal_the_studys(fixture, mode):
    # The fixture's train-mode logits were taken with every dropout probability at 0.
    fix = torch.load(PARITY / fixture, weights_only=True)
    extra = {"dropout": 0.0} if mode == "train" and CASES[fixture][0] == "vitsi" else {}
    module, state = official_state(fixture, **extra)
    module.train(mode == "train")
    with torch.no_grad():
        logits = functional_call(module, state, (fix["x"],))
    assert_logits_close(logits, fix[f"logits_{mode}"])


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_official_names_map_both_ways(fixture):
    """Every official tensor that carries state has exactly one lrscan tensor, and back."""
    name, options, input_shape, n_classes = CASES[fixture]
    entry, module, options = build(name, options, input_shape, n_classes)
    layers = layout(entry, module)
    mapping = official_names(entry, [layer.name for layer in layers], options)
    official = torch.load(PARITY / fixture, weights_only=True)["state_dict"]
    carried = {k for k, v in official.items() if v.is_floating_point()}
    assert set(mapping.values()) == carried
    back = {v: k for k, v in mapping.items()}
    shapes = {layer.name: layer.shape for layer in layers}
    for key in carried:
        assert tuple(official[key].shape) == shapes[back[key]], key


def test_vit_has_the_studys_parameter_count_at_the_paper_shape():
    for n_classes, count in ((10, 9_634_800), (100, 9_680_970)):
        _, module, _ = build("vitsi", {}, (3, 32, 32), n_classes)
        assert sum(p.numel() for p in module.parameters()) == count
    # The variant without the feed-forward LayerNorms: two LayerNorms of 512 fewer per block.
    _, module, _ = build("vit", {}, (3, 32, 32), 10)
    assert sum(p.numel() for p in module.parameters()) == 9_634_800 - 6 * 2 * 2 * 512


def test_practical_resnet_has_the_studys_tensors():
    """The study's resnet_si_af: affine BatchNorm, a bias-free head (101 float tensors at w = 8)."""
    official = torch.load(PARITY / "resnet18_affine_w8.pt", weights_only=True)["state_dict"]
    _, module, _ = build("resnet18", {"width": 8}, (3, 32, 32), 10)
    ours = [t for t in module.state_dict().values() if t.is_floating_point()]
    assert len(ours) == sum(v.is_floating_point() for v in official.values())
    assert module.head.bias is None
    _, module, _ = build("resnet18", {}, (3, 32, 32), 10)
    assert sum(p.numel() for p in module.parameters()) == 11_173_056


def test_downsampling_shortcut_sees_the_activated_input():
    """Changing bn1's statistics moves the output through the shortcut too (it reads relu(bn1(x)))."""
    _, module, _ = build("resnet18si", {"width": 4}, (3, 16, 16), 10)
    block = module.stages[1][0]
    block.eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        residual = block.conv2(torch.relu(block.bn2(block.conv1(torch.relu(block.bn1(x))))))
        expected = residual + block.shortcut(torch.relu(block.bn1(x)))
        np.testing.assert_allclose(block(x).numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
