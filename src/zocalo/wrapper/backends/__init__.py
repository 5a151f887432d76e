"""Where long jobs run: the backend abstraction (:mod:`.base`), this host (:mod:`.local`,
with its job runner :mod:`.local_job`); Slurm's backends are :mod:`zocalo.wrapper.slurm`
(one module per REST API version, and ``sbatch``).

:func:`zocalo.services.cluster_backend.backend_for_site` chooses one from the site
configuration.
"""
