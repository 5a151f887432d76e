"""What a ``cluster.submission`` step asks for, read as Diamond's recipes write it.

The step's ``parameters`` (as in DiamondLightSource/cryoem-services' recipes)::

    "parameters": {
        "cluster": {
            "commands": ["module load relion",
                         "zocalo.wrap --wrap command --recipewrapper $RECIPEWRAP"],
            "job_name": "Class2D-EM",
            "cpus_per_task": 8, "tasks": 1, "nodes": 1, "gpus": 1,
            "memory_per_node": 96000,          # MB
            "time_limit": "3:00:00",           # [D-]H:MM:SS, MM:SS, or seconds
            "partition": "cs05r", "prefer": "",
            "environment": {"USER": "gda2", "PATH": "/bin:/usr/bin"}
        },
        "wrapper": "/dls/.../.recipewrap",     # where the recipe-wrapper file goes
        "workingdir": "/dls/.../class2d/",      # absolute; created if missing
        "standard_output": "/dls/.../run.out",  # default <workingdir>/run.out
        "standard_error": "/dls/.../run.err"    # default <workingdir>/run.err
    }

``commands`` is a string or a list of lines (joined by newlines); ``$RECIPEWRAP``
in it becomes the recipe-wrapper file's path, and a ``#!/bin/bash`` line is put
first unless the script starts with its own ``#!``. Empty strings (a recipe
parameter substituted with nothing, as ``"prefer": "{partition_preference}"``
often is) count as unset. Without ``environment`` the job gets the service's
``PATH``, ``USER``, ``HOME`` and ``LANG``; either way the service's
``ZOCALO_CONFIG``, ``ZOCALO_DEFAULT_ENV`` and ``ZOCALO_TRANSPORT`` are added
unless given, so that ``zocalo.wrap`` in the job reports to the same broker.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zocalo.errors import InvalidMessage
from zocalo.wrapper.slurm import JobRequest

RECIPE_WRAPPER_MARK = "$RECIPEWRAP"
DEFAULT_JOB_NAME = "zocalo"
#: Copied from the service's environment when the step gives no ``environment``.
DEFAULT_ENVIRONMENT = ("PATH", "USER", "HOME", "LANG")
#: Copied from the service's environment unless the step sets them: the job's
#: ``zocalo.wrap`` then reports to the broker and site configuration the service uses.
ZOCALO_VARIABLES = ("ZOCALO_CONFIG", "ZOCALO_DEFAULT_ENV", "ZOCALO_TRANSPORT")
_DURATION = re.compile(r"^(?:(\d+)-)?(?:(?:(\d+):)?(\d+):)?(\d+(?:\.\d+)?)$")


class BadSubmission(InvalidMessage):
    """Step parameters that do not describe a job; the message names the parameter.

    An invalid message: the runner dead-letters it at once (retrying cannot help).
    """


@dataclass(frozen=True)
class Submission:
    """A job to submit, and where its recipe-wrapper file goes (if anywhere)."""

    request: JobRequest
    recipe_wrapper: Path | None
    working_directory: Path


def _integer(cluster: Mapping[str, Any], name: str) -> int | None:
    value = cluster.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise BadSubmission(f"cluster.{name} must be a whole number, not {value!r}") from None
    if number <= 0:
        raise BadSubmission(f"cluster.{name} must be positive, not {value!r}")
    return number


def _text(parameters: Mapping[str, Any], name: str, where: str = "") -> str | None:
    value = parameters.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int | float):
        raise BadSubmission(f"{where}{name} must be text, not {value!r}")
    return str(value)


def time_limit_minutes(value: Any) -> int | None:
    """``"3:00:00"``, ``"1-12:00:00"``, ``"45:00"`` or seconds, in whole minutes (rounded up)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadSubmission(f"cluster.time_limit must be a duration, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise BadSubmission(
                f"cluster.time_limit must be H:MM:SS, D-H:MM:SS, MM:SS or seconds, not {value!r}"
            )
        days, hours, minutes, rest = match.groups()
        seconds = (
            int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(rest)
        )
    if seconds <= 0:
        raise BadSubmission(f"cluster.time_limit must be positive, not {value!r}")
    return math.ceil(seconds / 60)


def script_of(commands: Any, recipe_wrapper: Path | None) -> str:
    if isinstance(commands, list) and all(isinstance(line, str) for line in commands):
        commands = "\n".join(commands)
    if not isinstance(commands, str) or not commands.strip():
        raise BadSubmission(
            f"cluster.commands must be a script or a list of lines, not {commands!r}"
        )
    if recipe_wrapper is not None:
        commands = commands.replace(RECIPE_WRAPPER_MARK, str(recipe_wrapper))
    elif RECIPE_WRAPPER_MARK in commands:
        raise BadSubmission(
            f"cluster.commands use {RECIPE_WRAPPER_MARK}, but the step names no 'wrapper' file"
        )
    return commands if commands.startswith("#!") else f"#!/bin/bash\n{commands}\n"


def job_environment(cluster: Mapping[str, Any]) -> dict[str, str]:
    given = cluster.get("environment")
    if given is None or given == "":
        environment = {name: os.environ[name] for name in DEFAULT_ENVIRONMENT if name in os.environ}
    elif isinstance(given, Mapping):
        environment = {str(key): str(value) for key, value in given.items()}
    else:
        raise BadSubmission(f"cluster.environment must be an object, not {given!r}")
    for name in ZOCALO_VARIABLES:
        if name in os.environ and name not in environment:
            environment[name] = os.environ[name]
    return environment


def read_submission(parameters: Mapping[str, Any], *, comment: str | None = None) -> Submission:
    """The job a ``cluster.submission`` step's parameters describe (see the module docstring)."""
    cluster = parameters.get("cluster")
    if not isinstance(cluster, Mapping):
        raise BadSubmission(f"the step has no 'cluster' parameters (got {cluster!r})")
    workingdir = _text(parameters, "workingdir")
    if workingdir is None or not workingdir.startswith("/"):
        raise BadSubmission(
            f"workingdir must be an absolute path, not {workingdir!r}: a job's files must "
            "not land wherever the service happens to run"
        )
    working_directory = Path(workingdir)
    wrapper = _text(parameters, "wrapper")
    recipe_wrapper = Path(wrapper) if wrapper else None
    if recipe_wrapper is not None and not recipe_wrapper.is_absolute():
        recipe_wrapper = working_directory / recipe_wrapper
    stdout = _text(parameters, "standard_output") or str(working_directory / "run.out")
    stderr = _text(parameters, "standard_error") or str(working_directory / "run.err")
    request = JobRequest(
        script=script_of(cluster.get("commands"), recipe_wrapper),
        name=_text(cluster, "job_name", "cluster.") or DEFAULT_JOB_NAME,
        working_directory=str(working_directory),
        standard_output=stdout,
        standard_error=stderr,
        environment=job_environment(cluster),
        cpus_per_task=_integer(cluster, "cpus_per_task"),
        tasks=_integer(cluster, "tasks"),
        nodes=_integer(cluster, "nodes"),
        memory_per_node=_integer(cluster, "memory_per_node"),
        time_limit=time_limit_minutes(cluster.get("time_limit")),
        partition=_text(cluster, "partition", "cluster."),
        prefer=_text(cluster, "prefer", "cluster."),
        gpus=_integer(cluster, "gpus"),
        comment=comment,
    )
    return Submission(request, recipe_wrapper, working_directory)
