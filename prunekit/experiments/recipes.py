"""Finding and reading recipes (YAML files in ``recipes/``), safely."""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, UnknownNameError
from ..registry import suggest

PACKAGE_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def recipe_dirs() -> list[Path]:
    dirs = [Path.cwd() / "recipes", PACKAGE_RECIPES]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def recipe_names() -> list[str]:
    names: list[str] = []
    for d in recipe_dirs():
        names += [p.stem for p in sorted(d.glob("*.yaml")) if p.stem not in names]
    return names


def find_recipe(ref: str) -> Path:
    """A recipe path from a file path or a recipe name (``quickstart`` -> ``recipes/quickstart.yaml``)."""
    path = Path(ref)
    if path.is_file():
        return path
    for d in recipe_dirs():
        for candidate in (d / ref, d / f"{ref}.yaml"):
            if candidate.is_file():
                return candidate
    names = recipe_names()
    raise UnknownNameError(f"unknown recipe {ref!r}{suggest(path.stem, names)}; allowed: a YAML file or one of {', '.join(names)}")


def load_recipe(ref: str) -> dict[str, Any]:
    path = find_recipe(ref)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of settings, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    return data


MAX_GRID_RUNS = 10_000  # a typo'd grid should fail at once, not enumerate for hours


def expand_grid(grid: dict[str, list[Any]]) -> list[list[tuple[str, Any]]]:
    """Cartesian product of ``{dotted key: [values]}`` as lists of overrides (one list per run)."""
    if not grid:
        return [[]]
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise ConfigError(f"grid.{k} must be a non-empty list of values")
    total = math.prod(len(grid[k]) for k in keys)
    if total > MAX_GRID_RUNS:
        raise ConfigError(f"grid has {total:,} combinations ({' x '.join(str(len(grid[k])) for k in keys)}); "
                          f"allowed: at most {MAX_GRID_RUNS:,} runs per recipe")
    return [list(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
