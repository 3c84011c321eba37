"""Model zoo contract: every registered model builds, trains a step, and matches its reference's sizes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import models
from prunekit.errors import ConfigError, UnknownNameError


def conv(ci: int, co: int, k: int) -> int:
    return ci * co * k * k


def counts(model: nn.Module) -> tuple[int, int]:
    """(conv + linear weights, all parameters)."""
    prunable = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return prunable, sum(p.numel() for p in model.parameters())


def vgg(plan: list[int], flat_classifier: list[int]) -> tuple[int, int]:
    """(conv weights, sum of conv output channels) of a 3x3 VGG plan, plus classifier weights."""
    chans = [3, *plan]
    w = sum(conv(a, b, 3) for a, b in zip(chans[:-1], chans[1:]))
    fc = sum(a * b for a, b in zip(flat_classifier[:-1], flat_classifier[1:]))
    return w + fc, sum(plan)


VGG11 = [64, 128, 256, 256, 512, 512, 512, 512]
VGG16 = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
VGG19 = [64, 64, 128, 128, 256, 256, 256, 256] + [512] * 8


def basic_stage(cin: int, w: int, n: int, proj: bool) -> tuple[int, int]:
    """(conv weights, BN parameters) of n basic blocks; ``proj``: 1x1 + BN shortcut on the first."""
    weights = conv(cin, w, 3) + (2 * n - 1) * conv(w, w, 3) + (conv(cin, w, 1) if proj else 0)
    return weights, 2 * (2 * n * w + (w if proj else 0))


def bottleneck_stage(cin: int, w: int, n: int) -> tuple[int, int]:
    first = conv(cin, w, 1) + conv(w, w, 3) + conv(w, 4 * w, 1) + conv(cin, 4 * w, 1)
    rest = (n - 1) * (conv(4 * w, w, 1) + conv(w, w, 3) + conv(w, 4 * w, 1))
    return first + rest, 2 * (n * 6 * w + 4 * w)


def resnet(stem_k: int, stages: list[tuple[int, int, int, bool]], fc_in: int, classes: int, fc_bias: bool,
           bottleneck: bool = False) -> tuple[int, int]:
    """(prunable, total) of a 4-stage or 3-stage ResNet from (cin, width, blocks, projection) stages."""
    stem = conv(3, stages[0][1] if not bottleneck else 64, stem_k) if stem_k else 0
    width0 = 64 if bottleneck else stages[0][1]
    w, bn = stem, 2 * width0
    for cin, width, n, proj in stages:
        sw, sbn = bottleneck_stage(cin, width, n) if bottleneck else basic_stage(cin, width, n, proj)
        w, bn = w + sw, bn + sbn
    w += fc_in * classes
    return w, w + bn + (classes if fc_bias else 0)


def bip_resnet(n: int) -> tuple[int, int]:
    """BiP resnet{6n+2}s: option-A shortcuts have no parameters; fc has a bias."""
    return resnet(3, [(16, 16, n, False), (16, 32, n, False), (32, 64, n, False)], 64, 10, fc_bias=True)


R18 = [(64, 64, 2, False), (64, 128, 2, True), (128, 256, 2, True), (256, 512, 2, True)]
R34 = [(64, 64, 3, False), (64, 128, 4, True), (128, 256, 6, True), (256, 512, 3, True)]
R50 = [(64, 64, 3, True), (256, 128, 4, True), (512, 256, 6, True), (1024, 512, 3, True)]


def wrn16_8() -> tuple[int, int]:
    """LAP wrn-16-8_64: every conv and the linear have biases; 1x1 shortcuts (with bias) on each stage."""
    w = conv(3, 16, 3)
    b = 16
    bn = 0
    cin = 16
    for width in (128, 256, 512):
        w += conv(cin, width, 3) + 3 * conv(width, width, 3) + conv(cin, width, 1)
        b += 5 * width  # four 3x3 convs + the shortcut
        bn += 2 * (cin + width + 2 * width)  # bn1, bn2 of the first block, then of the second
        cin = width
    w += 512 * 200
    return w, w + b + bn + 2 * 512 + 200


def vit(patch: int, image: int, d: int, depth: int, mlp_dim: int, classes: int) -> tuple[int, int]:
    """torchvision VisionTransformer: patch conv, class token, positions, blocks, LN, head."""
    tokens = (image // patch) ** 2 + 1
    block_w = 4 * d * d + 2 * d * mlp_dim
    block_b = 4 * d + mlp_dim + d + 2 * 2 * d  # q/k/v/out, MLP biases, two LayerNorms
    w = 3 * d * patch * patch + depth * block_w + d * classes
    return w, w + d + d + tokens * d + depth * block_b + 2 * d + classes


# (prunable conv+linear weights, total parameters) at default input shape and classes; each derived by
# arithmetic from the reference definition named in the model's info()["source"].
EXPECTED: dict[str, tuple[int, int]] = {
    # LAP FCN 784-500-500-500-500-10: 1,147,000 weights (methods.md §4d), + 4*500 + 10 biases
    "fcn": (784 * 500 + 3 * 500 * 500 + 500 * 10, 1_147_000 + 4 * 500 + 10),
    # 784-300-100-10 = 266,200 weights + 410 biases
    "lenet300_100": (784 * 300 + 300 * 100 + 100 * 10, 266_200 + 410),
    # 64-256-128-10 = 50,432 weights + 394 biases
    "mlp": (64 * 256 + 256 * 128 + 128 * 10, 50_432 + 394),
    # LAP LeNet-5: 450 + 2,400 + 48,000 + 10,080 + 840 = 61,770 weights; biases 6+16+120+84+10
    "lenet5": (conv(3, 6, 5) + conv(6, 16, 5) + 400 * 120 + 120 * 84 + 84 * 10, 61_770 + 236),
    # LAP Conv-6: 2,261,184 weights (methods.md §4d); biases 64+64+128+128+256+256 + 256+256+10
    "conv6": (1_144_512 + 4096 * 256 + 256 * 256 + 256 * 10, 2_261_184 + 1418),
    # LAP VGGs: conv (with bias) + BN per conv, Linear(512, 10) with bias. VGG-19: 20,024,000 (methods.md §4d)
    "vgg11_bn_lap": (9_222_848, 9_222_848 + 3 * sum(VGG11) + 10),
    "vgg16_bn_lap": (14_715_584, 14_715_584 + 3 * sum(VGG16) + 10),
    "vgg19_bn_lap": (20_024_000, 20_024_000 + 3 * sum(VGG19) + 10),
    # GraNet: bias-free convs -> only BN (2 per channel) and the fc bias
    "vgg19_bn_granet": (20_024_000, 20_024_000 + 2 * sum(VGG19) + 10),
    # DPaI: conv biases + BN, like LAP's
    "vgg19_bn_dpai": (20_024_000, 20_024_000 + 3 * sum(VGG19) + 10),
    # BiP vgg16_bn: bias-free convs + BN; classifier 2048-256-256-10 with biases
    "vgg16_bn": (15_302_848, 15_302_848 + 2 * sum(VGG16) + 256 + 256 + 10),
    # open_lth ResNet-20: 270,896 weights in 22 tensors (methods.md §1b)
    "cifar_resnet20": (270_896, 272_474),
    # BiP ResNets: 0.27M / 0.46M / 0.66M / 0.85M params (BiP models/resnets.py docstring); resnet20s 269,722
    "resnet20s": (268_336, 269_722),
    "resnet32s": (461_872, 464_154),
    "resnet44s": (655_408, 658_586),
    "resnet56s": (848_944, 853_018),
    # CIFAR ResNets (GraNet/DPaI): bias-free classifier
    "cifar_resnet18": (11_164_352, 11_173_952),
    "cifar_resnet34": (21_265_088, 21_282_112),
    "cifar_resnet50": (23_467_712, 23_520_832),
    # LAP ResNet-18: the well-known CIFAR ResNet-18 size 11,173,962 (fc with bias)
    "resnet18_lap": (11_164_352, 11_173_962),
    # LAP's Tiny-ImageNet ResNet-50 (masked_resnet_64.py): CIFAR ResNet-50 convs, 200-class fc with bias
    "resnet50_lap": (23_856_832, 23_910_152),
    # torchvision resnet18 / resnet50 num_params (= BiP models/resnet.py)
    "imagenet_resnet18": (11_678_912, 11_689_512),
    "imagenet_resnet50": (25_502_912, 25_557_032),
    # WRN-16-8 (Zagoruyko & Komodakis: 11.0M) with LAP's 200-class head
    "wrn16_8": (11_051_440, 11_063_336),
    # ViT-Lite-7/4 sizes: 3.72M parameters (Hassani et al. 2021, Table)
    "vit_small_patch4": (3_684_864, 3_722_250),
    # torchvision vit_b_16 num_params = 86,567,656 (ViT_B_16_Weights.IMAGENET1K_V1.meta)
    "vit_b16": (86_292_480, 86_567_656),
}


def test_expected_counts_follow_from_arithmetic():
    assert vgg(VGG19, [512, 10])[0] == 20_024_000
    assert vgg(VGG16, [512, 10])[0] == EXPECTED["vgg16_bn_lap"][0]
    assert vgg(VGG11, [512, 10])[0] == EXPECTED["vgg11_bn_lap"][0]
    assert vgg(VGG16, [2048, 256, 256, 10])[0] == EXPECTED["vgg16_bn"][0]
    assert vgg([64, 64, 128, 128, 256, 256], [])[0] == 1_144_512
    open_lth = resnet(3, [(16, 16, 3, False), (16, 32, 3, True), (32, 64, 3, True)], 64, 10, fc_bias=True)
    assert open_lth == EXPECTED["cifar_resnet20"]
    for n, depth in ((3, 20), (5, 32), (7, 44), (9, 56)):
        assert bip_resnet(n) == EXPECTED[f"resnet{depth}s"]
    assert resnet(3, R18, 512, 10, fc_bias=False) == EXPECTED["cifar_resnet18"]
    assert resnet(3, R34, 512, 10, fc_bias=False) == EXPECTED["cifar_resnet34"]
    assert resnet(3, R50, 2048, 10, fc_bias=False, bottleneck=True) == EXPECTED["cifar_resnet50"]
    assert resnet(3, R18, 512, 10, fc_bias=True) == EXPECTED["resnet18_lap"]
    assert resnet(3, R50, 2048, 200, fc_bias=True, bottleneck=True) == EXPECTED["resnet50_lap"]
    assert resnet(7, R18, 512, 1000, fc_bias=True) == EXPECTED["imagenet_resnet18"]
    assert resnet(7, R50, 2048, 1000, fc_bias=True, bottleneck=True) == EXPECTED["imagenet_resnet50"]
    assert wrn16_8() == EXPECTED["wrn16_8"]
    assert vit(4, 32, 256, 7, 512, 10) == EXPECTED["vit_small_patch4"]
    assert vit(16, 224, 768, 12, 3072, 1000) == EXPECTED["vit_b16"]


def test_every_model_has_expected_counts():
    assert set(EXPECTED) == set(models.names())


@pytest.mark.parametrize("name", models.names())
def test_parameter_counts_match_reference(name):
    with torch.device("meta"):  # shapes only: ViT-B/16 and ResNet-50 count in milliseconds
        model = models.create(name)
    assert counts(model) == EXPECTED[name]


# Reduced inputs where legitimate: the ImageNet ResNets pool globally, so 64x64 exercises every layer;
# ViT-B/16 is built for 32x32 (4 patches), which changes only the length of the positional embedding.
REDUCED: dict[str, tuple[dict, tuple[int, int, int]]] = {
    "imagenet_resnet18": ({}, (3, 64, 64)),
    "imagenet_resnet50": ({}, (3, 64, 64)),
    "vit_b16": ({"input_size": 32}, (3, 32, 32)),
}


def _train_step(model: nn.Module, shape: tuple[int, ...], classes: int) -> None:
    x = torch.randn(2, *shape)
    y = model(x)
    assert y.shape == (2, classes)
    assert torch.isfinite(y).all()
    F.cross_entropy(y, torch.tensor([0, classes - 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", models.names())
def test_forward_backward(name):
    meta = models.info(name)
    kwargs, shape = REDUCED.get(name, ({}, meta["input_shape"]))
    _train_step(models.create(name, **kwargs), shape, meta["num_classes"])


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("lenet5", {"in_channels": 1, "input_size": 28}, (1, 28, 28)),  # MNIST
        ("fcn", {"in_channels": 3, "input_size": 32}, (3, 32, 32)),  # CIFAR
        ("lenet300_100", {"in_features": 3072}, (3, 32, 32)),
        ("mlp", {"in_features": 784, "hidden": [32]}, (1, 28, 28)),
        ("conv6", {"in_channels": 1, "input_size": 28}, (1, 28, 28)),
        ("vgg19_bn_granet", {"input_size": 64}, (3, 64, 64)),  # GraNet's Tiny-ImageNet AvgPool2d(4)
        ("vgg11_bn_lap", {"input_size": 64}, (3, 64, 64)),  # LAP's _64 variant: strided first conv
        ("resnet18_lap", {"input_size": 64}, (3, 64, 64)),
        ("resnet50_lap", {"input_size": 32}, (3, 32, 32)),
        ("wrn16_8", {"input_size": 32, "dropout": 0.0}, (3, 32, 32)),
        ("cifar_resnet18", {"in_channels": 1}, (1, 28, 28)),
        ("resnet20s", {}, (3, 32, 32)),
        ("vit_small_patch4", {"in_channels": 1, "input_size": 28}, (1, 28, 28)),
    ],
)
def test_other_input_shapes(name, kwargs, shape):
    _train_step(models.create(name, num_classes=7, **kwargs), shape, 7)


def test_none_options_take_model_defaults():
    model = models.create("cifar_resnet20", num_classes=None, in_channels=None, input_size=None)
    assert model.conv1.in_channels == 3 and model.fc.out_features == 10


def test_lenet5_mnist_and_cifar_differ_only_in_first_layers():
    mnist = models.create("lenet5", in_channels=1, input_size=28)
    assert mnist.conv1.weight.shape == (6, 1, 5, 5) and mnist.fc1.in_features == 16 * 4 * 4
    assert models.create("lenet5").fc1.in_features == 16 * 5 * 5


@pytest.mark.parametrize("name", [n for n in models.names() if n != "vit_b16"])
def test_init_is_deterministic_under_seed(name):
    torch.manual_seed(3)
    a = models.create(name).state_dict()
    torch.manual_seed(3)
    b = models.create(name).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(4)
    c = models.create(name).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", models.names())
def test_classifier_is_last_linear_and_info_is_complete(name):
    meta = models.info(name)
    for key in ("source", "paper", "family", "init", "input_shape", "num_classes"):
        assert meta[key], key
    assert len(meta["input_shape"]) == 3
    opts = meta["options"]  # builder defaults agree with the advertised shape (None: derived from it)
    assert opts.get("input_size") in (None, meta["input_shape"][1])
    assert opts.get("in_channels") in (None, meta["input_shape"][0])
    with torch.device("meta"):
        model = models.create(name, num_classes=7)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[-1].out_features == 7


def _prunable_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_cifar_resnet20_prunable_order():
    names = _prunable_names(models.create("cifar_resnet20"))
    blocks = [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(3) for c in (1, 2)]
    for s in (2, 3):  # the stage transition block: conv1, conv2, then the projection
        blocks.insert(blocks.index(f"layer{s}.0.conv2") + 1, f"layer{s}.0.shortcut.0")
    assert names == ["conv1", *blocks, "fc"] and len(names) == 22


@pytest.mark.parametrize(
    "name, projections",
    [("cifar_resnet20", 2), ("resnet20s", 0), ("cifar_resnet18", 3), ("cifar_resnet50", 4),
     ("resnet18_lap", 3), ("resnet50_lap", 4), ("imagenet_resnet18", 3), ("imagenet_resnet50", 4), ("wrn16_8", 3)],
)
def test_projection_shortcuts_are_named_shortcut(name, projections):
    with torch.device("meta"):
        model = models.create(name)
    found = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
             and not n.split(".")[-1].startswith("conv")]
    assert len(found) == projections
    assert all("shortcut" in n for n in found)


@pytest.mark.parametrize("name", ["vit_small_patch4", "vit_b16"])
def test_vit_projections_are_linear(name):
    with torch.device("meta"):
        model = models.create(name)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    owned = {f"{mn}.{pn}" if mn else pn for mn, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)) for pn, _ in m.named_parameters(recurse=False)}
    assert {n for n, _ in model.named_parameters()} - owned == {"class_token", "pos_embedding"}
    d = model.blocks[0].self_attention.q.in_features
    assert all(model.blocks[0].self_attention.__getattr__(p).weight.shape == (d, d) for p in "qkv")


def test_init_schemes_follow_references():
    torch.manual_seed(0)
    fcn = models.create("fcn")  # LAP: xavier normal, zero bias
    w = fcn.layers[2].weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.03)
    assert all((m.bias == 0).all() for m in fcn.modules() if isinstance(m, nn.Linear))
    g = models.create("vgg19_bn_granet")  # conv kaiming fan-out, linear N(0, 0.01)
    assert g.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert g.features[-3].weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.03)
    r = models.create("cifar_resnet20")  # kaiming normal fan-in
    assert r.layer3[2].conv2.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert (models.create("cifar_resnet20", init="dpai").fc.bias == 0).all()
    bound_dpai = math.sqrt(6 / (512 * 9))  # kaiming_uniform a=0 vs PyTorch default a=sqrt(5)
    w = models.create("cifar_resnet18", init="dpai").layer4[1].conv2.weight.abs().max().item()
    assert bound_dpai * 0.99 < w <= bound_dpai
    w = models.create("cifar_resnet18", init="granet").layer4[1].conv2.weight.abs().max().item()
    assert w <= math.sqrt(1 / (512 * 9)) < bound_dpai * 0.99
    v = models.create("vit_small_patch4")
    q = v.blocks[0].self_attention.q.weight.abs().max().item()
    assert math.sqrt(6 / (4 * 256)) * 0.99 < q <= math.sqrt(6 / (4 * 256))
    assert v.head.weight.abs().sum() > 0
    assert models.create("vit_b16", input_size=32).head.weight.abs().sum() == 0
    assert models.create("wrn16_8").bn1.momentum == 0.9


def test_unknown_model_name_suggests():
    with pytest.raises(UnknownNameError, match="cifar_resnet20"):
        models.create("cifar_resnet2")
    with pytest.raises(UnknownNameError, match="did you mean"):
        models.info("vgg19_bn_granett")


@pytest.mark.parametrize(
    "name, kwargs, words",
    [
        ("cifar_resnet20", {"widht": 2}, ["'widht'", "in_channels", "input_size"]),
        ("fcn", {"hidden": [10]}, ["'hidden'", "in_features"]),
        ("cifar_resnet20", {"num_classes": 0}, ["num_classes=0"]),
        ("cifar_resnet20", {"in_channels": 2.5}, ["in_channels=2.5"]),
        ("cifar_resnet20", {"init": "xavier"}, ["init='xavier'", "granet"]),
        ("vgg19_bn_granet", {"input_size": 40}, ["input_size=40", "multiple of 16"]),
        ("vgg16_bn_lap", {"input_size": 48}, ["input_size=48"]),
        ("vit_b16", {"input_size": 100}, ["input_size=100", "patch size 16"]),
        ("mlp", {"hidden": "256"}, ["hidden='256'"]),
        ("mlp", {"hidden": [256, 0]}, ["hidden[1]=0"]),
        ("fcn", {"in_features": 100, "input_size": 32}, ["in_features=100"]),
        ("wrn16_8", {"dropout": 1.5}, ["dropout=1.5"]),
    ],
)
def test_bad_options_raise_config_error(name, kwargs, words):
    with pytest.raises(ConfigError) as err:
        models.create(name, **kwargs)
    for w in words:
        assert w in str(err.value)
