"""A recipe's step graph for people: terminal text, Mermaid, or Graphviz dot.

``zocalo recipe show`` prints these. Every edge is drawn with what makes it
one: a plain output, a named output channel (``success``), a step's error
branch, or the recipe-wide ``error`` entry. The recipe must be valid (every
link names a step).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from zocalo.recipe.model import Recipe

FORMATS = ("text", "mermaid", "dot")


@dataclass(frozen=True)
class Edge:
    """One link: ``source`` (a step id, ``start`` or ``error``) to step ``target``."""

    source: int | str
    target: int
    #: The output channel (``None``: the plain output), or ``error`` for an error branch.
    label: str | None = None
    error: bool = False


def _flatten(links: Any, channel: str | None) -> Iterator[tuple[int, str | None]]:
    """(target, channel) for each step a link value names (channels of nested dicts joined)."""
    if links is None:
        return
    if isinstance(links, dict):
        for name, sub in links.items():
            yield from _flatten(sub, f"{channel}.{name}" if channel else str(name))
    elif isinstance(links, list | tuple):
        for link in links:
            yield int(link), channel
    else:
        yield int(links), channel


def edges(recipe: Recipe) -> list[Edge]:
    """Every link of ``recipe``: start entries, each step's outputs and errors, top-level error."""
    found = [Edge("start", int(target)) for target, _payload in recipe.start or ()]
    for step_id, step in recipe.steps.items():
        found += [Edge(step_id, t, channel) for t, channel in _flatten(step.get("output"), None)]
        found += [
            Edge(step_id, target, "error", error=True)
            for target, _ in _flatten(step.get("error"), None)
        ]
    found += [Edge("error", int(target), error=True) for target in recipe.error or ()]
    return found


def _destination(step: dict[str, Any]) -> str:
    parts = [f"{kind} {step[kind]}" for kind in ("queue", "topic") if step.get(kind)]
    if step.get("transport-delay"):
        parts.append(f"delay {step['transport-delay']} s")
    return ", ".join(parts) or "no queue or topic"


def _title(step_id: int, step: dict[str, Any]) -> str:
    service = step.get("service")
    return f"{step_id}: {service}" if service else str(step_id)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), default=str)


def as_text(recipe: Recipe) -> str:
    """The graph for a terminal: each step, where it sends, and its links."""
    links = edges(recipe)
    lines = []
    for target, payload in recipe.start or ():
        lines.append(f"start -> {target}  payload {_compact(payload)}")
    for step_id, step in recipe.steps.items():
        lines.append(f"{_title(step_id, step)}  [{_destination(step)}]")
        if step.get("parameters"):
            lines.append(f"    parameters {_compact(step['parameters'])}")
        for edge in links:
            if edge.source == step_id:
                kind = "error" if edge.error else "output"
                label = f" {edge.label}" if edge.label and not edge.error else ""
                lines.append(f"    {kind}{label} -> {edge.target}")
    for edge in links:
        if edge.source == "error":
            lines.append(f"error -> {edge.target}")
    return "\n".join(lines)


def _node(source: int | str) -> str:
    return f"s{source}" if isinstance(source, int) else source


def _quoted(text: str) -> str:
    """Text inside a double-quoted Mermaid or dot label."""
    return text.replace("\\", "\\\\").replace('"', "'")


def as_mermaid(recipe: Recipe) -> str:
    """A Mermaid ``flowchart`` (error links dotted)."""
    lines = ["flowchart LR", "    start((start))"]
    if recipe.error:
        lines.append("    error((error))")
    for step_id, step in recipe.steps.items():
        box = _quoted(f"{_title(step_id, step)}<br/>{_destination(step)}")
        lines.append(f'    s{step_id}["{box}"]')
    for edge in edges(recipe):
        source, target = _node(edge.source), _node(edge.target)
        label = _quoted(edge.label) if edge.label else None
        if edge.error:
            arrow = f"-. {label} .->" if label else "-.->"
        else:
            arrow = f'-- "{label}" -->' if label else "-->"
        lines.append(f"    {source} {arrow} {target}")
    return "\n".join(lines)


def as_dot(recipe: Recipe) -> str:
    """A Graphviz ``digraph`` (error links dashed)."""
    lines = ["digraph recipe {", "    rankdir=LR;", "    start [shape=circle];"]
    if recipe.error:
        lines.append("    error [shape=circle];")
    for step_id, step in recipe.steps.items():
        label = f"{_quoted(_title(step_id, step))}\\n{_quoted(_destination(step))}"
        lines.append(f'    s{step_id} [shape=box, label="{label}"];')
    for edge in edges(recipe):
        attributes = []
        if edge.label:
            attributes.append(f'label="{_quoted(edge.label)}"')
        if edge.error:
            attributes.append("style=dashed")
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"    {_node(edge.source)} -> {_node(edge.target)}{suffix};")
    lines.append("}")
    return "\n".join(lines)


def render(recipe: Recipe, format: str = "text") -> str:
    """The graph of a valid ``recipe`` in ``format`` (one of :data:`FORMATS`)."""
    renderers = {"text": as_text, "mermaid": as_mermaid, "dot": as_dot}
    if format not in renderers:
        raise ValueError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    return renderers[format](recipe)
