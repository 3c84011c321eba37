import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MNIST_DIR = SHARED / "data" / "mnist"


def require_mnist() -> Path:
    """The real MNIST directory; a missing one fails under CI=true and skips elsewhere."""
    if (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        return MNIST_DIR
    msg = f"real MNIST not found at {MNIST_DIR}"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def mnist_dir() -> Path:
    return require_mnist()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
