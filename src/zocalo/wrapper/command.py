"""CommandWrapper: run any external program from a recipe step (``zocalo.wrap --wrap command``).

The step's ``parameters`` say what to run::

    "parameters": {
        "command": ["count_spots", "{image}", "--threshold", "{threshold}"],
        "workingdir": "/dls/i03/data/2024/cm1234-1/processing/run1",
        "environment": {"OMP_NUM_THREADS": "4"},
        "timeout": 3600,
        "output_files": ["spots.json"]
    }

``command``
    a list of arguments, or one string split as a shell would (no shell runs).
    ``{name}`` placeholders are filled from the step parameters and the payload
    (when it is an object), as recipe parameters are; unknown ones stay. A name
    both have is the parameter's: the payload is data from the step before, and
    must not replace what the recipe fixed (the program to run, its options).
``workingdir``
    where it runs (created if missing); default the current directory.
``environment``
    variables added to the wrapper's own environment.
``timeout``
    seconds; then the program's whole process group is stopped (SIGTERM, then
    SIGKILL after :data:`KILL_GRACE` seconds) and the run fails.
``output_files``
    files (relative to ``workingdir``) the program must leave behind; each one
    is reported on ``result-individual-file``, all on ``result-all-files``. A
    missing one fails the run.
``tail_lines``
    how many of the last stdout/stderr lines the report keeps (default 20).

Every line the program prints is logged as it comes, with the recipe ID. The
report (command, exit code, stdout/stderr tails, output files, seconds) goes to
``success`` or (as one line of text, python-zocalo's rule) ``failure``, and to
``completed`` in both cases.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from zocalo.errors import ZocaloError
from zocalo.recipe.parameters import substitute
from zocalo.wrapper.base import BaseWrapper

#: Seconds between SIGTERM and SIGKILL when the program must stop.
KILL_GRACE = 5.0
DEFAULT_TAIL_LINES = 20


class BadCommand(ZocaloError, ValueError):
    """Step parameters that do not describe a command to run."""


class CommandWrapper(BaseWrapper):
    """Runs the step's ``command`` and reports what came of it (see the module docstring)."""

    _logger_name = "zocalo.wrapper.command"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._process: subprocess.Popen[str] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    # -- what to run -----------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        return self.recwrap.parameters if self.recwrap is not None else {}

    def arguments(self) -> list[str]:
        """The command line, placeholders filled from the payload and the parameters."""
        parameters = self.parameters()
        command = parameters.get("command")
        if isinstance(command, str):
            try:
                command = shlex.split(command)
            except ValueError as error:
                raise BadCommand(f"parameter 'command' cannot be split: {error}") from None
        if not (
            isinstance(command, list)
            and command
            and all(isinstance(arg, str | int | float) for arg in command)
        ):
            raise BadCommand(
                "parameter 'command' must be a non-empty list of arguments or a string, "
                f"not {command!r}"
            )
        payload = self.recwrap.payload if self.recwrap is not None else None
        values = dict(payload) if isinstance(payload, Mapping) else {}
        # The recipe's own values win: data passed along must not pick the program.
        values.update((key, value) for key, value in parameters.items() if key != "command")
        return [str(substitute(str(arg), values, where="parameter 'command'")) for arg in command]

    def working_directory(self) -> Path:
        where = self.parameters().get("workingdir")
        return Path(where) if where else Path.cwd()

    def environment(self) -> dict[str, str]:
        extra = self.parameters().get("environment") or {}
        if not isinstance(extra, Mapping):
            raise BadCommand(f"parameter 'environment' must be an object, not {extra!r}")
        return {**os.environ, **{str(key): str(value) for key, value in extra.items()}}

    def timeout(self) -> float | None:
        value = self.parameters().get("timeout")
        if value in (None, ""):
            return None
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise BadCommand(f"parameter 'timeout' must be seconds, not {value!r}") from None
        if not seconds > 0:
            raise BadCommand(f"parameter 'timeout' must be positive, not {value!r}")
        return seconds

    def output_files(self) -> list[str]:
        files = self.parameters().get("output_files") or []
        if isinstance(files, str):
            files = [files]
        if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
            raise BadCommand(f"parameter 'output_files' must be a list of paths, not {files!r}")
        return files

    def tail_lines(self) -> int:
        value = self.parameters().get("tail_lines", DEFAULT_TAIL_LINES)
        try:
            return max(0, int(value))
        except (TypeError, ValueError):
            raise BadCommand(f"parameter 'tail_lines' must be a number, not {value!r}") from None

    # -- running it ------------------------------------------------------------
    def run(self) -> bool:
        try:
            arguments = self.arguments()
            cwd = self.working_directory()
            environment = self.environment()
            timeout = self.timeout()
            expected = self.output_files()
            keep = self.tail_lines()
        except BadCommand as error:
            return self._failed(str(error), {"error": str(error)})
        try:
            cwd.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = f"cannot create working directory {cwd}: {error.strerror or error}"
            return self._failed(reason, {"command": arguments, "error": reason})

        self.log.info("running %s in %s", shlex.join(arguments), cwd)
        began = time.monotonic()
        tails: dict[str, deque[str]] = {"stdout": deque(maxlen=keep), "stderr": deque(maxlen=keep)}
        try:
            exit_code, timed_out = self._execute(arguments, cwd, environment, timeout, tails)
        except OSError as error:
            reason = f"cannot run {arguments[0]!r}: {error.strerror or error}"
            return self._failed(reason, {"command": arguments, "error": reason})
        elapsed = round(time.monotonic() - began, 3)

        files = [self._describe_file(cwd, name) for name in expected]
        report = {
            "command": arguments,
            "workingdir": str(cwd),
            "exit_code": exit_code,
            "timed_out": timed_out,
            "stopped": self._stopping.is_set(),
            "elapsed": elapsed,
            "stdout": "\n".join(tails["stdout"]),
            "stderr": "\n".join(tails["stderr"]),
            "output_files": files,
        }
        self.result = report
        problem = self._what_went_wrong(exit_code, timed_out, timeout, files)
        if problem is not None:
            self.log.warning("%s", problem)
            self.failure_reason = problem
            return False
        self.log.info("%s finished in %.1f s", arguments[0], elapsed)
        present = [file for file in files if file["exists"]]
        for file in present:
            self.record_result_individual_file(_result_file(file))
        if present:
            self.record_result_all_files({"filelist": [_result_file(file) for file in present]})
        return True

    def stop(self) -> None:
        """Stop the program's whole process group (SIGTERM, SIGKILL after a grace)."""
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is not None:
            _stop_group(process)

    def _execute(
        self,
        arguments: list[str],
        cwd: Path,
        environment: dict[str, str],
        timeout: float | None,
        tails: dict[str, deque[str]],
    ) -> tuple[int, bool]:
        """Run to the end (or the timeout); returns (exit code, timed out)."""
        with self._lock:
            if self._stopping.is_set():
                return -int(signal.SIGTERM), False
            process = subprocess.Popen(
                arguments,
                cwd=cwd,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,  # its own process group: stopped as a whole
            )
            self._process = process
        readers = [
            threading.Thread(
                target=self._stream,
                args=(stream, name, tails[name]),
                name=f"zocalo-command-{name}",
                daemon=True,
            )
            for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))
        ]
        for reader in readers:
            reader.start()
        timed_out = False
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.log.warning("timed out after %g s: stopping its process group", timeout)
            _stop_group(process)
        for reader in readers:
            reader.join(KILL_GRACE)
        if any(reader.is_alive() for reader in readers):
            # The program ended, but something it started still holds its output open.
            self.log.warning("its process group outlived it: killing what is left")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            for reader in readers:
                reader.join()
        with self._lock:
            self._process = None
        return process.returncode, timed_out

    def _stream(self, stream: IO[str] | None, name: str, tail: deque[str]) -> None:
        """Log each line as it comes (with the recipe ID) and keep the last ones."""
        if stream is None:
            return
        with stream:
            for line in stream:
                line = line.rstrip("\n")
                tail.append(line)
                self.log.info("%s: %s", name, line)

    def _what_went_wrong(
        self, exit_code: int, timed_out: bool, timeout: float | None, files: list[dict[str, Any]]
    ) -> str | None:
        if self._stopping.is_set():
            return f"stopped before it finished (exit status {exit_code})"
        if timed_out:
            return f"timed out after {timeout:g} s and was stopped"
        if exit_code < 0:
            return f"killed by signal {_signal_name(-exit_code)}"
        if exit_code != 0:
            return f"exited with status {exit_code}"
        missing = [file["path"] for file in files if not file["exists"]]
        if missing:
            return f"finished, but left no {', '.join(missing)}"
        return None

    def _failed(self, reason: str, report: dict[str, Any]) -> bool:
        self.log.error("%s", reason)
        self.failure_reason = reason
        self.result = report
        return False

    @staticmethod
    def _describe_file(cwd: Path, name: str) -> dict[str, Any]:
        path = cwd / name
        try:
            size: int | None = path.stat().st_size
        except OSError:
            size = None
        return {"path": str(path), "exists": size is not None, "size": size}


def _result_file(file: Mapping[str, Any]) -> dict[str, Any]:
    """An output file as python-zocalo wrappers report one (``file_path``, ``file_name``)."""
    path = Path(file["path"])
    return {"file_path": str(path.parent), "file_name": path.name, "file_type": "result"}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM the process group, SIGKILL it if still there after :data:`KILL_GRACE`."""
    for signum, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
