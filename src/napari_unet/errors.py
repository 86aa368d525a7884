"""The errors napari-unet raises for problems a user can fix (a bad input, setting, model
file, output path, a missing optional package, a run that diverged).  They share one base,
:class:`NapariUnetError`: the CLI prints them and exits with status 2, the widgets show them
as a message.  Any other exception is a bug and keeps its traceback everywhere."""

from __future__ import annotations

__all__ = ["NapariUnetError", "InputError", "ConfigError", "CheckpointError",
           "OutputExistsError", "MissingDependencyError", "TrainingDivergedError"]


class NapariUnetError(ValueError):
    """A problem the user can fix; the message says what and how."""


class InputError(NapariUnetError):
    """The input image cannot be used; the message says which input and what to do."""


class ConfigError(NapariUnetError):
    """A configuration value is invalid; the message names the field and what to do."""


class CheckpointError(NapariUnetError):
    """A model file cannot be read or written."""


class OutputExistsError(InputError):
    """The output path holds something else; refusing to overwrite it."""


class MissingDependencyError(InputError, ImportError):
    """An optional package this feature needs is not installed."""


class TrainingDivergedError(NapariUnetError, FloatingPointError):
    """Training produced a loss that is not finite."""
