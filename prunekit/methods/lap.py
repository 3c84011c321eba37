"""LAP — lookahead pruning, its variants and baselines (Park, Lee, Mo & Shin, "Lookahead: A Far-sighted
Alternative of Magnitude-based Pruning", ICLR 2020; reference alinlab/lookahead_pruning).

Layer-wise: ``mp``, ``rp``, ``lap``, ``lap_bn``, ``lap_act``, ``lap_forward``, ``lap_backward``, ``obd``;
global: ``mp_global``, ``lap_global``. All run after dense training (``schedule = "after"``) on the
``lap`` targets. Budgets: per-round layer ``rates`` (a table such as ``fcn``) and ``round`` t (one-shot
ratio ``1 - (1 - r)^t`` or r of the survivors per iterative round), or ``sparsity`` with an allocation.
See ``docs/lap.md`` for the settings, the reference's quirks and the defaults.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, create_model, model_validator

from ..errors import ConfigError
from ..modelio import attention_modules
from ..sparsity.targets import weight_layout
from ..registry import suggest
from ..scoring import lap as scoring
from ..sparsity import allocate, custom, num_keep, select, topk_mask
from .base import ALLOCATION_HELP, Allocation, MethodConfig, PruneContext, Pruner, require
from .registry import METHODS


def _vgg_rates(convs: int) -> tuple[float, ...]:
    return (0.15,) * convs + (0.10,)


# Per-round, per-layer rates of the reference's hyperparameter.py, keyed by its network names.
RATE_TABLES: dict[str, tuple[float, ...]] = {
    "fcn": (0.5, 0.5, 0.5, 0.5, 0.25),
    "lenet5": (0.2, 0.2, 0.3, 0.3, 0.15),
    "conv6": (0.15,) * 6 + (0.2, 0.2, 0.1),
    "vgg11": _vgg_rates(8),
    "vgg16": _vgg_rates(13),
    "vgg19": _vgg_rates(16),
    "vgg19_64": _vgg_rates(16),
    "resnet18": (0.0,) + _vgg_rates(16),
    "resnet50_64": (0.0,) + _vgg_rates(48),
    "wrn16_8_64": (0.0,) + _vgg_rates(12),
}
# prunekit model names and the reference's spellings of the same networks
RATE_ALIASES = {"mlp": "fcn", "lenet": "lenet5", "vgg11_bn_lap": "vgg11", "vgg16_bn_lap": "vgg16",
                "vgg19_bn_lap": "vgg19", "resnet18_lap": "resnet18", "resnet50_lap": "resnet50_64", "wrn16_8": "wrn16_8_64",
                "wrn-16-8_64": "wrn16_8_64"}
# Global sparsities per level (reference mlp_global / conv6_global).
GLOBAL_LEVELS: dict[str, tuple[float, ...]] = {
    "fcn": (0.9364, 0.9679, 0.9837, 0.9916, 0.9957, 0.9977, 0.9988),
    "conv6": (0.8938, 0.9114, 0.9261, 0.9382, 0.9483, 0.9568, 0.9638),
}
GLOBAL_ALIASES = {"mlp": "fcn", "mlp_global": "fcn", "conv6_global": "conv6"}
# The tables print sparsity to 4 decimals: a given sparsity agrees with a derived one within half a unit.
TOLERANCE = 5e-5


def _table(kind: str, tables: dict, aliases: dict, name: str) -> tuple[float, ...]:
    key = aliases.get(name, name)
    if key not in tables:
        names = list(tables) + list(aliases)
        raise ConfigError(f"{kind}={name!r} is not a table{suggest(name, names)}; allowed: {', '.join(names)}")
    return tables[key]


def _check_rates(values: list[float]) -> None:
    for r in values:
        if not 0.0 <= r < 1.0:
            raise ValueError(f"rate {r!r} is out of range; allowed: rates in [0, 1)")


class LayerRatesConfig(MethodConfig):
    """Layer-wise budgets: LAP ``rates`` x ``round``, or ``sparsity`` x ``allocation``."""

    targets: str | dict[str, Any] = Field("lap", description="which parameters are pruned (default 'lap': "
                                          "conv/linear weights, projection shortcuts kept dense)")
    rates: str | float | list[float] | dict[str, float] | None = Field(
        None, description="per-round pruning rate of each layer: a table of the reference (fcn, conv6, vgg16 ...), "
        "one rate, a list in module order, or a mapping of parameter names or globs")
    round: int | None = Field(None, ge=1, description="pruning round t of the rates (one-shot: ratio 1 - (1 - "
                              "r)^t); None: the round whose sparsity is `sparsity`")
    allocations = ("rates", "uniform", "erk", "er", "custom")

    allocation: Allocation | None = Field(None, description=ALLOCATION_HELP + "; rates: LAP's per-layer rates "
                                          "table; None: rates if given, else uniform")
    pruning: Literal["oneshot", "iterative"] = Field(
        "oneshot", description="one pruning event at the round's ratio, or `round` events of r of the survivors "
        "(--pruning_type)")
    retrain_steps: int | None = Field(None, ge=1, description="iterative: fine-tuning steps between rounds, all "
                                      "rounds inside the fine-tuning phase; None: one round per prune() call")
    counting: Literal["reference", "canonical"] | None = Field(
        None, description="reference: keep round((1 - r) x surviving) per layer; canonical: remove int(r x "
        "surviving), prunekit's; None: reference with rates, else canonical")

    @model_validator(mode="after")
    def _consistent(self) -> "LayerRatesConfig":
        if self.rates is None and (self.allocation == "rates" or self.round or self.pruning == "iterative"):
            raise ValueError("round, allocation='rates' and pruning='iterative' need rates")
        if isinstance(self.rates, str):
            _table("rates", RATE_TABLES, RATE_ALIASES, self.rates)
        elif self.rates is not None:
            r = self.rates
            _check_rates([r] if isinstance(r, float) else list(r.values() if isinstance(r, dict) else r))
        if self.rates is not None and self.allocation not in (None, "rates"):
            raise ValueError(f"allocation={self.allocation!r} conflicts with rates; allowed: leave one out")
        if self.rates is not None and self.round is None and self.sparsity == 0.0:
            raise ValueError("rates need round (t) or a sparsity that selects it")
        if self.retrain_steps is not None and self.pruning != "iterative":
            raise ValueError("retrain_steps needs pruning='iterative'")
        return self


class _LayerwisePruner(Pruner):
    """Score every prunable layer and keep a per-layer number of the highest scores (reference
    ``method/prune.py: _score_based_pruning``): already-pruned weights score ``-inf``."""

    Config = LayerRatesConfig
    config: LayerRatesConfig
    needs_data = False

    def __init__(self, model, config):
        super().__init__(model, config)
        self.rounds_done = 0
        self._ctx: PruneContext | None = None
        self.numels = [m.numel() for m in self.masks.values()]
        cfg = self.config
        self.counting = cfg.counting or ("reference" if cfg.rates is not None else "canonical")
        self.rates: list[float] | None = None
        self.layer_sparsity: list[float] = []
        if cfg.rates is None:
            shapes = {n: tuple(m.shape) for n, m in self.masks.items()}
            self.layer_sparsity = list(allocate(cfg.allocation or "uniform", shapes, cfg.sparsity).values())
            self.round = 0
            self.derived_sparsity = self._sparsity_after(1)
            return
        self.rates = self._resolve_rates(cfg.rates)
        self.round = cfg.round if cfg.round is not None else self._round_for(cfg.sparsity)
        self.derived_sparsity = self._sparsity_after(self.round)
        if cfg.sparsity and abs(cfg.sparsity - self.derived_sparsity) > TOLERANCE:
            raise ConfigError(f"method.sparsity={cfg.sparsity} contradicts rates={cfg.rates!r} at round "
                              f"{self.round}, which give {self.derived_sparsity:.6f}; allowed: that value "
                              "(within 5e-5) or no sparsity")

    # --- budgets -------------------------------------------------------------------------------
    def _resolve_rates(self, spec) -> list[float]:
        names = self.masks.names()
        if isinstance(spec, dict):
            return list(custom({n: () for n in names}, spec).values())
        rates = list(_table("rates", RATE_TABLES, RATE_ALIASES, spec) if isinstance(spec, str) else
                     [spec] * len(names) if isinstance(spec, float) else spec)
        if len(rates) != len(names):
            raise ConfigError(f"rates={spec!r} gives {len(rates)} layer rates for {len(names)} prunable layers "
                              f"({', '.join(names)}); allowed: one rate per layer")
        return rates

    def _keep_counts(self, surviving: list[int]) -> list[int]:
        """How many weights each layer keeps in this pruning event. ``reference`` counting: keep
        ``round((1 - rate) * surviving)`` with the reference's float expression; ``canonical``: remove
        ``int(rate * surviving)`` (prunekit's ``num_keep``). Without rates the per-layer sparsity is
        absolute (a fraction of all the layer's weights), capped at the survivors."""
        out = []
        for i, left in enumerate(surviving):
            if self.rates is None:
                s, n = self.layer_sparsity[i], self.numels[i]
                target = round((1 - s) * n) if self.counting == "reference" else num_keep(n, s)
                out.append(min(target, left))
                continue
            r = self.rates[i]
            rate = r if self.config.pruning == "iterative" else 1.0 - (1.0 - r) ** self.round
            out.append(round((1 - rate) * left) if self.counting == "reference" else left - int(rate * left))
        return out

    def _sparsity_after(self, events: int) -> float:
        if self.rates is not None and self.config.pruning == "oneshot":
            events = 1
        kept = list(self.numels)
        for _ in range(events):
            kept = self._keep_counts(kept)
        return 1.0 - sum(kept) / sum(self.numels)

    def _round_for(self, sparsity: float) -> int:
        best = None
        for t in range(1, 500):
            self.round = t
            got = self._sparsity_after(t)
            if best is None or abs(got - sparsity) < best[1]:
                best = (t, abs(got - sparsity), got)
            if got > sparsity + TOLERANCE:
                break
        if best[1] > TOLERANCE:
            raise ConfigError(f"method.sparsity={sparsity} is not reached by rates={self.config.rates!r} at any "
                              f"round (closest: round {best[0]} gives {best[2]:.6f}); allowed: set round")
        return best[0]

    def target_sparsity(self) -> float:
        return self.derived_sparsity

    # --- pruning -------------------------------------------------------------------------------
    schedule = "after"

    def setup(self, ctx: PruneContext) -> None:
        self._ctx = ctx  # later iterative rounds (also after a resume) score with the phase's data
        every = self.config.retrain_steps
        if every and ctx.total_steps and ctx.total_steps < self.round * every:
            raise ConfigError(f"{self.name}: {self.round} rounds every {every} steps need a fine-tuning phase "
                              f"of {self.round * every} steps, got {ctx.total_steps}; allowed: round x retrain_steps")

    def prune(self, ctx: PruneContext | None = None):
        """One pruning event: one-shot (all ``round`` rounds at once) or one iterative round."""
        if ctx is not None:
            self._ctx = ctx
        if self.needs_data and (self._ctx is None or self._ctx.batches is None):
            raise ConfigError(f"{self.name} needs training batches (PruneContext.batches); allowed: pass a "
                              "context with batches")
        masks = list(self.masks.values())
        keep = self._keep_counts([int(m.sum()) for m in masks])
        self.masks.update_(self._select(keep, self._ctx))
        self.enforce()
        self.rounds_done += 1
        return self.masks

    def _select(self, keep: list[int], ctx: PruneContext | None) -> dict[str, torch.Tensor]:
        scores = dict(zip(self.masks.names(), self.scores(ctx)))
        return select(scores, self.masks, keep=dict(zip(self.masks.names(), keep)))

    def scores(self, ctx: PruneContext | None) -> list[torch.Tensor]:
        raise NotImplementedError

    def before_step(self, step: int) -> None:
        every = self.config.retrain_steps
        if every and step > 1 and (step - 1) % every == 0 and self.rounds_done < self.round:
            self.prune()
            if self.optimizer is not None:  # the reference builds a fresh Adam for every retraining
                self.optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rounds_done": self.rounds_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rounds_done = int(state.get("rounds_done", 0))


@METHODS.register("mp", family="post-training")
class MP(_LayerwisePruner):
    """Layer-wise magnitude pruning with LAP's per-layer rates (reference ``method/prune.py: MP``)."""

    name = "mp"

    def scores(self, ctx):
        return [p.detach().abs() for p in self.masks.params]


class RPConfig(LayerRatesConfig):
    seed: int | None = Field(None, description="the |N(0, 1)| scores; None: drawn from the global RNG when the "
                             "pruner is built")


@METHODS.register("rp", family="post-training")
class RP(_LayerwisePruner):
    """Random pruning with LAP's per-layer budgets (reference ``method/prune.py: RP``: |N(0,1)| scores)."""

    Config = RPConfig
    name = "rp"

    def __init__(self, model, config):
        super().__init__(model, config)
        # drawn now, so pruners built after the same seeding prune identically
        self.seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)))

    def scores(self, ctx):
        gen = torch.Generator().manual_seed(self.seed + self.rounds_done)
        return [torch.randn(p.shape, generator=gen).abs().to(p.device) for p in self.masks.params]


class LAPConfig(LayerRatesConfig):
    mode: Literal["base", "forward", "backward"] = Field(
        "base", description="every layer scored from the same weights, or layers pruned first to last (LFP) / "
        "last to first (LBP) looking at the already pruned neighbours")
    bn: bool = Field(False, description="BatchNorm factors gamma / sqrt(running_var + 1e-10) on the neighbour "
                     "norms (LAP-BN, paper Eq. 8)")
    activation: bool = Field(False, description="weights scaled per unit by sqrt(activation rate) before scoring "
                             "(LAP-act; needs training batches)")
    lookahead: Literal["chain", "residual"] = Field(
        "chain", description="neighbours: the previous/next prunable layer in module order (the reference), or "
        "from the traced dataflow graph (residual blocks, shortcuts)")
    activation_samples: int | None = Field(None, ge=1, description="samples measuring the activation rates; "
                                           "None: one pass over the batches")


def _help(setting: str) -> str | None:
    """LAP's description of ``setting``, for the variants and the global LAP that take it too."""
    return LAPConfig.model_fields[setting].description


def module_names(pruner: Pruner) -> list[str]:
    """The modules owning the prunable weights (``"layer1.0.conv1"`` for ``"layer1.0.conv1.weight"``)."""
    return [n.rsplit(".", 1)[0] if "." in n else "" for n in pruner.masks.names()]


def refuse_attention(pruner: Pruner) -> None:
    """LAP's lookahead (and its OBD baseline's per-layer Hessian) is defined on chains of conv/linear
    layers where each layer's output is the next one's input; attention breaks that (q, k and v do not
    feed each other, and their product is not a layer), so such models are refused in one line."""
    found = attention_modules(pruner.model)
    if found:
        raise ConfigError(f"{pruner.name}: '{found[0]}' is attention; the lookahead and per-layer Hessian are "
                          "defined on sequential conv/linear chains, which attention breaks; allowed: models "
                          "without attention (mp, mp_global and rp prune any model)")


def build_scorer(pruner: Pruner, ctx: PruneContext | None) -> scoring.LookaheadScorer:
    """A LookaheadScorer over ``pruner``'s prunable layers with the config's bn/activation/lookahead."""
    refuse_attention(pruner)
    cfg = pruner.config
    names = module_names(pruner)
    if cfg.lookahead == "residual":
        prev, nxt = scoring.residual_neighbours(pruner.model, names, use_bn=cfg.bn)
    else:
        bn = scoring.reference_bn_factors(pruner.model, names) if cfg.bn else None
        prev, nxt = scoring.chain_neighbours(len(names), bn)
    scales = None
    if cfg.activation:
        require(ctx is not None and ctx.batches is not None,
                f"{pruner.name}: activation=true needs training batches (PruneContext.batches)")
        modules = [pruner.model.get_submodule(n) for n in names]
        bns = scoring.following_bn(pruner.model, names)
        sites = [m if bn is None else bn for m, bn in zip(modules, bns)][:-1] + [None]
        scales = scoring.activation_scales(pruner.model, sites, ctx.batches, cfg.activation_samples)
    modules = [pruner.model.get_submodule(n) for n in names]
    groups = [int(getattr(m, "groups", 1)) for m in modules]
    transposed = [weight_layout(m) == "in_out" for m in modules]
    return scoring.LookaheadScorer(pruner.masks.params, list(pruner.masks.values()), prev, nxt, scales, names,
                                   groups, transposed)


@METHODS.register("lap", family="post-training")
class LAP(_LayerwisePruner):
    """Lookahead pruning (reference ``method/laprune.py: LAP``). ``mode="base"`` scores every layer from
    the same weights; ``forward`` / ``backward`` prune layer by layer (first-to-last / last-to-first), each
    layer looking ahead through the already-pruned ones (the paper's LFP / LBP)."""

    Config = LAPConfig
    config: LAPConfig
    name = "lap"

    @property
    def needs_data(self) -> bool:
        return self.config.activation

    def _select(self, keep, ctx):
        scorer = build_scorer(self, ctx)
        names = self.masks.names()
        order = range(len(names)) if self.config.mode != "backward" else reversed(range(len(names)))
        out = {}
        for i in order:
            mask = topk_mask(scorer.score(i), keep[i])
            out[names[i]] = mask
            if self.config.mode != "base":
                scorer.set_mask(i, mask)
        return out


def _variant(name: str, doc: str, **defaults: Any) -> type[LAP]:
    """Register ``name`` as LAP with other defaults (a Config subclass, so the settings stay editable)."""
    fields = {k: (LAPConfig.model_fields[k].annotation, Field(v, description=_help(k))) for k, v in defaults.items()}
    config = create_model(f"{name}_config", __base__=LAPConfig, **fields)
    cls = type(name.title().replace("_", ""), (LAP,), {"Config": config, "name": name, "__doc__": doc})
    return METHODS.register(name, family="post-training")(cls)


LAPBN = _variant("lap_bn", "LAP with BatchNorm factors γ/√(running_var + 1e-10) (paper Eq. 8).", bn=True)
LAPAct = _variant("lap_act", "LAP on weights scaled per output unit by √(activation rate).", activation=True)
LAPForward = _variant("lap_forward", "LAP pruning first to last, looking back at pruned layers (LFP).",
                      mode="forward")
LAPBackward = _variant("lap_backward", "LAP pruning last to first, looking ahead at pruned layers (LBP).",
                       mode="backward")


class OBDConfig(LayerRatesConfig):
    hessian: Literal["exact", "mc"] = Field(
        "exact", description="Hessian diagonal from every class column, or one sampled column y ~ p (unbiased, "
        "C x cheaper)")
    hessian_samples: int | None = Field(None, ge=1, description="samples of the Hessian diagonal; None: one pass "
                                        "over the batches")
    seed: int | None = Field(None, description="the samples of hessian='mc'; None: the global RNG")


@METHODS.register("obd", family="post-training")
class OBD(_LayerwisePruner):
    """Optimal Brain Damage (LeCun et al., NeurIPS 1990) as LAP's data-dependent baseline (reference
    ``method/obd.py``): score ``h · w² / 2`` with h the Hessian diagonal of the training loss
    (:func:`prunekit.scoring.lap.diag_ggn`, exact for the ReLU networks LAP uses)."""

    Config = OBDConfig
    config: OBDConfig
    name = "obd"
    needs_data = True

    def scores(self, ctx):
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        refuse_attention(self)
        modules = [self.model.get_submodule(n) for n in module_names(self)]
        h = scoring.diag_ggn(self.model, modules, ctx.batches, cfg.hessian_samples, cfg.hessian, gen)
        return [hi * p.detach().float().pow(2) / 2 for hi, p in zip(h, self.masks.params)]


class GlobalConfig(MethodConfig):
    """One threshold over all layers: ``sparsity``, or ``levels`` (table or list) with ``level``."""

    targets: str | dict[str, Any] = Field("lap", description="which parameters are pruned (default 'lap': "
                                          "conv/linear weights, projection shortcuts kept dense)")
    levels: str | list[float] | None = Field(None, description="global sparsity per level: a table of the "
                                             "reference (fcn, conv6) or a list; with `level`")
    level: int | None = Field(None, ge=1, description="the level (1-based) of `levels` to prune to")
    normalize: bool = Field(True, description="divide each layer's scores by their Frobenius norm (the "
                            "reference's *_global_normalize)")
    counting: Literal["reference", "canonical"] | None = Field(
        None, description="reference: keep round((1 - s) x N); canonical: num_keep(N, s), prunekit's; None: "
        "reference with levels, else canonical")

    @model_validator(mode="after")
    def _consistent(self) -> "GlobalConfig":
        if (self.levels is None) != (self.level is None):
            raise ValueError("levels and level go together")
        table = self.levels_table()
        _check_rates(list(table))
        if self.level is not None and self.level > len(table):
            raise ValueError(f"level={self.level} but levels has {len(table)} entries; allowed: 1..{len(table)}")
        if self.level is not None and self.sparsity and abs(self.sparsity - table[self.level - 1]) > 1e-12:
            raise ValueError(f"sparsity={self.sparsity} contradicts level {self.level} = {table[self.level - 1]}")
        return self

    def levels_table(self) -> tuple[float, ...]:
        if isinstance(self.levels, str):
            return _table("levels", GLOBAL_LEVELS, GLOBAL_ALIASES, self.levels)
        return tuple(self.levels or ())

    def global_sparsity(self) -> float:
        return self.levels_table()[self.level - 1] if self.level is not None else self.sparsity


class _GlobalPruner(Pruner):
    """Global pruning (reference ``method/global_prune.py: _score_based_global_pruning``): keep the
    ``round((1 - s) * N)`` (reference counting) or ``num_keep(N, s)`` (canonical) highest scores."""

    Config = GlobalConfig
    config: GlobalConfig
    needs_data = False

    schedule = "after"

    def target_sparsity(self) -> float:
        return self.config.global_sparsity()

    def prune(self, ctx: PruneContext | None = None):
        cfg = self.config
        s = cfg.global_sparsity()
        total = self.masks.numel()
        counting = cfg.counting or ("reference" if cfg.levels is not None else "canonical")
        k = min(round((1 - s) * total) if counting == "reference" else num_keep(total, s), self.masks.nnz())
        scores = {}
        for name, score in zip(self.masks.names(), self.scores(ctx)):
            if cfg.normalize:
                norm = score.norm()
                score = score / norm if norm > 0 else score
            scores[name] = score
        # one top-k over all layers (ties: layer order, then index), in the scores' dtype
        self.masks.update_(select(scores, self.masks, keep=k))
        self.enforce()
        return self.masks


@METHODS.register("mp_global", family="post-training")
class MPGlobal(_GlobalPruner):
    """Global magnitude pruning on |w| normalized per layer (reference ``mp_global_normalize``)."""

    name = "mp_global"

    def scores(self, ctx):
        return [p.detach().abs().float() for p in self.masks.params]


class LAPGlobalConfig(GlobalConfig):
    bn: bool = Field(False, description=_help("bn"))
    activation: bool = Field(False, description=_help("activation"))
    lookahead: Literal["chain", "residual"] = Field("chain", description=_help("lookahead"))
    activation_samples: int | None = Field(None, ge=1, description=_help("activation_samples"))


@METHODS.register("lap_global", family="post-training")
class LAPGlobal(_GlobalPruner):
    """Global LAP (reference ``lap_global_normalize``): the *squared* LAP scores of each layer divided by
    their Frobenius norm, one threshold (so layers are compared by L / ||L||_4, a reference quirk)."""

    Config = LAPGlobalConfig
    name = "lap_global"

    def scores(self, ctx):
        scorer = build_scorer(self, ctx)
        return [scorer.score(i).clamp_min(0) for i in range(len(self.masks))]
