"""Ensembles: frozen teacher ensembles (batched with ``torch.func``), BatchEnsemble students that
average back into one network (Nam et al., ICML 2022), and the diversifying input perturbation.

Sits beside ``kdlab.models`` in the import order: it imports nothing of kdlab above it.
"""

from kdlab.ensemble.batchensemble import (
    BatchEnsemble,
    batchensemble_layers,
    ensemble_log_probs,
    merge_batchensemble,
    merged_state_dict,
    tile,
    to_batchensemble,
)
from kdlab.ensemble.layers import BatchEnsembleConv2d, BatchEnsembleLinear
from kdlab.ensemble.perturb import PixelRange, divergence_objective, ods_objective, perturb
from kdlab.ensemble.teachers import TeacherEnsemble, member_logits, same_architecture

__all__ = [
    "BatchEnsemble",
    "BatchEnsembleConv2d",
    "BatchEnsembleLinear",
    "PixelRange",
    "TeacherEnsemble",
    "batchensemble_layers",
    "divergence_objective",
    "ensemble_log_probs",
    "member_logits",
    "merge_batchensemble",
    "merged_state_dict",
    "ods_objective",
    "perturb",
    "same_architecture",
    "tile",
    "to_batchensemble",
]
