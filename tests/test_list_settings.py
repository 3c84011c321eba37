"""`prunekit list methods NAME` prints every setting of a method with its type, default and help."""
import pytest

from prunekit.cli import main
from prunekit.methods import METHODS
from prunekit.methods.registry import method_settings


def test_granet_lists_every_setting_with_help(capsys):
    assert main(["list", "methods", "granet"]) == 0
    out = capsys.readouterr().out
    fields = METHODS.get("granet").Config.model_fields
    for name in fields:
        assert f"  {name} (" in out
    rows = {r[0]: r for r in method_settings("granet")}
    assert all(rows[n][3] for n in fields), [n for n in fields if not rows[n][3]]  # every setting has help
    assert rows["allocation"][1] == "'global' | 'uniform' | 'erk'" and rows["prune_rate"][2] == "0.5"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_lists_its_settings(name, capsys):
    assert main(["list", "methods", name]) == 0
    out = capsys.readouterr().out
    assert all(f"  {f} (" in out for f in METHODS.get(name).Config.model_fields)


def test_unknown_method_or_a_name_for_another_kind_is_one_line(capsys):
    assert main(["list", "methods", "grnet"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'granet'" in err and len(err.strip().splitlines()) == 1
    assert main(["list", "models", "x"]) == 2
