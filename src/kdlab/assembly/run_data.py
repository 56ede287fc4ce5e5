"""The run's data for this process."""

from __future__ import annotations

from kdlab.config.schema import RunConfig
from kdlab.core import distributed
from kdlab.core.runtime import Runtime
from kdlab.data import DataBundle, build_data


def build_run_data(config: RunConfig, runtime: Runtime) -> DataBundle:
    """``build_data`` of the config's data section; under DDP rank 0 reads (and fills the decode cache)
    before the other ranks."""
    if distributed.is_main():
        data = build_data(config.data, runtime)
        distributed.barrier()
        return data
    distributed.barrier()
    return build_data(config.data, runtime)
