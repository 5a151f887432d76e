"""Synthetic diffraction-like images, their files, and a spot finder for them (pure Python).

The demo's simulated detector draws each image from a seed: a noisy background that
is brighter towards the beam centre, a faint solvent ring, the beam stop's shadow,
and a number of well separated Bragg-like spots (small Gaussian blobs). The spot
finder knows nothing of how an image was made: it estimates the background level and
its noise (median and median absolute deviation), keeps the pixels far above it, and
counts the connected groups of them. Images are small (64 x 64, 8 bits) and held in
a ``bytes`` object, so no array library is needed; on disk each is a binary PGM file
(``P5``), which image viewers open as it is.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from pathlib import Path

from zocalo.errors import InvalidMessage

#: Width and height of the demo's images, in pixels.
SIZE = 64
#: A pixel belongs to a spot when it is this many noise deviations above the background.
SIGMAS = 10.0
#: Fewer pixels than this above the threshold make no spot (a hot pixel, a noise spike).
MIN_PIXELS = 2
#: How many spots an image may hold, fewest and most.
SPOTS_PER_IMAGE = (3, 24)


class NotAnImage(InvalidMessage):  # an InvalidMessage is a ValueError too
    """A file that is not an 8-bit binary PGM image."""


@dataclass(frozen=True)
class Image:
    """An 8-bit greyscale image, row by row."""

    width: int
    height: int
    pixels: bytes

    def __post_init__(self) -> None:
        if len(self.pixels) != self.width * self.height:
            raise NotAnImage(
                f"{self.width} x {self.height} pixels make {self.width * self.height} bytes, "
                f"not {len(self.pixels)}"
            )


def draw(seed: int | str, size: int = SIZE) -> tuple[Image, int]:
    """The synthetic image of ``seed`` and the number of spots drawn on it."""
    rng = random.Random(seed)
    noise = rng.choices(_NOISE, k=size * size)
    values = [level + jitter for level, jitter in zip(_background(size), noise, strict=True)]
    spots = _place_spots(rng, size)
    for sx, sy in spots:
        height = rng.uniform(90, 220)
        width = rng.uniform(0.75, 1.05)
        for y in range(max(0, int(sy) - 3), min(size, int(sy) + 5)):
            for x in range(max(0, int(sx) - 3), min(size, int(sx) + 5)):
                distance2 = (x - sx) ** 2 + (y - sy) ** 2
                brighter = values[y * size + x] + height * math.exp(-distance2 / (2 * width**2))
                values[y * size + x] = min(255, round(brighter))
    return Image(size, size, bytes(values)), len(spots)


#: Pixel noise to draw from: Gaussian, deviation 2, cut at 7 (so no pixel goes below 0).
_NOISE = tuple(max(-7, min(7, round(random.Random(0).gauss(0, 2.0)))) for _ in range(4096))


@functools.cache
def _background(size: int) -> tuple[int, ...]:
    """The noiseless background: brighter towards the centre, a solvent ring, the beam
    stop's shadow (never darker than the noise can reach below)."""
    centre, beam_stop, ring = (size - 1) / 2, _beam_stop(size), size * 0.36
    levels = []
    for y in range(size):
        for x in range(size):
            r = math.hypot(x - centre, y - centre)
            level = 14 + 12 * math.exp(-((r / (size / 3)) ** 2))
            level += 6 * math.exp(-(((r - ring) / 1.5) ** 2))
            levels.append(7 if r < beam_stop else round(level))
    return tuple(levels)


def _beam_stop(size: int) -> float:
    return size / 16


def _place_spots(rng: random.Random, size: int) -> list[tuple[float, float]]:
    """Spot centres, at least 7 pixels apart, off the edges and the beam stop."""
    centre, beam_stop = (size - 1) / 2, _beam_stop(size)
    wanted = rng.randint(*SPOTS_PER_IMAGE)
    placed: list[tuple[float, float]] = []
    for _ in range(wanted * 20):
        if len(placed) == wanted:
            break
        x, y = rng.uniform(3, size - 4), rng.uniform(3, size - 4)
        if math.hypot(x - centre, y - centre) < beam_stop + 3:
            continue
        if all(math.hypot(x - px, y - py) >= 7 for px, py in placed):
            placed.append((x, y))
    return placed


def find_spots(image: Image) -> int:
    """How many spots ``image`` holds: connected groups (8 neighbours) of at least
    ``MIN_PIXELS`` pixels that stand ``SIGMAS`` noise deviations above the background."""
    threshold = _threshold(image)
    width, height = image.width, image.height
    bright = {index for index, value in enumerate(image.pixels) if value > threshold}
    spots = 0
    while bright:
        group = [bright.pop()]
        members = 0
        while group:
            index = group.pop()
            members += 1
            y, x = divmod(index, width)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    neighbour = ny * width + nx
                    if 0 <= ny < height and 0 <= nx < width and neighbour in bright:
                        bright.remove(neighbour)
                        group.append(neighbour)
        if members >= MIN_PIXELS:
            spots += 1
    return spots


def spot_intensity(image: Image) -> int:
    """The summed brightness of the spots' pixels above the background (what integrating
    the image's reflections would measure; the demo's wrapped job reports it)."""
    background, threshold = _median(image.pixels), _threshold(image)
    return round(sum(value - background for value in image.pixels if value > threshold))


def _threshold(image: Image) -> float:
    """The brightness a spot's pixel exceeds: ``SIGMAS`` noise deviations above the
    background."""
    return _median(image.pixels) + SIGMAS * _noise(image)


def _median(values: bytes | list[int]) -> float:
    return sorted(values)[len(values) // 2]


def _noise(image: Image) -> float:
    """The pixel noise: from the differences of horizontal neighbours, which a background
    that changes slowly across the image leaves alone (and spots, being few, barely move
    their median absolute value)."""
    width, pixels = image.width, image.pixels
    steps = [
        abs(pixels[index + 1] - pixels[index])
        for index in range(len(pixels) - 1)
        if (index + 1) % width
    ]
    # For Gaussian noise of deviation s, |a - b| has the median 0.954 s.
    return max(_median(steps) / 0.954, 1.0)


# -- files -----------------------------------------------------------------------


def write_pgm(path: Path, image: Image) -> None:
    """Write ``image`` as a binary PGM file; it appears whole (written beside, renamed)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(b"P5\n%d %d\n255\n" % (image.width, image.height) + image.pixels)
    partial.replace(path)


def read_pgm(path: Path) -> Image:
    """Read a binary 8-bit PGM file (:class:`NotAnImage` if it is none)."""
    data = path.read_bytes()
    fields: list[bytes] = []
    position = 0
    while len(fields) < 4:
        while position < len(data) and (data[position : position + 1].isspace()):
            position += 1
        if data[position : position + 1] == b"#":  # a comment, to the end of its line
            position = data.find(b"\n", position) + 1 or len(data)
            continue
        start = position
        while position < len(data) and not data[position : position + 1].isspace():
            position += 1
        if start == position:
            raise NotAnImage(f"{path} ends inside its PGM header")
        fields.append(data[start:position])
    magic, width, height, maximum = fields
    if magic != b"P5" or not (width.isdigit() and height.isdigit() and maximum.isdigit()):
        raise NotAnImage(f"{path} is not a binary PGM image (it starts {data[:16]!r})")
    if int(maximum) > 255:
        raise NotAnImage(f"{path} has {maximum.decode()} grey levels; 8-bit images only")
    pixels = data[position + 1 :]  # one whitespace byte ends the header
    try:
        return Image(int(width), int(height), pixels)
    except NotAnImage as error:
        raise NotAnImage(f"{path}: {error}") from None


def image_path(directory: str | Path, template: str, number: int) -> Path:
    """The file of image ``number``: the template's run of ``#`` is the zero-padded number
    (ISPyB's file templates, e.g. ``image_#####.pgm``)."""
    hashes = template.count("#")
    if hashes == 0 or "#" * hashes not in template:
        raise ValueError(f"file template {template!r} needs one run of '#' for the image number")
    return Path(directory) / template.replace("#" * hashes, f"{number:0{hashes}d}")
