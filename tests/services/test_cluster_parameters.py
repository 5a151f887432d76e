"""Reading a cluster.submission step's parameters into a job, as Diamond's recipes write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from zocalo.services.cluster_parameters import (
    BadSubmission,
    read_submission,
    time_limit_minutes,
)


def test_a_cryoem_style_step_becomes_a_job(monkeypatch):
    monkeypatch.setenv("ZOCALO_CONFIG", "/etc/zocalo.yaml")
    monkeypatch.setenv("ZOCALO_TRANSPORT", "amqp://rabbit/zocalo")
    submission = read_submission(
        {
            "cluster": {
                "commands": ["module load relion", 'run -r "$RECIPEWRAP"'],
                "job_name": "Class2D-EM",
                "cpus_per_task": 8,
                "tasks": "1",
                "nodes": 1,
                "gpus": 1,
                "memory_per_node": 96000,
                "time_limit": "3:00:00",
                "partition": "cs05r",
                "prefer": "",
                "environment": {"USER": "gda2", "PATH": "/bin"},
            },
            "wrapper": "/data/class2d/.recipewrap",
            "workingdir": "/data/class2d/",
        },
        comment="zocalo-1",
    )
    request = submission.request
    assert request.script == '#!/bin/bash\nmodule load relion\nrun -r "/data/class2d/.recipewrap"\n'
    assert (request.name, request.cpus_per_task, request.tasks, request.nodes) == (
        "Class2D-EM",
        8,
        1,
        1,
    )
    assert (request.gpus, request.memory_per_node, request.time_limit) == (1, 96000, 180)
    assert (request.partition, request.prefer) == ("cs05r", None)  # "" is unset
    assert request.environment == {
        "USER": "gda2",
        "PATH": "/bin",
        "ZOCALO_CONFIG": "/etc/zocalo.yaml",
        "ZOCALO_TRANSPORT": "amqp://rabbit/zocalo",
    }
    assert request.working_directory == "/data/class2d"
    assert request.standard_output == "/data/class2d/run.out"
    assert request.standard_error == "/data/class2d/run.err"
    assert request.comment == "zocalo-1"
    assert submission.recipe_wrapper == Path("/data/class2d/.recipewrap")


def test_a_script_of_its_own_keeps_its_interpreter_and_the_defaults_apply(monkeypatch):
    monkeypatch.setenv("PATH", "/opt/bin:/usr/bin")
    submission = read_submission(
        {
            "cluster": {"commands": "#!/bin/sh\ntrue"},
            "workingdir": "/w",
            "standard_output": "/logs/o",
        }
    )
    assert submission.request.script == "#!/bin/sh\ntrue"
    assert submission.request.name == "zocalo"
    assert submission.request.environment["PATH"] == "/opt/bin:/usr/bin"
    assert submission.request.standard_output == "/logs/o"
    assert submission.recipe_wrapper is None


@pytest.mark.parametrize(
    ("value", "minutes"),
    [("3:00:00", 180), ("0:00:30", 1), ("1-12:00:00", 2160), ("45:00", 45), (3600, 60), ("90", 2)],
)
def test_time_limits(value, minutes):
    assert time_limit_minutes(value) == minutes


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({"cluster": {"commands": "true"}, "workingdir": "run"}, "workingdir must be an absolute"),
        ({"cluster": {"commands": "true"}}, "workingdir must be an absolute path, not None"),
        ({"workingdir": "/w"}, "the step has no 'cluster' parameters"),
        ({"cluster": {"commands": []}, "workingdir": "/w"}, "cluster.commands must be a script"),
        (
            {"cluster": {"commands": "run $RECIPEWRAP"}, "workingdir": "/w"},
            "names no 'wrapper' file",
        ),
        (
            {"cluster": {"commands": "true", "tasks": "{tasks}"}, "workingdir": "/w"},
            "cluster.tasks must be a whole number, not '{tasks}'",
        ),
        (
            {"cluster": {"commands": "true", "time_limit": "3h"}, "workingdir": "/w"},
            "cluster.time_limit must be H:MM:SS",
        ),
        (
            {"cluster": {"commands": "true", "environment": ["A=1"]}, "workingdir": "/w"},
            "cluster.environment must be an object",
        ),
    ],
)
def test_parameters_that_describe_no_job_are_refused_with_the_reason(parameters, reason):
    with pytest.raises(BadSubmission, match=reason.replace("$", r"\$").replace("{", r"\{")):
        read_submission(parameters)
