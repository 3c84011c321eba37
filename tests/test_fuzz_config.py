"""Fuzzing the configuration loader: random and mutated recipe files, random settings and overrides only
ever raise a PrunekitError (ConfigError), within a time limit; alias bombs are refused quickly."""
from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from prunekit import models
from prunekit.experiments import ExperimentConfig, build_config, configs_from_recipe, parse_overrides
from prunekit.experiments.recipes import PACKAGE_RECIPES
from prunekit.methods import METHODS
from tests.reliability import Outcomes, fuzz_mutations, fuzz_settings, record, time_limit

QUICKSTART = (PACKAGE_RECIPES / "quickstart.yaml").read_bytes()
BASE = {"name": "fuzz", "model": {"name": "mlp"}, "data": {"name": "sklearn_digits"}, "method": {"name": "dense"}}


def _dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        for ann in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                keys += _dotted_keys(ann, f"{prefix}{name}.")
    return keys


KEYS = sorted(set(_dotted_keys(ExperimentConfig)) | {"method.sparsity", "method.allocation", "method.when",
                                                       "method.structure", "method.targets", "model.kwargs.hidden",
                                                       "model.kwargs.in_channels", "model.kwargs.input_size"})
SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=12)
           | st.sampled_from(models.names() + METHODS.names() + ["mnist", "cifar10", "synthetic", "10ep", "0it"]))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                      max_leaves=8)


def _recipe(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(data)
    return str(path)


def test_random_recipe_bytes(tmp_path):
    seen = Outcomes()

    @fuzz_settings(150)
    @given(data=st.binary(max_size=300))
    def check(data):
        seen(configs_from_recipe, _recipe(tmp_path, data))

    check()
    record("fuzz", "recipe files of random bytes (0-300) through the loader (`prunekit run/show <file>`)",
           seen.summary())


def test_mutated_recipe_files(tmp_path):
    seen = Outcomes()

    def use(mutated):
        out = seen(configs_from_recipe, _recipe(tmp_path, mutated))
        assert out is None or all(isinstance(c, ExperimentConfig) for c in out)

    fuzz_mutations(QUICKSTART, 150, use)
    record("fuzz", "recipes/quickstart.yaml with up to 6 bytes overwritten and/or cut short", seen.summary())


def test_random_settings():
    seen = Outcomes()

    @fuzz_settings(300)
    @given(settings=st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=12), VALUES), min_size=1, max_size=3))
    def check(settings):
        seen(build_config, BASE, settings)

    check()
    record("fuzz", "1-3 settings at random keys of the schema (or random keys) with random values: nested "
           "lists/dicts of None, bools, huge ints, floats incl. NaN/inf, text, model/method names",
           seen.summary())


def _section(names, fields_of):
    """``{"name": n, field: value ...}`` for a registered name and random values of its own fields."""
    return st.sampled_from(names).flatmap(lambda n: st.dictionaries(
        st.sampled_from(fields_of(n)), VALUES | st.floats(-2, 2) | st.integers(-3, 300), max_size=3
    ).map(lambda d: {**d, "name": n}))


METHOD_SECTIONS = _section(METHODS.names(), lambda n: sorted(METHODS.get(n).Config.model_fields))
MODEL_KWARGS = st.sampled_from(models.names()).flatmap(lambda n: st.dictionaries(
    st.sampled_from(sorted(models.options(n)) or ["in_channels"]), VALUES | st.integers(-3, 300), max_size=2
).map(lambda kw: {"name": n, "kwargs": kw}))


def test_random_method_and_model_settings():
    seen = Outcomes()

    @fuzz_settings(300)
    @given(method=METHOD_SECTIONS, model=MODEL_KWARGS)
    def check(method, model):
        seen(build_config, {**BASE, "method": method, "model": model})

    check()
    record("fuzz", "a registered method with random values for its own settings, a registered model with random "
           "options", seen.summary())


def test_random_override_strings():
    seen = Outcomes()

    @fuzz_settings(200)
    @given(items=st.lists(st.text(max_size=30) | st.builds("{}={}".format, st.sampled_from(KEYS), st.text(max_size=20)),
                          min_size=1, max_size=3))
    def check(items):
        seen(lambda: build_config(BASE, parse_overrides(items)))

    check()
    record("fuzz", "`key=value` command-line overrides of random text (keys of the schema or random)",
           seen.summary())


BOMB = "model: {name: mlp}\nreference:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi"))


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    with time_limit(10):
        seen = Outcomes(limit=10)
        seen(configs_from_recipe, _recipe(tmp_path, BOMB.encode()))
    assert seen.counts == {"ConfigError": 1}
    record("security", "a 12-line recipe whose YAML aliases expand to 9^9 (387 million) values",
           "refused in well under a second: `configuration has more than 100000 values (YAML aliases expanding?)`")
