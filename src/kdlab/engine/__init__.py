"""Training engine: the Trainer, optimization, precision, checkpoints, metrics, callbacks, DDP."""

from kdlab.core.errors import NonFiniteLossError
from kdlab.engine.callbacks import Callback
from kdlab.engine.trainer import Trainer

__all__ = ["Callback", "NonFiniteLossError", "Trainer"]
