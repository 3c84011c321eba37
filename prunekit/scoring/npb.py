"""NPB's per-layer node-path balancing program: Pham et al., "Towards Data-Agnostic Pruning At
Initialization: What Makes a Good Sparse Mask?", NeurIPS 2023 (code ``pvh1602/NPB``,
``Pruners/utils.py: optimize_layerwise, fine_tune_mask``).

For one layer (or one chunk of its output units) with ``C_in`` inputs, ``C_out`` outputs, ``P_j`` paths
arriving at input ``j`` (the sum over positions of the all-ones path-count forward through the layers
already chosen) and a budget of ``n`` weights, the reference chooses integer kernel counts
``M[j, i] in [0, p]`` (``M`` is ``(C_in, C_out)``; ``p`` = ``max_p``, weights per kernel) maximising

    alpha * A + (1 - alpha) * B + beta * R,   sum(M) <= n,
    A = (C_in + C_out - sum_j (m - rowsum_j)^+ - sum_i (m - colsum_i)^+) / (C_in + C_out)   (nodes)
    B = sum_j P_j rowsum_j / max_path                                                        (paths)
    R = (n - #{M == 0}) / n                                                                  (kernels)

(``m`` = ``min_param_to_node``, 1 by default: A is then the fraction of input and output nodes that keep
a weight). ``max_path`` is the reference's normaliser, including its quirk: with ``f = int(n / (C_out p))``
full input rows, it sums the ``f`` largest ``P`` times ``C_out p`` plus the remainder times the next one,
but ``sort(P)[-0:]`` is the whole array, so for ``f = 0`` it sums *all* of ``P`` (:func:`max_paths`).

Solvers: the reference calls cvxpy, which with the packages of its environment (cvxpy 1.3.2, SciPy
1.10) dispatches the mixed-integer program to SciPy's HiGHS; :func:`solve_milp` builds the same program
for ``scipy.optimize.milp``. For ``m = 1`` without the node constraint the program has a closed-form
optimum, :func:`solve_greedy`. For row sums ``r_j`` the best counts open ``k_j = min(r_j, C_out)``
kernels in row ``j`` and place them cyclically over the columns; then ``min(C_out, n)`` columns are
covered whatever ``r`` is (if some ``r_j >= C_out`` all are, otherwise all ``n`` units open distinct
kernels), so the objective is a constant plus a sum of per-row terms that are concave in ``r_j``:
marginal value ``alpha/(C_in+C_out) + c_B P_j + beta/n`` for a row's first unit (the row becomes a
covered node), ``c_B P_j + beta/n`` for its next ``C_out - 1`` (each opens a kernel) and ``c_B P_j``
after that. Taking the ``n`` units of highest marginal value is therefore optimal (tests check it
against brute force and the MILP).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError, MaskError
from .paths import PathCounter
from .phew import ChainLayer


@dataclass(frozen=True)
class LayerProgram:
    """One instance of the per-layer program (see the module docstring)."""

    paths: Tensor  # P, (C_in,) float64, >= 0
    c_out: int
    n: int  # weights to keep
    p: int  # at most p weights per kernel
    alpha: float
    beta: float
    m: int = 1  # min_param_to_node
    node_bound: tuple[int, int] | None = None  # reference's node constraint: (max colsum, max rowsum)

    @property
    def c_in(self) -> int:
        return self.paths.numel()

    @property
    def max_path(self) -> float:
        return max_paths(self.paths, self.n, self.c_out, self.p)

    def coefficients(self) -> tuple[float, float, float]:
        """``(c_A, c_B, c_R)``: value of a covered node, of one unit of path count, of an open kernel."""
        mp = self.max_path
        return (self.alpha / (self.c_in + self.c_out), (1 - self.alpha) / mp if mp > 0 else 0.0,
                self.beta / self.n if self.n > 0 else 0.0)


def max_paths(paths: Tensor, n: int, c_out: int, p: int) -> float:
    """The reference's ``max_path`` (with ``sort(P)[-0:]`` = all of ``P``, see the module docstring)."""
    srt = torch.sort(paths.to(torch.float64)).values
    full = int(n / (c_out * p)) if c_out * p > 0 else 0
    rem = n - full * c_out * p
    top = srt if full == 0 else srt[max(0, srt.numel() - full):]
    value = float(top.sum()) * c_out * p
    if full + 1 <= srt.numel():
        value += rem * float(srt[srt.numel() - full - 1])
    return value


def objective(counts: Tensor, prog: LayerProgram) -> float:
    """The reference's objective for integer kernel counts ``counts`` ``(C_in, C_out)``."""
    c = counts.to(torch.float64)
    rows, cols = c.sum(1), c.sum(0)
    uncovered = (prog.m - rows).clamp(min=0).sum() + (prog.m - cols).clamp(min=0).sum()
    nodes = (prog.c_in + prog.c_out - uncovered) / (prog.c_in + prog.c_out)
    reg = (prog.n - (1 - c).clamp(min=0).sum()) / prog.n if prog.n > 0 else 0.0
    mp = prog.max_path
    paths = float((prog.paths.to(torch.float64) * rows).sum()) / mp if mp > 0 else 0.0
    return float(prog.alpha * nodes + (1 - prog.alpha) * paths + prog.beta * reg)


def solve_greedy(prog: LayerProgram) -> Tensor:
    """Optimal kernel counts ``(C_in, C_out)`` (int64, summing to ``n``) for ``m <= 1`` without the node
    constraint; units of equal value go to the rows round robin, lower index first."""
    if prog.m > 1 or prog.node_bound is not None:
        raise ConfigError("npb: solver='greedy' solves min_param_to_node <= 1 without node_constraint; "
                          "use solver='milp'")
    c_in, c_out, p, n = prog.c_in, prog.c_out, prog.p, prog.n
    if n > c_in * c_out * p:
        raise ConfigError(f"npb: {n} weights do not fit {c_in}x{c_out} kernels of at most {p}")
    c_a, c_b, c_r = prog.coefficients()
    path = prog.paths.to(torch.float64) * c_b
    row = torch.arange(c_in)
    # candidate units in tie-break order: first units, further opening units, extra units, each level
    # over all rows before the next (equal values are spread over the rows round robin)
    values = torch.cat([path + (c_a + c_r), (path + c_r).repeat(c_out - 1), path.repeat(c_out * (p - 1))])
    rows_of = row.repeat(1 + (c_out - 1) + c_out * (p - 1))
    chosen = torch.sort(values, descending=True, stable=True).indices[:n]
    per_row = torch.bincount(rows_of[chosen], minlength=c_in)
    return spread_rows(per_row, c_out, p)


def spread_rows(per_row: Tensor, c_out: int, p: int) -> Tensor:
    """Kernel counts with the given row sums: ``min(r_j, C_out)`` non-empty kernels per row, assigned to
    columns cyclically (so ``min(C_out, sum_j min(r_j, C_out))`` columns are covered), units spread
    evenly over a row's kernels (each at most ``p``)."""
    counts = torch.zeros(per_row.numel(), c_out, dtype=torch.long)
    start = 0
    for j, r in enumerate(per_row.tolist()):
        k = min(r, c_out)
        if k == 0:
            continue
        base, extra = divmod(r, k)
        if base + (extra > 0) > p:
            raise ConfigError(f"npb: row {j} needs {r} weights in {c_out} kernels of at most {p}")
        cols = (start + torch.arange(k)) % c_out
        counts[j, cols] = base + (torch.arange(k) < extra).long()
        start = (start + k) % c_out
    return counts


def solve_milp(prog: LayerProgram, time_limit: float | None = None) -> Tensor:
    """The same program solved as a mixed-integer LP with ``scipy.optimize.milp`` (HiGHS), the solver the
    reference's cvxpy call reaches; ``sum(M) <= n`` as the reference, integer counts rounded."""
    try:
        import numpy as np
        from scipy import sparse
        from scipy.optimize import Bounds, LinearConstraint, milp
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("npb: solver='milp' needs SciPy >= 1.9 (pip install scipy); "
                          "or use solver='greedy'") from None
    c_in, c_out, n = prog.c_in, prog.c_out, prog.n
    nm = c_in * c_out
    c_a, c_b, c_r = prog.coefficients()
    paths = prog.paths.to(torch.float64).numpy()
    # variables: M (row-major over (j, i)), t_in (C_in), t_out (C_out), z (C_in * C_out); minimise -objective
    cost = np.concatenate([-c_b * np.repeat(paths, c_out), np.full(c_in + c_out, c_a), np.full(nm, c_r)])
    eye = sparse.identity(nm, format="csr")
    row_sum = sparse.kron(sparse.identity(c_in), np.ones((1, c_out)), format="csr")
    col_sum = sparse.kron(np.ones((1, c_in)), sparse.identity(c_out), format="csr")
    zeros = lambda r, c: sparse.csr_matrix((r, c))  # noqa: E731
    blocks = [
        [row_sum, sparse.identity(c_in), zeros(c_in, c_out), zeros(c_in, nm)],   # rowsum + t_in >= m
        [col_sum, zeros(c_out, c_in), sparse.identity(c_out), zeros(c_out, nm)],  # colsum + t_out >= m
        [eye, zeros(nm, c_in + c_out), None, eye],                                # M + z >= 1
        [np.ones((1, nm)), zeros(1, c_in + c_out + nm), None, None],              # sum(M) <= n
    ]
    lower = [np.full(c_in, prog.m), np.full(c_out, prog.m), np.ones(nm), [-np.inf]]
    upper = [np.full(c_in, np.inf), np.full(c_out, np.inf), np.full(nm, np.inf), [n]]
    if prog.node_bound is not None:
        blocks += [[col_sum, zeros(c_out, c_in + c_out + nm), None, None],
                   [row_sum, zeros(c_in, c_in + c_out + nm), None, None]]
        lower += [np.full(c_out, -np.inf), np.full(c_in, -np.inf)]
        upper += [np.full(c_out, prog.node_bound[0]), np.full(c_in, prog.node_bound[1])]
    a = sparse.vstack([sparse.hstack([b for b in r if b is not None], format="csr") for r in blocks], format="csr")
    integrality = np.concatenate([np.ones(nm), np.zeros(c_in + c_out + nm)])
    bounds = Bounds(np.zeros(2 * nm + c_in + c_out),
                    np.concatenate([np.full(nm, prog.p), np.full(c_in + c_out + nm, np.inf)]))
    options = {} if time_limit is None else {"time_limit": time_limit}
    res = milp(cost, constraints=LinearConstraint(a, np.concatenate(lower), np.concatenate(upper)),
               integrality=integrality, bounds=bounds, options=options)
    if res.x is None:
        raise ConfigError(f"npb: the MILP solver found no solution ({res.message}); "
                          f"check node_constraint / max_p")
    counts = torch.from_numpy(np.rint(res.x[:nm])).long().view(c_in, c_out).clamp_(0, prog.p)
    return fill_to_budget(counts, prog)


def fill_to_budget(counts: Tensor, prog: LayerProgram) -> Tensor:
    """Add units until ``sum == n`` (a solver may stop short where further units add nothing): to the
    rows with most paths first, open kernels before new ones, lower indices first."""
    need = prog.n - int(counts.sum())
    if need <= 0:
        return counts
    room = (prog.p - counts).clamp(min=0)
    rank_row = torch.argsort(torch.argsort(-prog.paths.to(torch.float64), stable=True))
    key = (rank_row[:, None] * 2 + (counts == 0).long()) * counts.numel() + torch.arange(counts.numel()).view_as(counts)
    order = torch.argsort(key.reshape(-1))
    room_sorted = room.reshape(-1)[order]
    before = torch.cumsum(room_sorted, 0) - room_sorted
    add = (need - before).clamp(min=0).minimum(room_sorted)
    out = counts.clone().reshape(-1)
    out[order] += add
    return out.view_as(counts)


def input_paths(counter: PathCounter, model: nn.Module, layer: ChainLayer, weights: list[Tensor]) -> Tensor:
    """Paths arriving at each input unit of ``layer`` (``P``): its input in the path-mode forward of
    ``counter`` (entered, ``plain`` counts, masks ``weights`` as the weights) summed over positions."""
    module = model.get_submodule(layer.name.rpartition(".")[0])
    seen: list[Tensor] = []
    handle = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        counter.log_paths_unscaled(weights)
    finally:
        handle.remove()
    x = seen[0]
    paths = x[0].reshape(layer.in_units, -1).sum(1) if layer.conv else x.reshape(-1, layer.in_units).sum(0)
    if not bool(torch.isfinite(paths).all()):
        raise MaskError(f"npb: path counts into {layer.name!r} overflow float64")
    return paths.cpu()


def counts_to_mask(counts: Tensor, kernel_shape: tuple[int, ...], order: Tensor) -> Tensor:
    """Bool mask ``(C_out, C_in, *kernel_shape)`` with ``counts[j, i]`` weights in kernel ``(i, j)``, at the
    positions ranked first by ``order`` (``(C_out, C_in, kk)`` ranks: random or by magnitude)."""
    per_kernel = counts.t().reshape(counts.shape[1], counts.shape[0], 1)
    return (order < per_kernel).view(counts.shape[1], counts.shape[0], *kernel_shape)


def position_ranks(weight: Tensor, how: str, gen: torch.Generator) -> Tensor:
    """Rank of each position inside its kernel, ``(C_out, C_in, kk)``: ``random`` (the reference's
    ``np.random.shuffle``) or ``magnitude`` (largest ``|w|`` first, the reference's scale-weight option)."""
    w = weight.detach().cpu().reshape(weight.shape[0], weight.shape[1], -1)
    key = torch.rand(w.shape, generator=gen) if how == "random" else -w.abs().to(torch.float64)
    return torch.argsort(torch.argsort(key, dim=-1, stable=True), dim=-1)


def reallocate_ineffective(mask: Tensor, reach: Tensor, by_column: bool) -> Tensor:
    """The reference's ``fine_tune_mask`` for one conv layer, with the count kept exact: when more than one
    kept weight lies on no input->output path, they are moved to positions that would be effective
    (``reach``), filling the kernels with the most effective weights first (for 1x1 shortcuts: whole
    input channels, as the reference); if too few such positions exist the rest stay where they were."""
    eff = mask & reach
    q = int(mask.sum()) - int(eff.sum())
    if q <= 1:
        return mask
    c_out, c_in = mask.shape[:2]
    flat_eff, cand = eff.reshape(c_out, c_in, -1), (reach & ~eff).reshape(c_out, c_in, -1)
    if by_column:
        score = flat_eff.sum(dim=(0, 2))  # per input channel
        group = torch.arange(c_in).view(1, c_in, 1).expand_as(cand)
    else:
        score = flat_eff.sum(dim=2).reshape(-1)  # per kernel (out, in)
        group = torch.arange(c_out * c_in).view(c_out, c_in, 1).expand_as(cand)
    rank = torch.argsort(torch.argsort(-score, stable=True))
    idx = cand.reshape(-1).nonzero().squeeze(1)
    key = rank[group.reshape(-1)[idx]] * mask.numel() + idx
    take = idx[torch.argsort(key)[:q]]
    out = eff.reshape(-1).clone()
    out[take] = True
    short = q - take.numel()
    if short > 0:
        lost = (mask & ~eff).reshape(-1).nonzero().squeeze(1)[:short]
        out[lost] = True
    return out.view_as(mask)
