"""BaseWrapper: the class a long job's wrapper derives from, as in python-zocalo.

A wrapper implements :meth:`BaseWrapper.run` (return True on success) and
reports through its recipe step's named output channels:

=================================  ==========================
method                             channel
=================================  ==========================
``prepare(p)``                     ``starting``
``update(p)``                      ``updates``
``success(p)``                     ``success``
``failure(p)``                     ``failure`` (sent as text)
``done(p)``                        ``completed``
``record_result_individual_file``  ``result-individual-file``
``record_result_all_files``        ``result-all-files``
=================================  ==========================

Each is a no-op without a recipe, or when the step has no such channel (most
recipes name only some), as in python-zocalo; each send is published at once.
``zocalo.wrap`` calls ``prepare``, ``run``, ``success``/``failure`` and
``done`` in turn (see :mod:`zocalo.wrapper.wrap`).

Beyond python-zocalo: a wrapper may leave a structured report in ``result``
(sent with ``success`` and ``completed`` instead of the plain text), a
one-line ``failure_reason`` (sent with ``failure``), and implement
:meth:`stop` to end its work early (SIGTERM, a cancelled job).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from zocalo.errors import InvalidMessage

if TYPE_CHECKING:
    from zocalo.config import SiteConfiguration
    from zocalo.wrapper.live_step import LiveRecipeWrapper
    from zocalo.wrapper.status import WrapperStatus


class _RecipeLogger(logging.LoggerAdapter[logging.Logger]):
    """Puts the recipe ID and step on every line, whatever thread logs it."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class BaseWrapper:
    """Runs one long job for one recipe step; subclasses implement :meth:`run`."""

    #: Logger name; lines logged through ``self.log`` carry the recipe ID.
    _logger_name = "zocalo.wrapper"

    def __init__(self, *args: Any, environment: dict[str, Any] | None = None, **kwargs: Any):
        self._environment: dict[str, Any] = environment if environment is not None else {}
        self._log_fields: dict[str, Any] = {}
        self.log = _RecipeLogger(logging.getLogger(self._logger_name), self._log_fields)
        self.recwrap: LiveRecipeWrapper | None = None
        #: Set by zocalo.wrap: the status broadcaster (``status_thread.taskname`` may change).
        self.status_thread: WrapperStatus | None = None
        #: A structured report, sent with ``success`` and ``completed`` when set.
        self.result: Any = None
        #: Why ``run`` returned False, sent with ``failure`` when set.
        self.failure_reason: str | None = None

    @property
    def config(self) -> SiteConfiguration | None:
        """The site configuration ``zocalo.wrap`` was given (``environment["config"]``)."""
        return self._environment.get("config")

    def set_recipe_wrapper(self, recwrap: LiveRecipeWrapper) -> None:
        """Attach the recipe step to report through; it must carry a recipe ID."""
        if recwrap.recipe_id is None:
            raise InvalidMessage(
                f"{recwrap.describe()}: the recipe environment has no ID, which a wrapper "
                "needs to label its log lines (the Dispatcher sets one)"
            )
        self.recwrap = recwrap
        self._log_fields["recipe_ID"] = recwrap.recipe_id
        self._log_fields["recipe_step"] = recwrap.recipe_pointer

    # -- the job -----------------------------------------------------------
    def run(self) -> bool:
        """Do the work; True on success. Raising counts as failure (with the error's text)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")

    def stop(self) -> None:
        """Asked to end early (SIGTERM, a cancelled job): stop the work, soon. Thread safe.

        ``run`` should then return (False). The default does nothing.
        """

    # -- reporting ---------------------------------------------------------
    def prepare(self, payload: Any = "") -> None:
        self._send("starting", payload)

    def update(self, payload: Any = "") -> None:
        self._send("updates", payload)

    def success(self, payload: Any = "") -> None:
        self._send("success", payload)

    def failure(self, payload: Any = "") -> None:
        self._send("failure", str(payload))

    def done(self, payload: Any = "") -> None:
        self._send("completed", payload)

    def record_result_individual_file(self, payload: Any = "") -> None:
        self._send("result-individual-file", payload)

    def record_result_all_files(self, payload: Any = "") -> None:
        self._send("result-all-files", payload)

    def _send(self, channel: str, payload: Any) -> None:
        if self.recwrap is None or not self.recwrap.has_channel(channel):
            self.log.debug("no %r output: not sent", channel)
            return
        self.recwrap.send_to(channel, payload)
