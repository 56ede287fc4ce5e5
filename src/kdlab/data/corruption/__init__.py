"""Training-set corruptions for robustness studies: label noise and long-tail class imbalance.

Applied by :func:`kdlab.data.build_data` (``noise=`` / ``imbalance=``) to the training and validation
parts only; the test part stays clean and balanced. See :mod:`.apply` for the order and the policy.
"""

from kdlab.data.corruption.apply import (
    CorruptedSplits,
    CorruptionError,
    ImbalanceSpec,
    NoiseSpec,
    corrupt_splits,
)
from kdlab.data.corruption.imbalance import GROUP_NAMES, class_groups, class_sizes, keep_per_class
from kdlab.data.corruption.labels import load_record
from kdlab.data.corruption.noise import make_noisy, resolve_flip_map, transition_counts

__all__ = [
    "GROUP_NAMES",
    "CorruptedSplits",
    "CorruptionError",
    "ImbalanceSpec",
    "NoiseSpec",
    "class_groups",
    "class_sizes",
    "corrupt_splits",
    "keep_per_class",
    "load_record",
    "make_noisy",
    "resolve_flip_map",
    "transition_counts",
]
