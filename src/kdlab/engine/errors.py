"""Errors the engine reports to the user as one line."""


class NonFiniteLossError(FloatingPointError):
    """Training or evaluation produced NaN or infinite values; the message says where."""
