"""The recipe hop both ceiling forwarders make (``aiopika_ceiling.py``, ``pika_ceiling.py``).

No validation, no error handling: the least a forwarder must do with a recipe message.
"""

from __future__ import annotations

import json
from typing import Any


def next_hop(body: bytes) -> tuple[str, bytes]:
    """The queue of the next recipe step and the message body for it."""
    message: dict[str, Any] = json.loads(body)
    recipe = message["recipe"]
    pointer = message["recipe-pointer"]
    output = recipe[str(pointer)]["output"]
    target = output[0] if isinstance(output, list) else output
    message["recipe-path"] = [*message["recipe-path"], pointer]
    message["recipe-pointer"] = target
    return recipe[str(target)]["queue"], json.dumps(message).encode()
