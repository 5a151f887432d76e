"""Slurm backends: one module per REST API version, and the command-line tools.

:func:`backend_for` reads the site configuration's ``slurm`` section as
python-zocalo does (``url``, ``api_version``, optional ``user`` and
``user_token``) and picks the module for ``api_version``:

==========================  ========================================================
``api_version``             backend
==========================  ========================================================
``v0.0.38``                 :mod:`~zocalo.wrapper.slurm.rest_v0_0_38` (Slurm 22.05)
``v0.0.40`` ... ``v0.0.44``  :mod:`~zocalo.wrapper.slurm.rest_v0_0_40` (23.11 - 25.05)
``cli``                     :mod:`~zocalo.wrapper.slurm.cli`: ``sbatch`` and friends
==========================  ========================================================

With ``cli`` the ``url`` is not used (write ``url: local``); the tools find
the cluster as they always do (``SLURM_CONF``, ``/etc/slurm``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zocalo.wrapper.backends.base import ENDED, JobBackend, JobRefused, JobRequest, JobState
from zocalo.wrapper.slurm.errors import SlurmError, SlurmUnreachable

#: ``api_version`` of the command-line backend.
COMMAND_LINE = "cli"

__all__ = [
    "COMMAND_LINE",
    "ENDED",
    "JobBackend",
    "JobRefused",
    "JobRequest",
    "JobState",
    "SlurmError",
    "SlurmUnreachable",
    "backend_for",
    "supported_versions",
]


def supported_versions() -> list[str]:
    from zocalo.wrapper.slurm.rest_v0_0_38 import VERSION
    from zocalo.wrapper.slurm.rest_v0_0_40 import VERSIONS

    return [VERSION, *VERSIONS, COMMAND_LINE]


def backend_for(settings: Mapping[str, Any]) -> JobBackend:
    """The backend a ``slurm`` section (``url``, ``api_version``, ``user``, ``user_token``)
    describes; SlurmError naming the section's fault otherwise."""
    version = str(settings.get("api_version") or "").strip()
    if version == COMMAND_LINE:
        from zocalo.wrapper.slurm.cli import CommandLineBackend

        return CommandLineBackend()
    if version not in supported_versions():
        raise SlurmError(
            f"slurm api_version {version!r} is not supported; "
            f"supported: {', '.join(supported_versions())}"
        )
    url = str(settings.get("url") or "").strip()
    if not url:
        raise SlurmError("the slurm section has no url (slurmrestd's address)")
    from zocalo.wrapper.slurm.rest import RestClient

    client = RestClient(url, user=settings.get("user"), user_token=settings.get("user_token"))
    if version == "v0.0.38":
        from zocalo.wrapper.slurm.rest_v0_0_38 import RestV0038

        return RestV0038(client)
    from zocalo.wrapper.slurm.rest_v0_0_40 import RestV0040

    return RestV0040(client, version)
