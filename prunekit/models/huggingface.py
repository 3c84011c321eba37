"""Hugging Face ``transformers`` models without hub access: ``model: {name: "hf:<ArchitectureClass>",
kwargs: {...}}`` builds the architecture from its config fields (``hidden_size``, ``num_hidden_layers``
...), or loads a local ``save_pretrained`` folder with ``kwargs: {pretrained: <folder>}`` (never a
download: ``local_files_only``). Sequence/image classification heads get ``num_labels`` = the
dataset's classes; other heads (a language model's) keep their config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("model 'hf:...' needs the transformers package; install it: pip install transformers") from None
    return transformers


def hf_builder(arch: str) -> Callable[..., nn.Module]:
    """A builder ``(num_classes=None, pretrained=None, **config_fields) -> model`` for class ``arch``."""
    transformers = _transformers()
    cls = getattr(transformers, arch, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "config_class")):
        raise ConfigError(f"model 'hf:{arch}': transformers has no model class {arch!r}; allowed: an architecture "
                          "class name such as BertForSequenceClassification or GPT2LMHeadModel")
    classifies = "Classification" in arch

    def build(num_classes: int | None = None, pretrained: str | None = None, **config: Any) -> nn.Module:
        labels = {"num_labels": num_classes} if classifies and num_classes is not None else {}
        if pretrained is not None:
            if not Path(pretrained).is_dir():
                raise ConfigError(f"model.kwargs.pretrained={pretrained!r} is not a folder; allowed: a local "
                                  "save_pretrained folder (no hub downloads)")
            return cls.from_pretrained(pretrained, local_files_only=True, **labels, **config)
        try:
            cfg = cls.config_class(**config, **labels)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model 'hf:{arch}': config {config!r} not accepted ({e})") from None
        return cls(cfg)

    return build
