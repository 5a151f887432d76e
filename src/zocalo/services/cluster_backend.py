"""Which backend the cluster submission service runs its jobs on, from the site configuration.

* a ``cluster`` section (``plugin: cluster``) with ``backend: local`` or ``slurm`` decides;
* without one, a ``slurm`` section means Slurm, and no ``slurm`` section means this
  host (:mod:`zocalo.wrapper.backends.local`): a site without a cluster, and the
  demo, run their jobs locally out of the box.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zocalo.wrapper.backends.base import BackendError, JobBackend


def backend_for_site(plugins: Mapping[str, Any], local_jobs: Path) -> JobBackend:
    """The backend the active ``plugins`` describe (see the module docstring); local jobs
    live in ``local_jobs`` unless the ``cluster`` section names a folder. BackendError
    naming the fault of a section that describes none."""
    cluster = plugins.get("cluster")
    slurm = plugins.get("slurm")
    choice = cluster["backend"] if cluster is not None else ("slurm" if slurm else "local")
    if choice == "local":
        from zocalo.wrapper.backends.local import LocalBackend

        folder = cluster["jobs"] if cluster is not None and cluster["jobs"] else local_jobs
        max_jobs = cluster.get("max_jobs") if cluster is not None else None
        return LocalBackend(Path(folder).expanduser(), max_jobs=max_jobs)
    if slurm is None:
        raise BackendError(
            "the cluster section says backend: slurm, but no 'slurm' section is active "
            "(url, api_version, user, user_token)"
        )
    from zocalo.wrapper.slurm import backend_for

    return backend_for(slurm)
