"""The PyTorch side of the trainables: the training loop, the models, the built-in functions.

Imported only where training or test evaluation runs (Ray workers, the study's driver,
standalone runs); the declarations in :mod:`trainables` never import it.
"""

from trainables.engine.inference import load_data, load_model
from trainables.engine.loop import ModelBuilder, evaluate, evaluate_checkpoint, fit, held_out_metrics

__all__ = ["ModelBuilder", "evaluate", "evaluate_checkpoint", "fit", "held_out_metrics", "load_data", "load_model"]
