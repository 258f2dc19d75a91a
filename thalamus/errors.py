"""The one exception tree of Thalamus.

ThalamusError                 base; every error the project raises on purpose
├── DataError                 bad dataset input: names the file, row and column at fault
├── ConfigError               bad configuration: names the key at fault
├── NotFittedError            a router used before ``fit`` (or ``load``)
├── UnknownNameError          an unknown router, dataset, embedder or model name
└── BackendError              an upstream model call failed (gateway)

CLI commands catch ThalamusError and print its message without a traceback.
"""

from __future__ import annotations


class ThalamusError(Exception):
    """Base class of every error Thalamus raises on purpose."""


class DataError(ThalamusError, ValueError):
    """Invalid dataset input; the message names the file, row and column."""


class ConfigError(ThalamusError, ValueError):
    """Invalid configuration; the message names the key."""


class NotFittedError(ThalamusError, RuntimeError):
    """A router was asked to predict before it was fitted or loaded."""


class UnknownNameError(ThalamusError, KeyError):
    """An unknown router, dataset, embedder or model name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BackendError(ThalamusError):
    """An upstream model call failed."""
