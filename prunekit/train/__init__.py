"""Training: the loop with hook points, optimizers and LR schedules, checkpoints, evaluation."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, parse_duration
from .evaluate import evaluate
from .optim import build_optimizer, build_scheduler, lr_factor_fn
from .packed import PackedTrainer, train_packed
from .trainer import Trainer

__all__ = ["PackedTrainer", "TrainConfig", "Trainer", "build_optimizer", "build_scheduler", "evaluate",
           "load_checkpoint", "lr_factor_fn", "parse_duration", "save_checkpoint", "train_packed"]
