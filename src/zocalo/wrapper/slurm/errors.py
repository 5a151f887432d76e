"""Slurm's own flavour of the backend errors (what the caller should do stays the same)."""

from __future__ import annotations

from zocalo.wrapper.backends.base import BackendError, BackendUnreachable


class SlurmError(BackendError):
    """Talking to Slurm failed."""


class SlurmUnreachable(SlurmError, BackendUnreachable):
    """Slurm did not answer (down, restarting, network): nothing was done; try later."""
