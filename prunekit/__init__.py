"""prunekit: neural-network pruning across the training lifecycle.

``prunekit.create(name, model, **settings)`` builds a pruner for any ``nn.Module``;
``prunekit.models.create`` and ``prunekit.data.build_loaders`` give the papers' models and data;
``prunekit.run(config)`` runs a whole experiment.
"""
from . import data, methods, models, sparsity
from .errors import PrunekitError
from .experiments import ExperimentConfig, build_config, run_experiment
from .methods import METHODS, PruneContext, create
from .sparsity import MaskSet, Targets

__version__ = "0.1.0"


def run(config, force: bool = False, reporter=None):
    """Run one experiment from an ``ExperimentConfig`` or a dict of settings; returns its result row."""
    cfg = config if isinstance(config, ExperimentConfig) else build_config(dict(config))
    return run_experiment(cfg, force=force, reporter=reporter)


__all__ = ["METHODS", "MaskSet", "PruneContext", "PrunekitError", "Targets", "__version__", "create", "data", "methods", "models", "run",
           "sparsity"]
