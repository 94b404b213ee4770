"""The project's own exception types.

Every error a user can cause (bad input, missing data, wrong files) is raised as a subclass of
:class:`RlpruneError`; the CLI turns it into one clear line and a non-zero exit code.
"""

from __future__ import annotations

import reprlib


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


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` for an error message, bounded in work and length.

    :mod:`reprlib` stops at a few items per container and a few levels of nesting, so a value
    built from YAML aliases (a tiny file that expands to millions of nodes) costs no more to
    describe than a short list; the text is then cut to ``limit`` characters.
    """
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxtuple, r.maxset = 3, 4, 4, 4, 4
    r.maxstring, r.maxother, r.maxlong = limit, limit, limit
    try:
        text = r.repr(value)
    except ValueError:  # an int past Python's 4300-digit str() limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
