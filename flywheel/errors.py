"""Errors a user can act on. The command line prints their message alone, without a traceback,
so every message names what went wrong and the fix."""


class FlywheelError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class ConfigError(FlywheelError):
    """The configuration file is missing, unreadable or invalid (all problems listed together)."""


class ModelNotFoundError(FlywheelError):
    """A model named in the config is not on disk."""


class LakeError(FlywheelError):
    """The lake cannot be reached, or holds something inconsistent."""


class DataError(FlywheelError):
    """A stage found no usable data (an empty mix, no prompts, ...)."""
