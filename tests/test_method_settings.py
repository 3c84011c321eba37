"""The method section is validated once, into the method's own settings model, when a config is built;
every setting of every method has help; one function hashes settings; docs/methods.md is current."""
import re
from pathlib import Path

import pytest

from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.experiments import build_config
from prunekit.experiments.config import run_hash
from prunekit.experiments.config import chain_hash
from prunekit.experiments.sweep import load_sweep
from prunekit.methods import METHODS, MethodConfig, Pruner, method_section
from prunekit.methods.registry import method_settings
from prunekit.utils.hashing import settings_hash
from tests import methods_page

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prunekit"
BASE = {"name": "s", "model": {"name": "mlp"}}
#: replaced by the shared allocation type, which carries its own description
SHARED_TYPES = ("allocation", "structure")


@pytest.mark.parametrize("name", METHODS.names())
def test_every_setting_has_a_description(name):
    fields = METHODS.get(name).Config.model_fields
    assert [f for f, info in fields.items() if f not in SHARED_TYPES and not (info.description or "").strip()] == []


def test_list_methods_granet_prints_every_setting_with_its_help(capsys):
    assert main(["list", "methods", "granet"]) == 0
    out = capsys.readouterr().out
    for field, kind, default, help_ in method_settings("granet"):
        assert help_ and f"  {field} ({kind}, default {default})\n      {help_}\n" in out, field
    assert "rho_0 of the neuroregeneration" in out  # prune_rate's help


def test_the_section_is_validated_into_the_methods_own_settings():
    cfg = build_config({**BASE, "method": {"name": "granet", "sparsity": 0.9, "prune_rate": 0.3}})
    settings = cfg.method_settings
    assert type(settings) is METHODS.get("granet").Config
    assert (settings.sparsity, settings.prune_rate, settings.init_bernoulli) == (0.9, 0.3, True)
    assert cfg.method == {"name": "granet", "sparsity": 0.9, "prune_rate": 0.3} == method_section(settings)
    assert cfg.model_dump()["method"] == cfg.method
    dense = build_config(BASE)
    assert dense.method == {"name": "dense"} and type(dense.method_settings) is METHODS.get("dense").Config


def test_compression_is_resolved_once_into_sparsity():
    cfg = build_config({**BASE, "method": {"name": "dpai", "compression": 2.0}})
    assert cfg.method_settings.sparsity == pytest.approx(0.99) and cfg.method["compression"] == 2.0


def test_bad_settings_fail_at_build_time_in_one_line():
    with pytest.raises(ConfigError) as e:
        build_config({**BASE, "method": {"name": "magnitude", "sparsty": 0.5}})
    assert str(e.value) == ("method: unknown key 'method.sparsty' (did you mean 'sparsity'?); allowed: name, "
                            "sparsity, compression, targets, optimizer_state, allocation, structure, when")
    with pytest.raises(ConfigError, match=r"^method=5: Input should be a valid dictionary$"):
        build_config({**BASE, "method": 5})
    with pytest.raises(ConfigError, match=r"^unknown key 'mehtod' \(did you mean 'method'\?\); allowed: .*, method,"):
        build_config({**BASE, "mehtod": {"name": "snip"}})
    with pytest.raises(ConfigError, match=r"^unknown key 'method_settings'"):  # the attribute is not a key
        build_config({**BASE, "method_settings": {"name": "snip"}})


def test_a_plugin_method_registered_later_is_validated_into_its_own_config(monkeypatch):
    class PluginConfig(MethodConfig):
        strength: float = 1.0

    class PluginPruner(Pruner):
        Config = PluginConfig
        schedule = "init"

    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_meta", dict(METHODS._meta))
    METHODS.add("plugin_method", PluginPruner)
    cfg = build_config({**BASE, "method": {"name": "plugin_method", "strength": 2.5}})
    assert type(cfg.method_settings) is PluginConfig and cfg.method_settings.strength == 2.5
    with pytest.raises(ConfigError, match="method.strength='x'"):
        build_config({**BASE, "method": {"name": "plugin_method", "strength": "x"}})


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_written_config_rebuilds_to_the_same_settings_and_hash(path):
    for cfg in load_sweep(str(path)).configs[:3]:
        again = build_config(cfg.model_dump(mode="json"))
        assert again.method_settings == cfg.method_settings and run_hash(again) == run_hash(cfg)


def test_dense_runs_of_a_grid_drop_an_unused_sparsity(tmp_path):
    sweep = tmp_path / "grid.yaml"
    sweep.write_text("name: g\nmodel: {name: mlp}\ngrid:\n  method: [{name: dense}, {name: snip}]\n"
                     "  method.sparsity: [0.5, 0.9]\n")
    configs = load_sweep(str(sweep)).configs
    dense = [c for c in configs if c.method_settings.name == "dense"]
    assert len(dense) == 1 and dense[0].method_settings.sparsity == 0.0 and dense[0].method == {"name": "dense"}


def test_the_imp_chain_and_level_hashes_are_pinned():
    """Cached IMP levels are found by these names: they must not move (as tests/test_run_hash.py)."""
    cfg = build_config({"name": "h", "model": {"name": "resnet20s"}, "data": {"name": "cifar10", "root": "data"},
                        "method": {"name": "imp", "sparsity": 0.8, "rewind_step": 2000}})
    assert chain_hash(cfg) == "16037a5e38"
    assert settings_hash([(1000, 800), (640,)]) == "e65121dd80"  # a level tag: the kept-count history


def _package_lines(pattern: str):
    for path in sorted(PACKAGE.rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line):
                yield f"{path.relative_to(ROOT)}:{i}"


def test_no_module_reads_a_setting_from_the_written_section():
    assert list(_package_lines(r"\bcfg\.method(\[|\.get\()")) == []


#: hashlib outside the one hashing helper: file checksums and data-order seeds, and DST's mask RNG stream
HASHLIB_ALLOWED = ("prunekit/utils/hashing.py", "prunekit/data/", "prunekit/methods/dst.py")


def test_settings_are_hashed_in_one_place():
    found = [loc for loc in _package_lines(r"\bhashlib\.") if not loc.startswith(HASHLIB_ALLOWED)]
    assert found == []


def test_docs_methods_md_is_current():
    assert methods_page.DOC.read_text() == methods_page.render(), \
        "docs/methods.md is stale: python -m tests.methods_page --write"
