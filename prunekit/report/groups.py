"""Which runs a report may average, and what to call them.

A *group* is every setting of a run's resolved configuration except the seed: method settings,
training, fine-tuning, data, model, targets. Runs are averaged only within a group, so a run with
``train.lr=0.001`` never becomes one more "seed" of the default runs. A *series* (a line of a plot) is a
group without its sparsity. Missing settings are filled with their defaults before comparing, so a
stored config that spells out a default and one that leaves it out are the same group.

Labels name the method the way its paper does (``OMP`` for one-shot magnitude pruning after training,
``GraNet``, ``BiP``) and only the settings that differ within a section: method settings are compared
between series of the same method, every other setting between all series of the section.
"""
from __future__ import annotations

import functools
import json
from collections import Counter
from typing import Any

from ..experiments.config import ExperimentConfig
from ..methods import method_config

DISPLAY = {
    "dense": "dense", "random": "random", "snip": "SNIP", "iter_snip": "iterative SNIP", "grasp": "GraSP",
    "synflow": "SynFlow", "prospr": "ProsPr", "dpai": "DPaI", "npb": "NPB", "phew": "PHEW", "set": "SET",
    "rigl": "RigL", "gmp": "GMP", "granet": "GraNet", "granet_uniform": "GraNet uniform", "bip": "BiP",
    "hydra": "Hydra", "imp": "IMP", "mp": "MP", "rp": "RP", "lap": "LAP", "lap_bn": "LAP-BN",
    "lap_act": "LAP-act", "lap_forward": "LAP-forward", "lap_backward": "LAP-backward", "obd": "OBD",
    "mp_global": "MP global", "lap_global": "LAP global", "structured": "structured",
}

# Short names of settings in labels (the papers' symbols where they have one).
SHORT = {"method.initial_sparsity": "s_i", "method.prune_fraction": "p", "method.rewind_step": "k"}
NOT_SETTINGS = ("seed", "method.sparsity")  # a group spans seeds; a series spans sparsities


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "kwargs" and not dotted.startswith("reference"):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


@functools.lru_cache(maxsize=4096)
def _resolved(config_json: str, method_name_: str | None) -> tuple[tuple[str, str], ...]:
    """A stored config (non-default settings) with every default filled in, flattened to dotted keys."""
    cfg = json.loads(config_json) if config_json else {}
    if method_name_ and not (cfg.get("method") or {}).get("name"):  # `dense` is the default method
        cfg["method"] = {**(cfg.get("method") or {}), "name": method_name_}
    tree: dict[str, Any] = {}
    try:
        full = ExperimentConfig.model_construct()
        for name in ("data", "train", "output"):
            tree[name] = getattr(full, name).model_dump(mode="json")
    except Exception:  # noqa: BLE001 - labels fall back to the stored settings alone
        tree = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            tree[key] = {**tree[key], **value}
        else:
            tree[key] = value
    method = cfg.get("method") or {}
    if method.get("name"):
        try:
            tree["method"] = {**method_config(method).model_dump(mode="json"), "name": method["name"]}
        except Exception:  # noqa: BLE001 - an unknown or old method: its stored settings
            pass
    tree.pop("output", None)
    flat = _flatten(tree)
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in flat.items()))


def settings(row: dict[str, Any]) -> dict[str, Any]:
    """The row's resolved settings ``{dotted key: JSON text of the value}``."""
    cfg = row.get("config")
    text = cfg if isinstance(cfg, str) else json.dumps(cfg or {}, sort_keys=True, default=str)
    return dict(_resolved(text, row.get("method")))


def series_key(row: dict[str, Any]) -> str:
    """Every setting but the seed and the sparsity (one line of a plot)."""
    flat = settings(row)
    flat.setdefault("method.name", json.dumps(row.get("method")))
    return json.dumps({k: v for k, v in flat.items() if k not in NOT_SETTINGS}, sort_keys=True)


def method_name(settings_: dict[str, str]) -> str:
    return json.loads(settings_.get("method.name", '"?"'))


def display_name(settings_: dict[str, str]) -> str:
    """``OMP`` / ``magnitude @init`` / ``GraNet`` ... : the method as its paper names it."""
    name = method_name(settings_)
    if name == "magnitude":
        when = json.loads(settings_.get("method.when", '"after"'))
        return "OMP" if when == "after" else f"magnitude @{when}"
    if name == "random":
        allocation = _value(settings_.get("method.allocation", '"uniform"'))
        return f"random {allocation}"
    return DISPLAY.get(name, name)


def _value(text: str) -> str:
    value = json.loads(text)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value.upper() if value in ("erk", "er") else value
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def _short(key: str, keys: set[str]) -> str:
    if key in SHORT:
        return SHORT[key]
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def labels(series: dict[str, dict[str, str]]) -> dict[str, str]:
    """``{series key: label}`` for the series of one section (their settings as :func:`settings` gives)."""
    absorbed = {"method.name", "method.when"}  # said by the display name
    out = {}
    by_method: dict[str, list[str]] = {}
    for key, s in series.items():
        by_method.setdefault(display_name(s), []).append(key)
    all_keys = {k for s in series.values() for k in s} - set(NOT_SETTINGS) - absorbed
    general = {k for k in all_keys if not k.startswith("method.")}
    differ_all = {k for k in general if len({s.get(k) for s in series.values()}) > 1}
    # a general setting is named only where it departs from the section's usual value
    usual = {k: Counter(s.get(k) for s in series.values()).most_common(1)[0][0] for k in differ_all}
    for name, keys in by_method.items():
        mkeys = {k for key in keys for k in series[key] if k.startswith("method.")} - absorbed - set(NOT_SETTINGS)
        differ = {k for k in mkeys if len({series[key].get(k) for key in keys}) > 1} | differ_all
        for key in keys:
            s = series[key]
            parts = []
            for k in sorted(differ, key=lambda k: (not k.startswith("method."), k)):
                if k not in s or (k in usual and s[k] == usual[k]):
                    continue
                short = _short(k, differ)
                parts.append(_value(s[k]) if short == "allocation" else f"{short}={_value(s[k])}")
            out[key] = " ".join([name, *parts])
    # two series can still share a label (settings that differ only in a way the label drops): number them
    seen: dict[str, int] = {}
    for key in sorted(out):
        seen[out[key]] = seen.get(out[key], 0) + 1
        if seen[out[key]] > 1:
            out[key] = f"{out[key]} #{seen[out[key]]}"
    return out


def full_label(settings_: dict[str, str]) -> str:
    """The display name with every setting that has a paper symbol (``GraNet s_i=0``): the key recipes'
    paper numbers use, whatever else a section holds."""
    parts = [f"{short}={_value(settings_[key])}" for key, short in SHORT.items() if key in settings_]
    return " ".join([display_name(settings_), *parts])


def is_structured(settings_: dict[str, str]) -> bool:
    """A run that removes whole channels/filters: its target sparsity counts channels, not weights."""
    if method_name(settings_) == "structured":
        return True
    return json.loads(settings_.get("method.structure", '"unstructured"')) != "unstructured"


# The four papers and the baselines each compares against; every method belongs to one family.
PAPER_OF = {
    **dict.fromkeys(("dpai", "snip", "iter_snip", "grasp", "synflow", "prospr", "npb", "phew", "random"), "DPaI"),
    **dict.fromkeys(("granet", "granet_uniform", "rigl", "set", "gmp"), "GraNet"),
    **dict.fromkeys(("bip", "imp", "hydra"), "BiP"),
    **dict.fromkeys(("lap", "lap_bn", "lap_act", "lap_forward", "lap_backward", "lap_global", "mp", "mp_global",
                     "rp", "obd"), "LAP"),
}
FAMILIES = {"DPaI": "before training: DPaI vs pruning-at-init baselines",
            "GraNet": "during training: GraNet vs dynamic sparse training and GMP",
            "BiP": "after training: BiP vs IMP and OMP",
            "LAP": "after training: LAP vs magnitude pruning (MP)"}
PAPER_METHODS = ("dpai", "granet", "granet_uniform", "bip", "lap")


def family(method: str, settings_: dict[str, str]) -> str | None:
    """The paper whose comparison a method belongs to (``DPaI``, ``GraNet``, ``BiP``, ``LAP``), else None."""
    if is_structured(settings_):
        return None
    if method == "magnitude":
        return "BiP" if json.loads(settings_.get("method.when", '"after"')) == "after" else "DPaI"
    return PAPER_OF.get(method)
