"""Sizes checked against the machine's memory before a dataset is allocated, so that a typo in a size
(``image_size: 1000000``) is one line instead of an allocator failure of terabytes."""

from __future__ import annotations

import os

from kdlab.core.checkpoint import size_text
from kdlab.data.errors import DatasetSizeError


def physical_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(count: int, shape: tuple[int, ...], bytes_per_value: int, what: str) -> None:
    """Refuse ``count`` images of ``shape`` (C, H, W) at ``bytes_per_value`` that would not fit in memory;
    ``what`` names them in the message (``synthetic: 1000000 training images``)."""
    needed = count * bytes_per_value
    for side in shape:
        needed *= side
    available = physical_memory()
    if needed > available:
        raise DatasetSizeError(f"{what} of {'x'.join(map(str, shape))} would take {size_text(needed)}, more "
                               f"than this machine's {size_text(available)} of memory; lower the size")
