"""End to end on real MNIST through the CLI: LeNet-300-100 dense and one-shot magnitude pruning (OMP)."""
import sqlite3

from prunekit.cli import main

from .conftest import MNIST_DIR, require_mnist


def test_lenet300_dense_and_omp_on_real_mnist(tmp_path, capsys):
    require_mnist()
    root = tmp_path / "runs"
    common = [f"output.root={root}", f"data.root={MNIST_DIR}", "train.duration=8ep", "finetune.duration=3ep", "-q"]
    assert main(["run", "lenet300_mnist", "method={name: dense}", *common]) == 0
    assert main(["run", "lenet300_mnist", *common]) == 0  # magnitude, after training, 90%, global: OMP
    capsys.readouterr()
    con = sqlite3.connect(root / "results.sqlite")
    rows = {m: (acc, sp, nnz, params) for m, acc, sp, nnz, params in con.execute(
        "select method, final_acc, achieved_sparsity, nonzero_params, params from runs")}
    dense_acc, dense_sp, _, _ = rows["dense"]
    omp_acc, omp_sp, omp_nnz, params = rows["magnitude"]
    assert dense_sp == 0.0 and dense_acc >= 98.0, rows
    # 266,200 prunable weights -> int(0.9 * 266200) = 239,580 zeros
    assert omp_sp == 239_580 / 266_200 and params - omp_nnz == 239_580
    assert omp_acc >= 97.5, rows
    # the OMP run reused the dense pretraining instead of training again
    assert len(list((root / "_pretrained").iterdir())) == 1
