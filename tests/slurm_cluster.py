"""A private single-node Slurm cluster for the tests (Slurm 22.05, Debian's packages).

Everything lives under one directory: ``slurm.conf`` (client commands find it
through ``SLURM_CONF``), a private munge key and socket, state, logs and free
ports, so it neither needs nor disturbs a cluster the machine may run. Daemons
run in the foreground, each in its own process group, and stop with it:
``scontrol shutdown``, then their groups are killed.

* ``munged`` first (a private key and socket), then ``slurmctld -i`` and ``slurmd``;
* the node claims 32 CPUs, 128 GiB and 4 GPUs (``config_overrides``; the GPUs are
  device files such as ``/dev/null``), so real recipes' requests (20 tasks, 64 GiB,
  4 GPUs) fit on a small machine; nothing is enforced (``task/none``, no cgroups);
* ``slurmrestd`` (OpenAPI v0.0.38) refuses to run as root: it runs as
  :data:`REST_USER` behind a Unix socket with ``rest_auth/local``, and jobs
  submitted through it run as that user, in directories from :meth:`job_directory`;
* no accounting: finished jobs are known for ``MinJobAge`` seconds, and ``sacct -c``
  reads the job completion file.

``scripts/install-slurm`` installs the packages (``make test`` runs it).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

#: The unprivileged user slurmrestd runs as, and REST jobs with it.
REST_USER = "nobody"
REST_API_VERSION = "v0.0.38"
#: Seconds the cluster may take to come up.
START_TIMEOUT = 60.0


#: The programs the cluster needs (scripts/install-slurm installs their packages).
PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmrestd", "sbatch", "scontrol")


def missing_packages() -> list[str]:
    """The programs this machine lacks to run the cluster."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [program for program in PROGRAMS if shutil.which(program, path=path) is None]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SlurmCluster:
    """Start on enter, stop (everything it started) on exit."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = Path(base or tempfile.mkdtemp(prefix="zocalo-slurm-"))
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.base / "slurm.conf"
        self.rest_socket = self.base / "rest" / "slurmrestd.socket"
        self.rest_user = pwd.getpwnam(REST_USER)
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    # -- what tests use ---------------------------------------------------------
    @property
    def environment(self) -> dict[str, str]:
        """Variables a client of this cluster needs (the sbatch/squeue/scancel backend)."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def rest_url(self) -> str:
        return f"unix://{self.rest_socket}"

    def job_directory(self, name: str) -> Path:
        """A fresh directory that jobs of either user (root, :data:`REST_USER`) can write."""
        path = self.base / "jobs" / name
        path.mkdir(parents=True)
        os.chown(path, self.rest_user.pw_uid, self.rest_user.pw_gid)
        path.chmod(0o777)
        return path

    def command(self, *arguments: str) -> str:
        """Run a Slurm client command against this cluster; its output."""
        done = subprocess.run(
            arguments,
            env={**os.environ, **self.environment},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    # -- lifecycle --------------------------------------------------------------
    def __enter__(self) -> SlurmCluster:
        try:
            self._prepare()
            self._start_daemons()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _prepare(self) -> None:
        for name in ("munge", "key", "state", "spool", "log", "rest", "jobs"):
            (self.base / name).mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        (self.base / "key").chmod(0o700)
        key = self.base / "key" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        os.chown(self.base / "rest", self.rest_user.pw_uid, self.rest_user.pw_gid)
        self.conf.write_text(self._configuration())
        # Four pretend GPUs (device files every machine has): jobs asking for GPUs run.
        devices = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")
        (self.base / "gres.conf").write_text(
            "".join(f"NodeName={self.node} Name=gpu File={device}\n" for device in devices)
        )

    def _configuration(self) -> str:
        base = self.base
        return f"""\
ClusterName=zocalotest
SlurmctldHost={self.node}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge/munge.socket
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=100
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={base}/log/jobcomp.txt
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=2
MessageTimeout=2
GresTypes=gpu
NodeName={self.node} CPUs=32 RealMemory=131072 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""

    def _start_daemons(self) -> None:
        base = self.base
        self._start(
            "munged",
            "/usr/sbin/munged",
            "--force",
            "--foreground",
            f"--socket={base}/munge/munge.socket",
            f"--key-file={base}/key/munge.key",
            f"--pid-file={base}/munged.pid",
            f"--log-file={base}/log/munged.log",
            f"--seed-file={base}/key/munged.seed",
        )
        self._wait_for(lambda: (base / "munge" / "munge.socket").exists(), "munged")
        self._start("slurmctld", "slurmctld", "-D", "-i")
        self._start("slurmd", "slurmd", "-D")
        self._wait_for(self._node_idle, "the node to be idle")
        self._start(
            "slurmrestd",
            "slurmrestd",
            "-u",
            REST_USER,
            "-a",
            "rest_auth/local",
            "-s",
            f"openapi/{REST_API_VERSION}",
            f"unix:{self.rest_socket}",
        )
        self._wait_for(self.rest_socket.exists, "slurmrestd")

    def _start(self, name: str, *command: str) -> None:
        environment = {**os.environ, **self.environment}
        environment.pop("SLURM_JWT", None)  # set, slurmrestd would insist on auth/jwt
        with (self.base / "log" / f"{name}.out").open("wb") as log:
            self._processes[name] = subprocess.Popen(
                command,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.base,
            )

    def _node_idle(self) -> bool:
        try:
            return self.command("sinfo", "-h", "-n", self.node, "-o", "%T").strip() == "idle"
        except subprocess.CalledProcessError:
            return False

    def _wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pause = threading.Event()
        while not condition():
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}); {self._log(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            pause.wait(0.1)

    def _log(self, name: str) -> str:
        try:
            return (self.base / "log" / f"{name}.out").read_text()[-2000:]
        except OSError:
            return "(no log)"

    # -- stopping (also what tests use to take Slurm away) ------------------------
    def stop_controller(self) -> None:
        """Stop slurmctld alone: Slurm is unreachable until :meth:`start_controller`."""
        self._kill("slurmctld")

    def start_controller(self) -> None:
        """Start slurmctld again, keeping its state (jobs submitted before are known)."""
        self._start("slurmctld", "slurmctld", "-D")
        self._wait_for(self._node_idle_or_busy, "slurmctld to answer again")

    def _node_idle_or_busy(self) -> bool:
        try:
            return bool(self.command("sinfo", "-h", "-o", "%T").strip())
        except subprocess.CalledProcessError:
            return False

    def stop(self) -> None:
        """Cancel every job, shut the daemons down, kill their process groups, clean up."""
        if "slurmctld" in self._processes and self._processes["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError, RuntimeError):
                self.command("scancel", "--full", "--partition", "debug")
                # Their job steps end before slurmd does, so none outlives the cluster.
                self._wait_for(lambda: not self.command("squeue", "-h"), "jobs to end")
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.command("scontrol", "shutdown")
        for name in ("slurmrestd", "slurmd", "slurmctld", "munged"):
            self._kill(name)
        shutil.rmtree(self.base, ignore_errors=True)

    def _kill(self, name: str) -> None:
        process = self._processes.pop(name, None)
        if process is None:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
            try:
                process.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue
