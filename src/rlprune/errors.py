"""The project's own exception types.

Every error a user can cause (bad input, missing data, wrong files) is raised as a subclass of
:class:`RlpruneError`; the CLI turns it into one clear line and a non-zero exit code.
"""

from __future__ import annotations


class RlpruneError(Exception):
    """Base class of all errors rlprune reports to a user."""


class ConfigError(RlpruneError, ValueError):
    """An invalid configuration value or key (the message names the key)."""


class DataError(RlpruneError):
    """A dataset is missing, corrupt, truncated or does not fit the model."""


class CheckpointError(RlpruneError):
    """A file is not a (valid) rlprune checkpoint or pruned-model file."""


class PruningError(RlpruneError):
    """A model cannot be analysed or pruned (no prunable conv, untraceable graph, ...)."""
