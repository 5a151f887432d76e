"""The demo's integration program: ``python -m zocalo.examples.integrate DIR TEMPLATE FIRST LAST``.

It knows nothing of Zocalo (a wrapper runs it, :mod:`zocalo.examples.integration`):
it reads the data collection's images and prints one JSON line,
``{"intensity": ..., "strongest_image": ...}``: the spots' summed intensity above
the background, and the image with the most.
"""

from __future__ import annotations

import json
import sys

from zocalo.examples.diffraction import image_path, read_pgm, spot_intensity


def integrate(directory: str, template: str, first: int, last: int) -> dict[str, int]:
    """The spots' summed intensity over the images, and the image with the most."""
    intensities = {
        number: spot_intensity(read_pgm(image_path(directory, template, number)))
        for number in range(first, last + 1)
    }
    strongest = max(intensities, key=lambda number: intensities[number])
    return {"intensity": sum(intensities.values()), "strongest_image": strongest}


def main(arguments: list[str]) -> int:
    if len(arguments) != 4 or not (arguments[2].isdigit() and arguments[3].isdigit()):
        print("usage: python -m zocalo.examples.integrate DIR TEMPLATE FIRST LAST", file=sys.stderr)
        return 2
    directory, template, first, last = arguments
    print(json.dumps(integrate(directory, template, int(first), int(last))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
