"""Building a run's parts from its config, once: the runtime, the data, the networks, the distiller.

``kdlab.run`` (training), ``kdlab.teacher_cache`` (filling a cache) and the protocols all build their
parts here, so a run, a cache and a study agree on what a config means.
"""

from kdlab.assembly.distiller import build_run_distiller, build_teacher_ensemble
from kdlab.assembly.networks import build_network, check_input_shape, name_given_modules, normalization
from kdlab.assembly.run_data import build_run_data
from kdlab.assembly.runtime import process_runtime, resolve_device, seed_everything, start_runtime
from kdlab.assembly.saved import SavedModel, load_saved_model
from kdlab.assembly.weights import fit_weights, load_model_weights, load_student, result_checkpoint

__all__ = [
    "SavedModel",
    "build_network",
    "build_run_data",
    "build_run_distiller",
    "build_teacher_ensemble",
    "check_input_shape",
    "fit_weights",
    "load_model_weights",
    "load_saved_model",
    "load_student",
    "name_given_modules",
    "normalization",
    "process_runtime",
    "resolve_device",
    "result_checkpoint",
    "seed_everything",
    "start_runtime",
]
