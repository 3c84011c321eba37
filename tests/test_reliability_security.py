"""Security rules checked on the source: no shell, no unsafe YAML, no unrestricted unpickling; downloads
are verified by checksum before they appear."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from prunekit.data import download, specs
from prunekit.errors import DataError
from tests.reliability import record

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("prunekit", "tools", "benchmarks", "examples") for p in (REPO / d).rglob("*.py"))
RESTRICTED_UNPICKLER = REPO / "prunekit" / "data" / "safe_pickle.py"
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader",
               "UnsafeLoader", "FullLoader", "UnsafeConstructor", "FullConstructor"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def violations(source: str, path: Path | None = None) -> tuple[list[str], dict[str, int]]:
    """(rule breaks as ``line: what``, counts of the checked safe calls) for one module's source."""
    found: list[str] = []
    safe = {"yaml.safe_load": 0, "torch.load": 0}
    for node in ast.walk(ast.parse(source)):
        where = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and node.module in ("yaml", "pickle"):
            bad = [a.name for a in node.names if a.name in UNSAFE_YAML | {"load", "loads", "Unpickler"}]
            found += [f"{where}: from {node.module} import {b}" for b in bad]
        if isinstance(node, ast.Attribute) and _dotted(node.value) == "yaml" and node.attr in UNSAFE_YAML:
            found.append(f"{where}: yaml.{node.attr}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{where}: {name}(shell=...)")
        if name in ("os.system", "os.popen", "eval", "exec", "compile"):
            found.append(f"{where}: {name}()")
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler") and path != RESTRICTED_UNPICKLER:
            found.append(f"{where}: {name}()")
        if name == "torch.load":
            safe["torch.load"] += 1
            if not any(kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                       for kw in node.keywords):
                found.append(f"{where}: torch.load() without weights_only=True")
        if name == "yaml.safe_load":
            safe["yaml.safe_load"] += 1
    return found, safe


@pytest.mark.parametrize("snippet", [
    "import subprocess\nsubprocess.run('ls', shell=True)", "subprocess.Popen(cmd, shell=flag)", "os.system('ls')",
    "yaml.load(text)", "yaml.load(text, Loader=yaml.Loader)", "from yaml import unsafe_load", "pickle.loads(b)",
    "torch.load(path)", "torch.load(path, weights_only=False)", "eval(text)",
])
def test_the_scanner_finds_each_rule_break(snippet):
    assert violations(snippet)[0]


def test_no_shell_no_unsafe_yaml_no_unrestricted_unpickling_in_the_source():
    broken, safe = [], {"yaml.safe_load": 0, "torch.load": 0}
    for path in SOURCES:
        found, counts = violations(path.read_text(), path)
        broken += [f"{path.relative_to(REPO)}:{f}" for f in found]
        safe = {k: safe[k] + counts[k] for k in safe}
    assert not broken, "\n".join(broken)
    assert safe["yaml.safe_load"] >= 2 and safe["torch.load"] >= 1  # the scan saw the real readers
    record("security", f"scan of the {len(SOURCES)} Python files of prunekit/, tools/, benchmarks/, examples/ for "
           "`shell=`, `os.system`/`os.popen`, `eval`/`exec`, unsafe YAML loaders, `pickle.load(s)` outside the "
           "restricted CIFAR unpickler, `torch.load` without `weights_only=True`",
           f"none found; {safe['yaml.safe_load']} YAML reads all use `yaml.safe_load`, {safe['torch.load']} "
           "`torch.load` call(s) pass `weights_only=True`")


def test_every_download_has_a_checksum_and_a_mismatch_leaves_nothing(tmp_path):
    unverified = [f"{s.name}/{f.name}" for s in (specs.get_spec(n) for n in specs.DATASETS.names())
                  for f in s.files if f.urls and not (f.md5 or f.sha256)]
    assert not unverified
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for f in specs.get_spec("mnist").files:
        (mirror / f.name).write_bytes(b"not the official file")
    with pytest.raises(DataError) as e:
        download("mnist", tmp_path / "data", mirror=mirror.as_uri())
    assert "checksum mismatch for train-images-idx3-ubyte.gz: expected" in str(e.value)
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    record("security", "download MNIST from a mirror serving other bytes under the official file names",
           f"`DataError: {e.value}`; nothing left in the data folder (every downloadable file of every dataset "
           "has an md5/sha256; a file appears only after its checksum matched)", tmp_path=tmp_path)
