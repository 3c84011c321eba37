"""Experiments: typed configuration, recipes, the phase runner and the results store."""
from .config import ExperimentConfig, build_config, parse_overrides, run_hash
from .recipes import expand_grid, find_recipe, load_recipe, recipe_names
from .runner import run_dir_for, run_experiment, store_for
from .store import ResultsStore
from .sweep import expand

__all__ = ["ExperimentConfig", "ResultsStore", "build_config", "expand_grid", "find_recipe", "load_recipe",
           "parse_overrides", "recipe_names", "run_dir_for", "run_experiment", "run_hash", "store_for"]


def configs_from_recipe(ref: str, overrides: list[str] = ()) -> list[ExperimentConfig]:
    """Every run a recipe describes (one per ``grid`` combination, no duplicates), validated, CLI
    overrides last; ``grid.KEY=[...]`` replaces one grid axis (see :func:`prunekit.experiments.sweep.expand`)."""
    return expand(load_recipe(ref), list(overrides))
