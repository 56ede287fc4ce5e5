"""The error of a label-noise or imbalance setting, or a labels file, that cannot be used."""

from kdlab.core.errors import ConfigError


class CorruptionError(ConfigError):
    """Bad ``data.noise`` / ``data.imbalance`` settings or an unfit labels file; the message names the key."""
