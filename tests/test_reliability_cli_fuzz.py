"""Property test over the command line: random flag and ``key=value`` combinations never produce a
traceback, only exit 0, or exit 2 with one ``prunekit: error:`` line, and write nothing."""
from __future__ import annotations

import contextlib
import io
import string
from collections import Counter

import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from prunekit.cli import main
from tests.reliability import fuzz_settings, record, tree, unchanged

RECIPE = {"name": "fuzz", "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
          "data": {"name": "sklearn_digits"}, "method": {"name": "random", "sparsity": 0.5}, "train": {"duration": "5it"}}

KEYS = ["seed", "name", "device", "train.duration", "train.lr", "train.momentum", "train.weight_decay", "train.betas",
        "train.warmup_steps", "train.eval_every", "train.milestones", "train.schedule", "train.gamma",
        "train.label_smoothing", "train.amp", "finetune.duration", "finetune.warmup_steps", "data.batch_size",
        "data.test_batch_size", "data.name", "data.split", "model.name", "model.kwargs", "method.name",
        "method.sparsity", "output.root", "output.store", "grid", "grid.seed", "trian", "train", "method"]
TEXT = st.text(alphabet=string.printable + "äß\u202e", max_size=12)
SCALARS = st.one_of(
    st.integers(-(2 ** 80), 2 ** 80), st.sampled_from([0, 1, -1, 2 ** 31, 2 ** 63, 10 ** 12]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), TEXT,
    st.sampled_from(["10it", "0ep", "-1it", "1e3ep", "1000000000000it", "2ep", "../../x", "/abs/path", "a" * 300,
                     "_pretrained", ".nan", ".inf", "[1, 2]", "{a: 1}", "cpu", "cuda:9", "mlp", "dense", "sgd"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(TEXT, SCALARS, max_size=2))


def _yaml(value) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").replace("\x00", "")


OVERRIDES = st.lists(st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={_yaml(kv[1])}"), max_size=4)
SMALL = st.integers(-3, 4).map(str) | st.sampled_from(["0", "-1", "1e3", "x", "99999999999999999999"])
MEASURE_FLAGS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["--repeats", "--threads", "--num-classes", "--batch-sizes", "--input-shape"]), SMALL),
    st.tuples(st.sampled_from(["--compact", "--eager"])),
    st.tuples(st.sampled_from(["--masks", "--weights"]), st.sampled_from(["", "missing.safetensors", "."])),
), max_size=4).map(lambda groups: [a for g in groups for a in g])


def _outcome(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own exit
            code = e.code
    lines = err.getvalue().strip().splitlines()
    assert code in (0, 2), (argv, code, err.getvalue()[-2000:])
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("prunekit: error: "), (argv, err.getvalue()[-2000:])
    return code, lines[0] if lines else ""


def test_random_cli_combinations_never_trace_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "fuzz.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    (tmp_path / "junk.sqlite").write_bytes(b"\x00garbage" * 64)
    threads = torch.get_num_threads()
    counts: Counter[str] = Counter()
    before = tree(tmp_path)

    def check(argv: list[str]) -> None:
        code, _ = _outcome(argv)
        counts[f"{argv[0]} exit {code}"] += 1
        torch.set_num_threads(threads)  # measure --threads N changes the process's thread count

    @fuzz_settings(120)
    @given(cmd=st.sampled_from(["show", "sweep"]), overrides=OVERRIDES)
    def overrides(cmd, overrides):
        check([cmd, str(recipe), *overrides] + (["--dry-run"] if cmd == "sweep" else []))

    @fuzz_settings(40)
    @given(flags=MEASURE_FLAGS)
    def measure(flags):
        check(["measure", "mlp", *flags])

    @fuzz_settings(30)
    @given(store=st.sampled_from(["junk.sqlite", ".", "missing.sqlite", "fuzz.yaml", "", "a" * 300]),
           recipe_filter=st.none() | TEXT, cmd=st.sampled_from(["results", "report"]))
    def stores(store, recipe_filter, cmd):
        extra = ["--recipe", recipe_filter] if recipe_filter is not None else []
        check([cmd, "--store", store, *extra] + (["--out", "rep", "--no-plots"] if cmd == "report" else []))

    for warm in (["show", str(recipe)], ["sweep", str(recipe), "--dry-run"], ["measure", "mlp"]):
        _outcome(warm)  # imports and caches before the timed examples
    overrides()
    measure()
    stores()
    changes = unchanged(before, tree(tmp_path))
    assert not changes, changes
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    record("fuzz", "190 random command lines (hypothesis, fixed seed): `show`/`sweep --dry-run` with up to 4 "
           "random `key=value` overrides (huge/negative/non-finite numbers, odd text, paths, lists, mappings), "
           "`measure mlp` with random flag values, `results`/`report --store` on junk, folders and missing files",
           f"{summary}; no traceback, every exit 2 one line, nothing written")
