"""Run directories are named by a hash of a run's settings: these pinned hashes must not move (a changed
default or dump format would silently start every run again in a new directory, and split the cache of
dense pretraining). None of these hashes should change; if one must, say why in the change."""
import pytest

from prunekit.experiments import build_config
from prunekit.experiments.config import pretrain_hash, run_hash

CASES = {
 "dense-mlp-digits": {"name": "h", "model": {"name": "mlp"}, "data": {"name": "sklearn_digits"}, "method": {"name": "dense"}},
 "snip-lenet300-mnist": {"name": "h", "model": {"name": "lenet300_100"}, "data": {"name": "mnist", "root": "data"}, "method": {"name": "snip", "sparsity": 0.9}},
 "dpai-resnet20": {"name": "h", "model": {"name": "cifar_resnet20"}, "data": {"name": "cifar10", "root": "data"}, "method": {"name": "dpai", "compression": 2.0}, "train": {"duration": "160ep", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}},
 "granet-vgg19": {"name": "h", "model": {"name": "vgg19_bn_granet"}, "data": {"name": "cifar10", "root": "data"}, "method": {"name": "granet", "sparsity": 0.98}, "seed": 2},
 "rigl-resnet20": {"name": "h", "model": {"name": "cifar_resnet20"}, "data": {"name": "cifar10", "root": "data"}, "method": {"name": "rigl", "sparsity": 0.9}},
 "bip-resnet20s": {"name": "h", "model": {"name": "resnet20s"}, "data": {"name": "cifar10", "root": "data"}, "method": {"name": "bip", "sparsity": 0.8}, "finetune": {"duration": "100ep"}},
 "imp-resnet20s": {"name": "h", "model": {"name": "resnet20s"}, "data": {"name": "cifar10", "root": "data"}, "method": {"name": "imp", "sparsity": 0.8, "rewind_step": 2000}},
 "omp-mlp": {"name": "h", "model": {"name": "mlp"}, "data": {"name": "sklearn_digits"}, "method": {"name": "magnitude", "sparsity": 0.9, "when": "after"}},
 "lap-fcn": {"name": "h", "model": {"name": "fcn"}, "data": {"name": "mnist", "root": "data"}, "method": {"name": "lap", "sparsity": 0.9}, "train": {"duration": "50000it", "optimizer": "adam", "lr": 0.0012}},
 "hydra-vgg16": {"name": "h", "model": {"name": "vgg16_bn"}, "data": {"name": "cifar10", "root": "data"}, "method": {"name": "hydra", "sparsity": 0.9}},
 "structured-lenet5": {"name": "h", "model": {"name": "lenet5"}, "data": {"name": "mnist", "root": "data"}, "method": {"name": "structured", "sparsity": 0.5}},
 "synflow-vit": {"name": "h", "model": {"name": "vit_small_patch4"}, "data": {"name": "cifar10", "root": "data"}, "method": {"name": "synflow", "sparsity": 0.99}, "seed": 1},
}


PINNED = {
    "dense-mlp-digits": ("f2b526cfe2", "cea5686fbe"),
    "snip-lenet300-mnist": ("6571e3ef67", "bbc147577a"),
    "dpai-resnet20": ("5ee45475e5", "861817c5b6"),
    "granet-vgg19": ("bad6178acf", "42c5bf844e"),
    "rigl-resnet20": ("f230e7f935", "9c20c6c72c"),
    "bip-resnet20s": ("19843a5147", "9a68a5af43"),
    "imp-resnet20s": ("e5a04e1978", "9a68a5af43"),
    "omp-mlp": ("0d4455e643", "cea5686fbe"),
    "lap-fcn": ("d321227c87", "f552480cf2"),
    "hydra-vgg16": ("97132b938b", "5238f3a9c1"),
    "structured-lenet5": ("6a5dfba09f", "5f1a028ee6"),
    "synflow-vit": ("0e2b5825af", "cc17e1a9ba"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_and_pretrain_hashes_are_pinned(case):
    cfg = build_config(CASES[case])
    assert (run_hash(cfg), pretrain_hash(cfg)) == PINNED[case]


def test_hashes_tell_runs_apart():
    assert len({p[0] for p in PINNED.values()}) == len(PINNED)
