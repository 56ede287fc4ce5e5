"""The run kind of a study's shared teacher-cache fill: ``kdlab cache-teacher`` into the cache directory.

A fill is finished when the directory holds a cache whose every unit is filled; an unfinished one is
continued by running the same command again (the cache resumes unit by unit, see
:mod:`kdlab.teacher_cache.fill`), so it is never started over.
"""

from __future__ import annotations

from pathlib import Path

from kdlab.teacher_cache import CacheError, CacheLayout


class CacheFillRun:
    """``kdlab cache-teacher CONFIG``; finished when no unit of the cache is missing."""

    def finished(self, run_dir: Path) -> bool:
        layout = CacheLayout(run_dir)
        if not layout.meta_path.is_file():
            return False
        try:
            return layout.missing_parts(layout.read_meta()) == 0
        except (CacheError, KeyError, OSError):
            return False

    def argv(self, run_dir: Path, config: Path) -> list[str]:
        return ["cache-teacher", str(config)]

    def describe(self, run_dir: Path) -> str:
        return f"teacher cache filled ({run_dir})"


CACHE_FILL = CacheFillRun()
