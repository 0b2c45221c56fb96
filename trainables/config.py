"""What a trainable accepts: one pydantic model per trainable, every knob with a default.

The service checks a study's search space and fixed values against these models before anything
runs, so a typo (``lrr``) or an impossible value is a 422, not a silently ignored key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trainables.datasets import DatasetSpec, DigitsSpec

Optimizer = Literal["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"]
WeightInit = Literal["xavier_uniform", "xavier_normal", "kaiming_normal", "normal"]
Schedule = Literal["constant", "step", "exponential", "inverse_time", "cosine"]
Placement = Literal["before_activation", "after_activation", "none"]


class TrainConfig(BaseModel):
    """Knobs shared by every built-in trainable (the seed's seven keys, BN, loss, run)."""

    model_config = ConfigDict(extra="forbid")

    # run
    dataset: DatasetSpec = Field(default_factory=lambda: DigitsSpec(name="digits"))
    epochs: int = Field(20, ge=1, le=1000)
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds torch and the batch order (below 2**32, as NumPy's seeds).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bf16"] = Field("none", description="bf16 autocast; used on CUDA only.")
    checkpoint_every: int = Field(0, ge=0, le=1000, description="Also checkpoint every N epochs (0: by time only).")
    checkpoint_interval_s: float = Field(
        10.0, ge=0.0, le=86_400.0,
        description="Checkpoint when this much training time has passed since the last checkpoint, and at the end "
        "(0: never by time). What a retry or a resume can lose; checkpointing every short epoch costs more than it saves.",
    )
    num_threads: int | None = Field(None, ge=1, le=256, description="Torch threads; default: the trial's CPUs.")
    # 1 learning rate, 2 batch size, 3 weight init, 4 optimizer
    lr: float = Field(0.01, gt=0.0, le=10.0)
    batch_size: int = Field(64, ge=2, le=65536)
    weight_init: WeightInit = "kaiming_normal"
    optimizer: Optimizer = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    rms_alpha: float = Field(0.99, ge=0.0, lt=1.0)
    # 5 regularization strength
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    use_l1: bool = False
    l1: float = Field(0.0, ge=0.0, le=1.0)
    # 6 depth and width (width: MLP only)
    depth: int = Field(2, ge=1, le=16)
    # 7 learning-rate decay
    lr_schedule: Schedule = "constant"
    step_size: int = Field(10, ge=1, le=1000)
    step_gamma: float = Field(0.5, gt=0.0, le=1.0)
    decay_rate: float = Field(0.95, gt=0.0, le=10.0)
    # batch normalization (PyTorch momentum m: running = (1 - m) * running + m * batch; m = 1 - seed's alpha)
    bn_placement: Placement = "before_activation"
    bn_momentum: float = Field(0.1, gt=0.0, le=1.0)
    bn_eps: float = Field(1e-5, gt=0.0, le=1.0)
    bn_before_softmax: bool = False
    # softmax cross-entropy
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: Literal["none", "balanced"] = "none"


class MLPConfig(TrainConfig):
    width: int = Field(128, ge=1, le=8192)


class CNNConfig(TrainConfig):
    depth: int = Field(3, ge=1, le=8)
    channels: int = Field(32, ge=1, le=1024)
    kernel_size: int = Field(5, ge=1, le=31)


class BusyWorkConfig(BaseModel):
    """Knobs of ``busy_work``: fixed work per epoch, and a score that depends on ``x`` and ``y`` only."""

    model_config = ConfigDict(extra="forbid")
    dataset: DatasetSpec = Field(default_factory=lambda: DigitsSpec(name="digits"), description="Unused: busy_work reads no data.")
    epochs: int = Field(20, ge=1, le=1000)
    seconds_per_epoch: float = Field(0.1, ge=0.0, le=60.0, description="CPU time spun per epoch (a busy loop).")
    checkpoint: bool = Field(False, description="Checkpoint every epoch (a few bytes), to time Tune's checkpointing.")
    x: float = Field(0.5, ge=0.0, le=1.0)
    y: float = Field(0.5, ge=0.0, le=1.0)
