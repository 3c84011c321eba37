"""Experiments: typed configuration, recipes, the phase runner and the results store."""
from .config import ExperimentConfig, build_config, parse_overrides, run_hash
from .recipes import expand_grid, find_recipe, load_recipe, recipe_names
from .runner import run_dir_for, run_experiment, store_for
from .store import ResultsStore

__all__ = ["ExperimentConfig", "ResultsStore", "build_config", "expand_grid", "find_recipe", "load_recipe",
           "parse_overrides", "recipe_names", "run_dir_for", "run_experiment", "run_hash", "store_for"]


def configs_from_recipe(ref: str, overrides: list[str] = ()) -> list[ExperimentConfig]:
    """Every run a recipe describes (one per ``grid`` combination), validated, CLI overrides last."""
    raw = load_recipe(ref)
    cli = parse_overrides(list(overrides))
    for key, value in [o for o in cli if o[0] == "grid" or o[0].startswith("grid.")]:
        from .config import set_dotted

        set_dotted(raw, key, value)
    cli = [o for o in cli if not (o[0] == "grid" or o[0].startswith("grid."))]
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        from ..errors import ConfigError

        raise ConfigError("grid must be a mapping of dotted keys to lists of values")
    base = {k: v for k, v in raw.items() if k != "grid"}
    configs, seen = [], set()
    for combo in expand_grid(grid):
        cfg = build_config(base, combo + cli)
        key = (cfg.name, run_hash(cfg))
        if key not in seen:  # an override can make grid points identical
            seen.add(key)
            configs.append(cfg)
    return configs
