"""Weight initialisations of the reference repositories.

Every function re-initialises a built model in place, visiting modules in registration order (so a
seeded run is deterministic). Batch-norm layers keep PyTorch's defaults (weight 1, bias 0), which is
what every reference sets explicitly or implicitly. Modules a scheme does not touch keep PyTorch's
default initialisation, as in the reference.
"""
from __future__ import annotations

from torch import nn

_WEIGHTED = (nn.Conv2d, nn.Linear)


def lap_xavier(model: nn.Module) -> None:
    """LAP (``network/masked_modules.py``): Xavier-normal weights and zero biases for every masked
    conv/linear. The 1x1 projection shortcuts are plain ``nn.Conv2d`` there and keep PyTorch's default."""
    for name, m in model.named_modules():
        if isinstance(m, _WEIGHTED) and "shortcut" not in name:
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def kaiming_normal_fan_in(model: nn.Module, zero_bias: bool) -> None:
    """``kaiming_normal_(w)`` (fan-in, gain sqrt 2) on conv and linear weights: open_lth's ResNet-20
    (GraNet ``initializers.kaiming_normal``), BiP ``models/resnets.py``, DPaI ``ResNet20``/``vgg*``.
    GraNet and BiP leave linear biases at PyTorch's default; DPaI zeroes them (``zero_bias``)."""
    for m in model.modules():
        if isinstance(m, _WEIGHTED):
            nn.init.kaiming_normal_(m.weight)
            if zero_bias and m.bias is not None:
                nn.init.zeros_(m.bias)


def kaiming_uniform_fan_in(model: nn.Module) -> None:
    """DPaI ``models.py: ResNet._initialize_weights``: ``kaiming_uniform_(w)`` (a=0), zero biases."""
    for m in model.modules():
        if isinstance(m, _WEIGHTED):
            nn.init.kaiming_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def vgg_fan_out(model: nn.Module) -> None:
    """GraNet ``models/init_utils.py: weights_init`` (= BiP ``vgg_cifar.initialize_weights``):
    conv kaiming-normal fan-out, linear N(0, 0.01), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def torchvision_resnet(model: nn.Module) -> None:
    """torchvision / BiP ``models/resnet.py``: conv kaiming-normal fan-out; the fc keeps PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
