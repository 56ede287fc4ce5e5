"""Errors raised while locating and reading datasets; each message is one line naming the file."""

from __future__ import annotations

from kdlab.core.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is not on disk where it was expected; the message says the layout and how to get it.

    Nothing is ever downloaded: the message tells the user what to fetch and where to put it.
    """


class DatasetFormatError(UserError, ValueError):
    """A dataset file exists but its content is wrong (bad header, label out of range, undecodable)."""


class DatasetSizeError(UserError, ValueError):
    """A dataset size (image count, image side) that would not fit in memory; the message names it."""
