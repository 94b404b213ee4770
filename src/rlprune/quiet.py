"""Silence known, harmless third-party chatter around the rlprune calls that trigger it.

Exporting a model makes torch print messages that are about torch itself and need no action
from an rlprune user: the ONNX exporter's "torchvision is not installed" (one log line per
torchvision op), a deprecation ``FutureWarning`` about pytree's ``LeafSpec`` raised while torch
deep-copies its own export graph, and ``torch.export.save``'s "No complete tensor found in the
group" for NHWC weights on the CPU (the warning is about weights on an accelerator).

Each one is matched by message, category (or logger) and emitting module, and dropped only
inside :func:`quiet_third_party`; with the ``rlprune`` logger at DEBUG (``rlprune -v``) all of
them pass through. Nothing is installed at import and rlprune's own warnings are never touched.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

__all__ = ["NOISY_LOGS", "NOISY_WARNINGS", "quiet_third_party", "verbose"]

# (message regex, category, module regex) for warnings.filterwarnings. The LeafSpec warning
# is attributed to copyreg (deepcopy rebuilding the object) or to torch itself.
NOISY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"No complete tensor found in the group", UserWarning, r"torch\.export\."),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"(copyreg|torch)(\.|$)"),
)

# logger name -> message prefixes (of the unformatted ``record.msg``) dropped from it.
NOISY_LOGS: dict[str, tuple[str, ...]] = {
    "torch.onnx._internal.exporter._registration": ("torchvision is not installed",),
}


def verbose() -> bool:
    """Whether the user asked for debug output (``rlprune -v`` sets the rlprune logger)."""
    return logging.getLogger("rlprune").isEnabledFor(logging.DEBUG)


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.prefixes))


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Drop :data:`NOISY_WARNINGS` and :data:`NOISY_LOGS` for the duration of the block.

    The verbosity is read when the block starts. Like ``warnings.catch_warnings`` (which it
    uses) it changes process-wide filters while it runs, so it belongs around short library
    calls, not around threads that raise warnings of their own.
    """
    if verbose():
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        for message, category, module in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        for name, prefixes in NOISY_LOGS.items():
            logger, drop = logging.getLogger(name), _DropPrefixes(prefixes)
            logger.addFilter(drop)
            stack.callback(logger.removeFilter, drop)
        yield
