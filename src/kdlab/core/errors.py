"""Error types of user mistakes: each is reported as one line, never a traceback.

Every error a user can fix (a bad config value, a missing file, an unusable checkpoint) derives from
:class:`UserError`; the CLI prints those as one line and lets every other exception, a bug in kdlab,
keep its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; the message is one line naming the file, key or argument."""


class ConfigError(UserError, ValueError):
    """A bad config value or combination; the message names the file and key."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message names the file."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (or SIGTERM); ``resume`` is the command that continues it."""

    def __init__(self, resume: str) -> None:
        super().__init__(resume)
        self.resume = resume


class NonFiniteLossError(UserError, FloatingPointError):
    """Training or evaluation produced NaN or infinite values; the message says where."""


class DiskFullError(UserError, OSError):
    """A file could not be written for want of disk space; the message names it and the space needed."""
