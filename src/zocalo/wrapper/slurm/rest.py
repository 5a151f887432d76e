"""HTTP to slurmrestd: over TCP (``http://host:6820``, ``https://...``) or a Unix socket
(``unix:///run/slurmrestd.socket``), with python-zocalo's authentication headers.

``user`` and ``user_token`` become ``X-SLURM-USER-NAME`` and ``X-SLURM-USER-TOKEN``.
A ``user_token`` naming an existing file is read from it at each request, so a
token rotated on disk is picked up (python-zocalo reads the file once); anything
else is the token itself. A Unix socket with ``rest_auth/local`` needs neither.

Every answer is JSON with an ``errors`` list; a refused connection, a timeout or
an answer that is not slurmrestd's is :class:`SlurmUnreachable`.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from zocalo.wrapper.backends.base import JobRefused
from zocalo.wrapper.slurm.errors import SlurmError, SlurmUnreachable

#: Seconds one request may take.
REQUEST_TIMEOUT = 30.0


class _UnixConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket (slurmrestd's ``unix:/path`` listener)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class RestClient:
    """Requests to one slurmrestd; a fresh connection each (requests are few and slow)."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        user_token: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "unix"):
            raise SlurmError(
                f"slurm url {url!r}: expected http://host:port, https://host:port or "
                "unix:///path/to/slurmrestd.socket"
            )
        self.url = url
        self._parts = parts
        self.user = user
        self.user_token = user_token
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        if self._parts.scheme == "unix":
            return _UnixConnection(self._parts.path, self.timeout)
        if self._parts.scheme == "https":
            return http.client.HTTPSConnection(self._parts.netloc, timeout=self.timeout)
        return http.client.HTTPConnection(self._parts.netloc, timeout=self.timeout)

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self.user:
            headers["X-SLURM-USER-NAME"] = self.user
        token = self._token()
        if token:
            headers["X-SLURM-USER-TOKEN"] = token
        return headers

    def _token(self) -> str | None:
        if not self.user_token:
            return None
        path = Path(self.user_token).expanduser()
        if path.is_file():
            try:
                return path.read_text().strip()
            except OSError as error:
                raise SlurmError(f"slurm user_token file {path}: {error.strerror}") from None
        return self.user_token

    def request(self, method: str, endpoint: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """``method`` on ``endpoint`` (``slurm/v0.0.38/jobs``); the HTTP status and the JSON."""
        prefix = self._parts.path.rstrip("/") if self._parts.scheme != "unix" else ""
        target = f"{prefix}/{endpoint.lstrip('/')}"
        data = json.dumps(body).encode() if body is not None else None
        connection = self._connection()
        where = f"slurmrestd at {self.url}"
        try:
            connection.request(method, target, body=data, headers=self.headers())
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as error:
            raise SlurmUnreachable(f"{where}: {error or type(error).__name__}") from None
        finally:
            connection.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            text = raw[:200].decode(errors="replace").strip()
            if status in (401, 403):
                raise SlurmError(f"{where} refused our credentials (HTTP {status}): {text}")
            raise SlurmUnreachable(f"{where} answered HTTP {status}, not JSON: {text!r}")
        return status, answer


def errors_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``errors`` slurmrestd reported (a list of ``{error, error_number, description}``)."""
    errors = answer.get("errors") or []
    return [error for error in errors if isinstance(error, dict)]


def describe_errors(errors: list[dict[str, Any]]) -> str:
    texts = []
    for error in errors:
        text = error.get("description") or error.get("error") or "error"
        if error.get("error") and error.get("error") != text:
            text = f"{error['error']}: {text}"
        if error.get("error_number"):
            text += f" (error {error['error_number']})"
        texts.append(text)
    return "; ".join(texts) or "no reason given"


#: Slurm's error numbers for "the controller did not answer" (communication and socket
#: errors: ``SLURM_COMMUNICATIONS_*``, ``SLURM_PROTOCOL_*``, ``SLURM_SOCKET_*``...), and
#: -1, what slurmrestd 22.05 answers when its own call to the controller failed
#: ("Unspecified error: Unable to find JobId=1" while slurmctld is down).
_UNREACHABLE_NUMBERS = (range(1000, 2000), range(5000, 6000), range(-1, 0))
#: ... and the texts that say so when no number does.
_UNREACHABLE_TEXTS = ("unable to contact slurm controller", "connect failure", "timed out")
#: ``ESLURM_INVALID_JOB_ID``: Slurm does not know the job (any more).
INVALID_JOB_ID = 2017
#: ``ESLURM_ALREADY_DONE``: the job has ended already.
ALREADY_DONE = 2021


def _number(error: dict[str, Any]) -> int | None:
    number = error.get("error_number", error.get("error_code"))
    return number if isinstance(number, int) else None


def unreachable(errors: list[dict[str, Any]]) -> bool:
    for error in errors:
        number = _number(error)
        if number is not None and any(number in numbers for numbers in _UNREACHABLE_NUMBERS):
            return True
        text = f"{error.get('error', '')} {error.get('description', '')}".lower()
        if any(marker in text for marker in _UNREACHABLE_TEXTS):
            return True
    return False


def unknown_job(answer: dict[str, Any]) -> bool:
    """True when slurmrestd says the job id names no job it knows."""
    return any(
        _number(error) == INVALID_JOB_ID or "invalid job id" in str(error.get("error", "")).lower()
        for error in errors_of(answer)
    )


def raise_for(
    status: int, answer: dict[str, Any], what: str, *, ended_is_fine: bool = False
) -> None:
    """Raise what an answer means: SlurmUnreachable (try later) or JobRefused (don't)."""
    errors = errors_of(answer)
    if ended_is_fine:
        errors = [error for error in errors if _number(error) != ALREADY_DONE]
    if not errors and status < 400:
        return
    if unreachable(errors) or (not errors and status >= 500):
        raise SlurmUnreachable(f"{what}: {describe_errors(errors) if errors else f'HTTP {status}'}")
    if status in (401, 403):
        raise SlurmError(f"{what}: credentials refused (HTTP {status}): {describe_errors(errors)}")
    raise JobRefused(f"{what}: {describe_errors(errors) if errors else f'HTTP {status}'}")
