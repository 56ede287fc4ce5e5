"""Errors of models that cannot be built or adapted as asked."""

from kdlab.core.errors import UserError


class ModelError(UserError, ValueError):
    """A model name, constructor argument or weight file that cannot give the model asked for; the
    message says what the model accepts."""
