"""The demo facility's own services: fan a data collection out into images, find the
spots on each image, sum a collection up.

The rest of the demo's recipe is shipped services (Dispatcher, Join, DatabaseWriter);
see ``recipes/mini-facility.json``. Each service here does one short thing and
raises :class:`~zocalo.errors.InvalidMessage` for a message it can never handle (the
runner dead-letters it at once, in one log line).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from zocalo import RecipeStep, Service, handler
from zocalo.errors import InvalidMessage
from zocalo.examples.diffraction import NotAnImage, draw, find_spots, image_path, read_pgm


def count_spots(image: int | str) -> int:
    """The spots :class:`FindSpots` finds on synthetic image number ``image`` (one it
    draws in memory when the message names no file)."""
    return find_spots(draw(str(image))[0])


def _number(parameters: dict[str, Any], name: str) -> int:
    try:
        return int(parameters[name])
    except (KeyError, TypeError, ValueError):
        raise InvalidMessage(
            f"step parameter {name!r} must be a whole number: {parameters.get(name)!r}"
        ) from None


class Images(Service):
    """Per data collection: one message per image, for the spot finders to share.

    The step's parameters say where the images are (as the Dispatcher's lookup found
    them): ``directory``, ``template`` (``image_#####.pgm``), ``first`` and ``last``.
    Each message is ``{"image": number, "file": path, "dispatched_at": time}``.
    """

    @handler("demo.images", prefetch=5)
    def split(self, step: RecipeStep, payload: Any) -> None:
        parameters = step.parameters
        first, last = _number(parameters, "first"), _number(parameters, "last")
        directory, template = parameters.get("directory"), parameters.get("template")
        if not isinstance(directory, str) or not isinstance(template, str):
            raise InvalidMessage(f"no image 'directory' and 'template': {parameters!r}")
        now = time.time()
        for number in range(first, last + 1):
            try:
                path = image_path(directory, template, number)
            except ValueError as error:
                raise InvalidMessage(str(error)) from None
            step.send({"image": number, "file": str(path), "dispatched_at": now})
        self.log.info("%d images of %s sent for spot finding", last - first + 1, directory)


class FindSpots(Service):
    """Per image: count its spots. The result is the message with ``"spots"`` added.

    The image is the PGM file the message names (``"file"``), else synthetic image
    number ``"image"``, drawn in memory. With the step parameter ``timestamp``, the
    result also carries the time the spots were found in that field.
    """

    @handler("demo.find_spots", prefetch=4)
    def find_spots(self, step: RecipeStep, payload: Any) -> None:
        if not isinstance(payload, dict) or "image" not in payload:
            raise InvalidMessage(f"a message to find spots names no image: {payload!r}")
        if "file" in payload:
            try:
                image = read_pgm(Path(payload["file"]))
            except NotAnImage as error:
                raise InvalidMessage(str(error)) from None
        else:
            image = draw(str(payload["image"]))[0]
        spots = find_spots(image)
        self.log.debug("image %s: %d spots", payload["image"], spots)
        result = {**payload, "spots": spots}
        stamp = step.parameters.get("timestamp")
        if isinstance(stamp, str) and stamp:
            result[stamp] = time.time()
        step.send(result)


class Summary(Service):
    """Per data collection: the images Join gathered, summed up for the database.

    Sends ``{"complete", "expected", "images", "spots", "spots_per_image", "times"}``;
    ``times`` holds when the collection was dispatched, when each image's spots were
    found, and when it was summed up (the demo's per-stage latencies).
    """

    @handler("demo.summary", prefetch=10)
    def summarise(self, step: RecipeStep, payload: Any) -> None:
        parts = payload.get("parts") if isinstance(payload, dict) else None
        if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
            raise InvalidMessage(f"a summary needs Join's parts: {payload!r}")
        spots = [int(part.get("spots", 0)) for part in parts]
        dispatched = [part["dispatched_at"] for part in parts if "dispatched_at" in part]
        summary = {
            "complete": bool(payload.get("complete")),
            "expected": payload.get("expected"),
            "images": len(parts),
            "spots": sum(spots),
            "spots_per_image": spots,
            "times": {
                "dispatched_at": min(dispatched, default=None),
                "found_at": [part["found_at"] for part in parts if "found_at" in part],
                "summarised_at": time.time(),
            },
        }
        self.log.info(
            "%s: %d of %s images, %d spots",
            payload.get("key"),
            len(parts),
            payload.get("expected"),
            sum(spots),
        )
        step.send(summary)
