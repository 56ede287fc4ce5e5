"""The run's data for this process."""

from __future__ import annotations

from kdlab.config.schema import RunConfig
from kdlab.core import distributed
from kdlab.core.runtime import Runtime
from kdlab.data import DataBundle, UserData, build_data, build_user_data


def build_run_data(config: RunConfig, runtime: Runtime, user: UserData | None = None) -> DataBundle:
    """``build_data`` of the config's data section, or the user's own splits under it; under DDP rank 0
    reads (and fills the decode cache) before the other ranks."""
    def build() -> DataBundle:
        if user is None:
            return build_data(config.data, runtime)
        return build_user_data(user, config.data, runtime)

    if distributed.is_main():
        data = build()
        distributed.barrier()
        return data
    distributed.barrier()
    return build()
