"""Model zoo: registered builders named after their provenance.

``create("cifar_resnet20", num_classes=10)`` builds a model; ``names()`` lists them; ``info(name)`` gives
the reference it follows (``source``, ``paper``), its default ``input_shape`` and ``num_classes``, its
``family``, weight ``init`` and accepted ``options``. Conventions the pruning code relies on: projection
shortcuts live in a submodule whose name contains ``shortcut``; the classifier is the last ``nn.Linear``
registered; every projection of the ViT is an ``nn.Linear``.
"""
from .zoo import MODELS, create, info, names, options

# Importing a family module registers its builders; this order is the order of names().
from . import mlp  # noqa: E402,F401  isort: skip
from . import convnets  # noqa: E402,F401  isort: skip
from . import vgg  # noqa: E402,F401  isort: skip
from . import resnet_cifar  # noqa: E402,F401  isort: skip
from . import resnet  # noqa: E402,F401  isort: skip
from . import wrn  # noqa: E402,F401  isort: skip
from . import vit  # noqa: E402,F401  isort: skip

__all__ = ["MODELS", "create", "info", "names", "options"]
