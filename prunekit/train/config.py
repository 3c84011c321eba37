"""Training recipe settings (optimizer, LR schedule, length, precision)."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+)\s*(ep|it)\s*$")
MAX_LENGTH = {"ep": 10**6, "it": 10**9}  # far beyond any recipe; a typo of a few zeros fails at once
MAX_STEPS = MAX_LENGTH["it"]


def parse_duration(text: str | int) -> tuple[int, str]:
    """``"160ep"`` -> (160, "ep"); ``"50000it"`` -> (50000, "it"); a bare int means epochs."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = text, "ep"
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ValueError(f"{text!r} is not a duration; allowed: '<n>ep' or '<n>it', e.g. '160ep', '50000it'")
        value, unit = int(m.group(1)), m.group(2)
    if value <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    if value > MAX_LENGTH[unit]:
        raise ValueError(f"duration {text!r} is too long; allowed: at most {MAX_LENGTH['ep']:,} epochs or "
                         f"{MAX_LENGTH['it']:,} steps")
    return value, unit


class TrainConfig(BaseModel):
    """One training phase. LR schedules: ``constant``; ``multistep`` (×gamma at ``milestones`` epochs);
    ``cosine`` (per epoch, to 0); ``cosine_bip`` (BiP ``utils/schedules.py``: lr·½(1+cos((e−1)/E·π)),
    the epoch−1 offset included); ``warmup_cosine`` (per step, linear warm-up then cosine: the ViT
    schedule DPaI uses)."""

    model_config = ConfigDict(extra="forbid")

    duration: str | int = "1ep"
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # each in [0, 1)
    schedule: Literal["constant", "multistep", "cosine", "cosine_bip", "warmup_cosine"] = "constant"
    milestones: list[int] = []
    gamma: float = 0.1
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    random_batches: bool = False  # LAP: every step samples a fresh random batch
    eval_every: int | None = Field(None, le=MAX_STEPS)  # optimizer steps between evaluations; None: every epoch
    label_smoothing: float = 0.0
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool | None = None  # None: on for models with 2-D convolutions (NHWC is faster there)
    compile: bool = False
    cuda_graph: bool = False  # capture the whole step (CUDA only, static shapes): prunekit.train.cuda_graph

    @field_validator("duration")
    @classmethod
    def _valid_duration(cls, v: str | int) -> str | int:
        parse_duration(v)
        return v

    @field_validator("lr", "weight_decay", "momentum", "gamma", "label_smoothing")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if not 0.0 <= v < float("inf"):  # also rejects NaN
            raise ValueError("allowed: a finite number >= 0")
        return v

    @field_validator("label_smoothing", "betas")
    @classmethod
    def _fraction(cls, v):
        if not all(0.0 <= x < 1.0 for x in (v if isinstance(v, tuple) else (v,))):
            raise ValueError("allowed: a number in [0, 1)")
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: list[int]) -> list[int]:
        if not all(0 <= m <= MAX_LENGTH["ep"] for m in v):
            raise ValueError(f"allowed: epochs in [0, {MAX_LENGTH['ep']:,}]")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError("schedule 'multistep' needs milestones (epochs)")
        if self.eval_every is not None and self.eval_every <= 0:
            raise ValueError("eval_every must be a positive number of steps")
        return self

    @property
    def length(self) -> tuple[int, str]:
        return parse_duration(self.duration)
