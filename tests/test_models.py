"""The image models (ResNet-18, ConvNet, ViT): scale invariance, frozen heads, radii, training."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.testing import assert_close

from lrscan.errors import LrscanError
from lrscan.models import MODELS
from lrscan.models.vit import FeedForward, LocalitySelfAttention, shifted

SI_MODELS = ["resnet18si", "convnetsi"]
PRACTICAL = ["resnet18", "vit", "vitsi"]
# Small enough that every test runs in well under a second on one CPU core.
TINY = {
    "resnet18si": {"width": 4},
    "convnetsi": {"width": 4},
    "resnet18": {"width": 4},
    "vit": {"dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 16},
    "vitsi": {"dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 16},
}
SHAPE, CLASSES = (3, 8, 8), 5


@pytest.fixture(autouse=True)
def one_thread():
    # These models are tiny: a second thread only adds synchronisation (and contention on a
    # busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(name, shape=SHAPE, n_classes=CLASSES, **options):
    entry = MODELS[name]
    options = entry.validate({**entry.defaults, **TINY[name], **options})
    torch.manual_seed(0)
    return entry, options, entry.build(options, shape, n_classes)


def batch(n=16, shape=SHAPE, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def scale_si_group(entry, module, c):
    scaled = copy.deepcopy(module)
    with torch.no_grad():
        for name, p in scaled.named_parameters():
            if entry.is_si(name):
                p.mul_(c)
    return scaled


def si_norm(entry, module):
    return math.sqrt(sum(float(p.detach().double().square().sum()) for n, p in module.named_parameters() if entry.is_si(n)))


def recompute_bn(module, x):
    """Set every BatchNorm's running statistics to the exact statistics of batch ``x``."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, that batch's statistics
    with torch.no_grad():
        module.train()(x)
    return module.eval()


def test_registered_names_and_updates():
    updates = {name: MODELS[name].update for name in SI_MODELS + PRACTICAL}
    assert updates == {"resnet18si": "sphere", "convnetsi": "sphere", "resnet18": "sgd", "vit": "adam", "vitsi": "adam"}
    assert MODELS["resnet18"].defaults["momentum"] == 0.9 and MODELS["resnet18"].defaults["weight_decay"] == 5e-4
    assert MODELS["vit"].defaults["weight_decay"] == 1e-4
    assert MODELS["vit"].defaults["si"] is False and MODELS["vitsi"].defaults["si"] is True


@pytest.mark.parametrize("name", SI_MODELS)
@settings(max_examples=6, deadline=None)
@given(c=st.floats(0.05, 20.0))
@torch.no_grad()
def test_si_logits_ignore_the_scale_of_the_si_group(name, c):
    entry, _, module = make(name)
    module.double()
    # BN divides by sqrt(var + eps), which is scale-invariant only up to eps / var; in these
    # tiny models a batch variance can be ~1e-3, so the check all but removes eps (in
    # float64) to test the architecture itself: every convolution feeds a normalisation.
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-30  # torch refuses 0 in training
    x, _ = batch()
    x = x.double()
    scaled = scale_si_group(entry, module, c)
    # Train mode normalises with the batch's statistics, so scaling every conv weight by c
    # scales every BN input by c and leaves the logits unchanged.
    reference = module.train()(x)
    tol = dict(rtol=1e-9, atol=1e-9 * float(reference.abs().max()))
    assert_close(scaled.train()(x), reference, **tol)
    # Eval mode uses running statistics, which belong to the weights they were measured with:
    # after recomputing them for each model on the same batch (as for any constructed point,
    # SPEC §5) the scaled model's running means are c times, its variances c² times the
    # original's, and the eval logits agree again.
    assert_close(recompute_bn(scaled, x)(x), recompute_bn(module, x)(x), **tol)


@pytest.mark.parametrize("name", SI_MODELS)
def test_si_models_train_exactly_the_conv_weights_under_a_frozen_head(name):
    entry, _, module = make(name)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    si = {n for n, _ in module.named_parameters() if entry.is_si(n)}
    convs = {f"{n}.weight" for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}
    assert trainable == si == convs
    assert all(m.bias is None for m in module.modules() if isinstance(m, nn.Conv2d))
    assert all(not m.affine and m.track_running_stats for m in module.modules() if isinstance(m, nn.BatchNorm2d))
    head = dict(module.head.named_parameters())
    assert not any(p.requires_grad for p in head.values())
    assert set(head) == ({"weight", "bias"} if name == "convnetsi" else {"weight"})
    assert float(head["weight"].norm()) == pytest.approx(10.0, rel=1e-6)
    _, _, other = make(name, head_norm=3.0)
    assert float(other.head.weight.norm()) == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize(("name", "study_radius"), [("resnet18si", 28), ("convnetsi", 12)])
def test_radius_is_the_norm_of_a_fresh_init(name, study_radius):
    entry = MODELS[name]
    options = entry.validate(dict(entry.defaults))
    radius = entry.radius(options)
    assert math.isclose(radius, study_radius, rel_tol=0.06)  # the study's rounded values
    torch.manual_seed(0)
    assert si_norm(entry, entry.build(options, (3, 32, 32), 10)) == pytest.approx(radius, rel=0.02)
    # The radius follows the width (√w) and does not depend on the image channels.
    _, narrow, module = make(name, shape=(1, 8, 8), width=16)
    assert si_norm(entry, module) == pytest.approx(entry.radius(narrow), rel=0.03)


@pytest.mark.parametrize("name", SI_MODELS + PRACTICAL)
def test_build_is_seeded_by_the_global_rng_and_works_through_functional_call(name):
    entry, options, module = make(name)
    _, _, again = make(name)
    for (n, a), (_, b) in zip(module.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    x, _ = batch()
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    module.eval()
    assert_close(functional_call(module, state, (x,)), module(x))
    assert module(x).shape == (16, CLASSES)
    if name in PRACTICAL:
        assert entry.radius(options) is None
        assert not any(entry.is_si(n) for n, _ in module.named_parameters())
        assert all(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("name", PRACTICAL)
def test_practical_models_learn_a_small_batch(name):
    entry, options, module = make(name)
    x, y = batch()
    if entry.update == "sgd":
        opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=options["momentum"],
                              weight_decay=options["weight_decay"])
    else:
        opt = torch.optim.Adam(module.parameters(), lr=1e-2, weight_decay=options["weight_decay"])

    def loss():
        with torch.no_grad():
            return float(F.cross_entropy(module.eval()(x), y))

    before = loss()
    torch.manual_seed(2)  # dropout
    for _ in range(15):
        opt.zero_grad()
        F.cross_entropy(module.train()(x), y).backward()
        opt.step()
    assert loss() < 0.5 * before


def test_resnet18_has_affine_bn_and_a_trainable_bias_free_head():
    # As the study's resnet_si_af module, which its practical ResNet checkpoints load into.
    _, _, module = make("resnet18")
    assert all(m.affine for m in module.modules() if isinstance(m, nn.BatchNorm2d))
    assert module.head.bias is None and module.head.weight.requires_grad


@pytest.mark.parametrize(("name", "invariant"), [("vit", False), ("vitsi", True)])
def test_si_vit_ignores_the_scale_of_each_feed_forward_linear(name, invariant):
    _, _, module = make(name)
    module.double().eval()
    # As for BN above, a LayerNorm's eps breaks the invariance slightly: remove it.
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = 0.0
    x, _ = batch()
    x = x.double()
    reference = module(x)
    scaled = copy.deepcopy(module)
    with torch.no_grad():
        for feed_forward in (m for m in scaled.modules() if isinstance(m, FeedForward)):
            for linear in (m for m in feed_forward.modules() if isinstance(m, nn.Linear)):
                linear.weight.mul_(4.0)
                linear.bias.mul_(4.0)
    assert torch.allclose(scaled(x), reference, rtol=1e-9, atol=1e-9) == invariant


def test_shifted_patch_tokens_see_one_pixel_shifts_along_each_axis():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 4] = 1.0
    x[0, 0, 7, 7] = 1.0  # shifted out of the image right and down: zero fill, no wrap-around
    out = shifted(x)
    assert out.shape == (1, 5, 8, 8)
    ones = {tuple(i.tolist()) for i in out[0].nonzero()}
    # Channel 0 is the image; then right, left, down and up by one pixel (the study's order).
    assert ones == {(0, 3, 4), (0, 7, 7), (1, 3, 5), (2, 3, 3), (2, 7, 6), (3, 4, 4), (4, 2, 4), (4, 6, 7)}


def test_locality_attention_never_attends_to_the_token_itself():
    # With two tokens and the diagonal masked out, each token attends only to the other:
    # its output must not depend on its own value.
    torch.manual_seed(0)
    attention = LocalitySelfAttention(dim=8, heads=2, dim_head=4, dropout=0.0)
    x = torch.randn(3, 2, 8)
    changed = x.clone()
    changed[:, 0] = torch.randn(3, 8)
    assert_close(attention(changed)[:, 0], attention(x)[:, 0])
    assert not torch.allclose(attention(changed)[:, 1], attention(x)[:, 1])
    assert attention.log_inverse_temperature.requires_grad


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("resnet18si", {"width": 0}, r"\[model\] width must be at least 1"),
        ("resnet18si", {"width": 2.5}, r"\[model\] width must be a whole number"),
        ("resnet18si", {"head_norm": 0}, r"\[model\] head_norm must be positive"),
        ("resnet18", {"momentum": 1.0}, r"\[model\] momentum must be below 1"),
        ("resnet18", {"weight_decay": -1e-4}, r"\[model\] weight_decay must be non-negative"),
        ("convnetsi", {"width": "wide"}, r"\[model\] width must be a whole number"),
        ("convnetsi", {"head_norm": True}, r"\[model\] head_norm must be a number"),
        ("vit", {"patch": 0}, r"\[model\] patch must be at least 1"),
        ("vit", {"heads": 0}, r"\[model\] heads must be at least 1"),
        ("vit", {"dropout": 1}, r"\[model\] dropout must be below 1"),
        ("vitsi", {"si": "yes"}, r"\[model\] si must be true or false"),
        ("vitsi", {"weight_decay": "none"}, r"\[model\] weight_decay must be a number"),
    ],
)
def test_bad_options_are_refused(name, options, match):
    entry = MODELS[name]
    with pytest.raises(LrscanError, match=match):
        entry.validate({**entry.defaults, **options})


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        ("resnet18si", (32,), r"needs images \(channels, height, width\), the dataset gives shape \(32,\)"),
        ("resnet18", (3, 8), "needs images"),
        ("convnetsi", (3, 4, 8), "at least 8×8 pixels"),
        ("vit", (3, 10, 8), "multiples of the patch size 4"),
        ("vitsi", (1, 8), "needs images"),
    ],
)
def test_bad_input_shapes_are_refused(name, shape, match):
    entry = MODELS[name]
    with pytest.raises(LrscanError, match=match):
        entry.build(entry.validate({**entry.defaults, **TINY[name]}), shape, CLASSES)
