"""prunekit: neural-network pruning across the training lifecycle."""
from .errors import PrunekitError
from .sparsity import MaskSet, Targets

__version__ = "0.1.0"
__all__ = ["MaskSet", "PrunekitError", "Targets", "__version__"]
