"""Training engine: the Trainer, optimization, precision, checkpoints, metrics, callbacks, DDP."""

from kdlab.engine.callbacks import Callback
from kdlab.engine.trainer import NonFiniteLossError, Trainer

__all__ = ["Callback", "NonFiniteLossError", "Trainer"]
