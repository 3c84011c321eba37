"""The model x method matrix: every registered method on models prunekit did not build.

Each cell either works — masks at exactly the requested sparsity over the reported targets, 20 training
steps with the pruned weights staying exactly zero and the loss going down — or raises one
``PrunekitError`` line whose reason is one of :data:`REFUSALS` (listed in ``docs/models.md``). Anything
else fails. ``python -m tests.model_matrix --write`` regenerates ``docs/models.md`` from a fresh run.
"""
from __future__ import annotations

import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import prunekit as pk
from prunekit.errors import PrunekitError
from prunekit.methods import METHODS, PruneContext
from prunekit.modelio import ModelIO
from prunekit.sparsity import allocate, num_keep

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
SPARSITY = 0.5
STEPS = 20

#: every reason a cell may refuse for: a pattern of its one-line message, and the explanation the docs give
REFUSALS: dict[str, tuple[str, str]] = {}


def refusal(key: str, pattern: str, why: str) -> None:
    REFUSALS[key] = (pattern, why)


# --- the models ---------------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck layout: conv1/bn1, conv2/bn2, conv3/bn3, a ``downsample`` branch."""

    def __init__(self, cin: int, width: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(Bottleneck(16, 8, 32, 1), Bottleneck(32, 8, 32, 1))
        self.layer2 = nn.Sequential(Bottleneck(32, 16, 64, 2))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.avgpool(self.layer2(self.layer1(x))), 1))


def _dw_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


class TinyMobileNet(nn.Module):
    """MobileNet-style: depthwise 3x3 + pointwise 1x1 blocks and one grouped (groups=4) conv."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(_dw_block(16, 32, 1), _dw_block(32, 64, 2),
                                    nn.Conv2d(64, 64, 3, 1, 1, groups=4, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class MHAViT(nn.Module):
    """A ViT whose attention is ``nn.MultiheadAttention`` (packed ``in_proj_weight``)."""

    def __init__(self, num_classes: int = 10, dim: int = 32, heads: int = 4, depth: int = 2):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.encoder(t))[:, 0])


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=32, num_labels=4, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


@dataclass(frozen=True)
class MatrixModel:
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], tuple]  # one (x, y) batch
    what: str
    lr: float = 0.05  # SGD with momentum 0.9 on one fixed batch
    sparsity: float = 0.5


def _images(g, size: int = 32):
    return torch.randn(8, 3, size, size, generator=g), torch.randint(0, 10, (8,), generator=g)


def _sentences(g):
    return torch.randint(0, 64, (8, 12), generator=g), torch.randint(0, 4, (8,), generator=g)


def _next_tokens(g):
    x = torch.randint(0, 64, (8, 13), generator=g)
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


MODELS = [
    MatrixModel("resnet_downsample", TinyResNet, _images, "torchvision-style bottleneck ResNet with `downsample`"),
    MatrixModel("mobilenet_dw", TinyMobileNet, _images, "depthwise 3x3 + pointwise 1x1 blocks, a groups=4 conv"),
    MatrixModel("vit_mha", MHAViT, _images, "ViT built on `nn.MultiheadAttention` (packed `in_proj_weight`)"),
    MatrixModel("vit_small_patch4", lambda: pk.models.create("vit_small_patch4", input_size=16),
                lambda g: _images(g, 16), "the zoo's CIFAR ViT (separate q/k/v/out linears, SDPA), 16x16 inputs",
                lr=0.01, sparsity=0.9),
    MatrixModel("hf_bert", _bert, _sentences, "HF `BertForSequenceClassification` (token ids in, `ModelOutput` out)"),
    MatrixModel("hf_gpt2", _gpt2, _next_tokens, "HF `GPT2LMHeadModel` (`Conv1D`, `lm_head` tied to `wte`)"),
]

# --- the methods ----------------------------------------------------------------------------------------

#: settings that keep a cell to about a second; the method's own defaults otherwise
QUICK = {
    "dpai": {"steps": 30}, "synflow": {"rounds": 5}, "iter_snip": {"rounds": 5}, "hydra": {"score_epochs": 1},
    "snip": {"num_samples": 16}, "grasp": {"num_samples": 16}, "prospr": {"num_samples": 16, "inner_steps": 1},
    # dense-to-sparse, so the run ends at the requested sparsity (from the default 0.5 start, a layer-wise
    # schedule that never revives cannot come back down to a 0.5 target)
    # (granet_uniform's classifier rule, 20 % density for the head above 0.8, is tested in test_dst)
    "granet": {"initial_sparsity": 0.0}, "granet_uniform": {"initial_sparsity": 0.0, "classifier": None},
}


def settings_for(method: str, sparsity: float = SPARSITY) -> dict:
    fields = METHODS.get(method).Config.model_fields
    s = {} if method == "dense" else {"sparsity": sparsity}
    if "update_frequency" in fields:
        s["update_frequency"] = 5
    return {**s, **QUICK.get(method, {})}


@dataclass
class Outcome:
    ok: bool
    detail: str  # "trained" figures, or the one-line refusal
    refusal: str | None = None  # the REFUSALS key


def _check_sparsity(pruner, sparsity: float) -> None:
    masks = pruner.masks
    if METHODS.meta(pruner.name).get("unit", "weight") != "weight" or pruner.name == "dense":
        return
    alloc = getattr(pruner.config, "allocation", "global")
    if alloc == "global":
        assert masks.nnz() == num_keep(masks.numel(), sparsity), (masks.nnz(), masks.numel())
        return
    shapes = {n: tuple(m.shape) for n, m in masks.items()}
    budgets = allocate(alloc, shapes, sparsity) if alloc in ("erk", "er") else dict.fromkeys(shapes, sparsity)
    for layer, stats in masks.per_layer().items():
        assert stats["nnz"] == num_keep(stats["numel"], budgets[layer]), layer


def run_cell(model_spec: MatrixModel, method: str) -> Outcome:
    """Prune, check the sparsity, train 20 steps on one fixed batch; refusals are returned, not raised."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = model_spec.build()
    batches = [model_spec.batch(g) for _ in range(4)]
    io = ModelIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = pk.create(method, model, **settings_for(method, model_spec.sparsity))
            ctx = PruneContext(batches=batches, total_steps=STEPS, steps_per_epoch=4)
            pruner.setup(ctx)
            if pruner.schedule in ("init", "during"):
                pruner.on_init(ctx)
            else:
                pruner.prune(ctx)
            if pruner.schedule != "during":
                _check_sparsity(pruner, model_spec.sparsity)
            x, y = batches[0]
            opt = torch.optim.SGD(model.parameters(), lr=model_spec.lr, momentum=0.9)
            own_step = getattr(pruner, "train_step", None)
            if own_step is None:
                opt = pruner.wrap(opt)
            losses = []
            for step in range(1, STEPS + 1):
                if own_step is not None:
                    losses.append(float(own_step(x, y, opt, step)))
                else:
                    opt.zero_grad()
                    loss = io.loss(model, x, y)
                    loss.backward()
                    opt.step()
                    losses.append(float(loss))
    except PrunekitError as e:
        message = str(e)
        assert "\n" not in message.strip(), f"refusal is not one line: {message!r}"
        key = next((k for k, (pat, _) in REFUSALS.items() if re.search(pat, message)), None)
        return Outcome(False, message, key)
    _check_sparsity(pruner, model_spec.sparsity)  # during-training methods end their schedule at the target
    for p, m in zip(pruner.masks.params, pruner.masks.values()):
        assert torch.count_nonzero(p.detach()[~m]) == 0, "a pruned weight is non-zero after training"
    assert pruner.masks.sparsity() > 0 or method == "dense", "nothing was pruned"
    assert losses[-1] < losses[0], f"loss did not go down: {losses[0]:.4f} -> {losses[-1]:.4f}"
    return Outcome(True, f"sparsity {pruner.masks.sparsity():.3f}, loss {losses[0]:.3f} -> {losses[-1]:.3f}")


def all_cells() -> list[tuple[str, str]]:
    return [(m.name, method) for m in MODELS for method in METHODS.names()]


def model_by_name(name: str) -> MatrixModel:
    return next(m for m in MODELS if m.name == name)


# --- the documented refusals ------------------------------------------------------------------------------

refusal("lap-attention", r"is attention; the lookahead and per-layer Hessian",
        "LAP's lookahead scores a weight with the weights of the layers before and after it in a sequential "
        "conv/linear chain (and OBD, its baseline, needs per-layer Hessians of such a chain); attention breaks "
        "the chain (q, k and v do not feed each other). `mp`, `mp_global` and `rp` prune these models.")
refusal("phew-shortcut", r"phew jump='reference'.*read different unit counts",
        "PHEW's reference random walk (`jump='reference'`) steps from a layer to the next layer in module order; "
        "with a projection shortcut those read different unit counts. `jump='block_input'` walks such nets.")



def render(results: dict[tuple[str, str], Outcome]) -> str:
    """``docs/models.md``: the matrix (✓ or the refusal key) and the refusals with their reasons."""
    methods = METHODS.names()
    lines = [
        "# Models prunekit did not build: the model × method matrix",
        "",
        "Generated by `python -m tests.model_matrix --write` (checked by `tests/test_model_matrix.py`, which",
        "fails when this page and the code disagree). Each cell prunes at the model's sparsity, checks the exact",
        "sparsity over the reported targets (`prunekit targets MODEL`), trains 20 steps on one batch and",
        "checks that pruned weights stay exactly zero and the loss goes down; or the method refuses the",
        "model in one line for a reason listed below. `ok` marks a cell that works.",
        "",
        "| model | what it is | sparsity |",
        "|---|---|---|",
    ] + [f"| `{m.name}` | {m.what} | {m.sparsity} |" for m in MODELS] + ["", "| method | " + " | ".join(m.name for m in MODELS) + " |",
                                                             "|---|" + "---|" * len(MODELS)]
    for method in methods:
        cells = []
        for m in MODELS:
            out = results[(m.name, method)]
            cells.append("ok" if out.ok else f"refused: {out.refusal}")
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## What a cell's pass means on these models",
        "",
        "- **Targets** (`prunekit targets MODEL`, `pruner.report()`): conv/linear weights, HF `Conv1D` and",
        "  `nn.MultiheadAttention`'s projections by default; embeddings and any parameter by glob on request.",
        "  GPT-2's `lm_head` is tied to `wte`: one tensor, one mask, counted once (embeddings are dense by",
        "  default, so the head is too). A packed q/k/v tensor (`in_proj_weight`, GPT-2's `c_attn`) is one layer",
        "  for per-layer budgets.",
        "- **Attention in the path methods** ([pai.md](pai.md)): a query/key projection only weights the softmax,",
        "  so no path runs through it; DPaI keeps q/k/v dense as its reference does (`attention='paths'` searches",
        "  v), PHEW keeps q/k dense, NPB and PHEW keep `nn.MultiheadAttention`'s weights dense (its `out_proj`",
        "  is applied functionally); each is listed by `report()` and left out of the sparsity. Path counts through",
        "  `nn.MultiheadAttention` equal those of the same attention written with Linear layers; through HF",
        "  `Conv1D` those of `nn.Linear` transposed; PHEW walks grouped convolutions as their block-diagonal dense",
        "  form and NPB solves them group by group (as its output-channel chunks).",
        "- **Token inputs**: the data-free methods start at the embedding output (the input embedding as a",
        "  linear layer over the one-hot vocabulary); a degenerate dense path count is refused.",
        "- **Structured** ([structured.md](structured.md)): whole heads on BERT, GPT-2, `nn.MultiheadAttention` and",
        "  the zoo ViT; depthwise and grouped convolutions through their groups; the compact model equals the",
        "  masked one within `1e-5 · max |output|` with sharpened attention.",
        "- **Outputs and losses**: `ModelOutput`s, dicts and tuples are read by the logits rule in",
        "  `prunekit/modelio.py`; sequence logits with token targets take a per-token cross-entropy;",
        "  `pk.create(..., loss_fn=, output_fn=)` replaces both wherever a method computes a loss.",
    ]
    used = sorted({o.refusal for o in results.values() if not o.ok})
    if used:
        lines += ["", "## Refusals", ""]
        for key in used:
            lines.append(f"- **{key}**: {REFUSALS[key][1]}")
    return "\n".join(lines) + "\n"


def compute() -> dict[tuple[str, str], Outcome]:
    return {(m, method): run_cell(model_by_name(m), method) for m, method in all_cells()}


if __name__ == "__main__":
    t0 = time.perf_counter()
    results = compute()
    for (m, method), out in results.items():
        print(f"{m:<18} {method:<15} {'ok' if out.ok else 'REFUSED'} {out.detail}")
    if "--write" in sys.argv:
        DOC.write_text(render(results))
    print(f"{len(results)} cells in {time.perf_counter() - t0:.0f} s")
