"""The import graph of ``src/zocalo``: no loops, and each layer imports only those below it.

The graph is read from the source with :mod:`ast`, so nothing is imported.

What counts as an import of module A by module B, and when:

* a module-level ``import``/``from ... import`` in B, including those inside
  ``try``/``if`` blocks and class bodies (they run when B is imported). ``from
  pkg import name`` counts as importing ``pkg.name`` when that is a module.
  Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``, so those
  packages count too (unless B is inside them: a package's own modules may be
  imported by its ``__init__``);
* an import under ``if TYPE_CHECKING:`` (it never runs, but B's types depend on A);
* an import inside a function body (it runs on first call). Such a late import
  is fine to defer a heavy dependency (pydantic, PyYAML, a broker client, a
  service's science code), but not to dodge a loop: a loop closed by a late or
  type-only import is still two modules that need each other.

Rules, on all three kinds alike:

a. no import loops: no two modules reach each other through imports, and no
   two packages (``zocalo.service``, ``zocalo.monitor``, ...) either;
b. layers: no module imports a module of a higher layer than its own (LAYERS,
   bottom first).

(Imports by name at run time, ``importlib.import_module(...)``, are how the
registry finds a transport, discovery a service and the worker its runner hooks:
plugins named in data, not dependencies of the code, so they are not counted.)
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "zocalo"

#: The layers, bottom first; a module belongs to the longest prefix that matches
#: its name (``zocalo`` matches only the package's ``__init__``). Modules of one
#: layer may import each other (loops aside).
#: Adapted from ARCHITECTURE.md to the packages that exist today:
#:
#: * ``logs`` (the logging plan, the recipe-ID log context) and ``log_handlers``
#:   (GELF, the non-blocking queue) sit just above ``config``: the runner logs
#:   with the recipe context, and the plan is built from the site configuration.
#: * ``submission`` (building a job request) and ``replies`` (the caller's side of a
#:   job's replies) need recipes and a transport, and nothing of services: they sit
#:   with ``recipe``'s users, below ``service``.
#: * ``examples`` are services, ``launch`` runs services in threads/processes and
#:   ``demo`` runs the examples so launched: all three sit with ``services``.
#: * ``zocalo`` itself (its ``__init__`` only: the public face) re-exports names
#:   of ``service``, ``recipe``, ``transport``, ``submission`` and ``errors``, so it sits above
#:   them; shipped services and the CLI may import from it.
#: * runner middleware (``service.middleware``) sits inside ``service``, not above it:
#:   the runner builds its default middleware, and middleware knows the runner only
#:   through the ``Runner`` protocol of ``service.middleware.base`` (no loop). What
#:   sits higher hooks in the same way (``monitor.metrics``).
#: * ``rabbitmq_admin`` (the management API) reads the command-queue prefix from
#:   ``service.commands`` and the delay levels from the RabbitMQ transport, and
#:   nothing higher: it sits just above the package root, below ``dlq`` and
#:   ``services``, which list a RabbitMQ vhost's dead-letter queues through it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("zocalo.errors", "zocalo.private_files"),
    ("zocalo.config",),
    ("zocalo.logs", "zocalo.log_handlers"),
    ("zocalo.transport",),
    ("zocalo.recipe",),
    ("zocalo.submission", "zocalo.replies"),
    ("zocalo.service",),
    (PACKAGE,),
    ("zocalo.rabbitmq_admin",),
    ("zocalo.dlq", "zocalo.wrapper"),
    ("zocalo.services", "zocalo.examples", "zocalo.launch", "zocalo.demo"),
    ("zocalo.monitor",),
    ("zocalo.cli",),
)


@dataclass
class Imports:
    """The imports of one module, by when they run."""

    module_level: set[str] = field(default_factory=set)
    type_checking: set[str] = field(default_factory=set)
    in_functions: set[str] = field(default_factory=set)

    def all(self) -> set[str]:
        return self.module_level | self.type_checking | self.in_functions


def module_files(source: Path = SOURCE) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in sorted((source / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(source).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]
) -> list[str]:
    """The dotted names an import statement loads: ``from p import n`` loads ``p.n``
    when that is a module, else ``p`` (for its attribute ``n``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        origin = ".".join([*base, node.module] if node.module else base)
    else:
        origin = node.module or ""
    return [
        f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
        for alias in node.names
    ]


def imports_of(module: str, path: Path, modules: set[str]) -> Imports:
    """The package-internal modules ``module`` imports, sorted by when the import runs."""
    found = Imports()
    is_package = path.name == "__init__.py"

    def targets(node: ast.Import | ast.ImportFrom) -> set[str]:
        names = _imported_names(node, module, is_package, modules)
        result = set()
        for name in names:
            # ``import a.b.c`` / ``from a.b import c``: the deepest module named,
            # plus the packages whose ``__init__`` the import runs on the way.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if not name or name == module:
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                step = ".".join(parts[:depth])
                inside = (module + ".").startswith(step + ".")
                if step == name or (step != PACKAGE and not inside):
                    result.add(step)
        return result

    def visit(nodes: list[ast.stmt], where: set[str]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                where |= targets(node)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        found.in_functions.update(targets(inner))
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.body, found.type_checking)
                visit(node.orelse, where)
            else:  # if/try/with/for/class: their blocks run at import too
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child], where)
                    elif isinstance(child, ast.ExceptHandler):
                        visit(child.body, where)

    visit(ast.parse(path.read_text(), str(path)).body, found.module_level)
    return found


def import_graph(source: Path = SOURCE) -> dict[str, Imports]:
    files = module_files(source)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def layer_of(module: str) -> int:
    best, best_length = None, -1
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            within = module.startswith(prefix + ".") and prefix != PACKAGE
            if (module == prefix or within) and len(prefix) > best_length:
                best, best_length = number, len(prefix)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")
    return best


def upward_imports(graph: dict[str, Imports]) -> list[str]:
    """Each import of a higher layer, as ``importer -> imported (how)``."""
    found = []
    for module, imports in sorted(graph.items()):
        for how, targets in (
            ("module level", imports.module_level),
            ("TYPE_CHECKING", imports.type_checking),
            ("in a function", imports.in_functions),
        ):
            for target in sorted(targets):
                if layer_of(target) > layer_of(module):
                    found.append(f"{module} -> {target} ({how})")
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, Imports]:
    return import_graph()


def test_the_graph_sees_the_package(graph: dict[str, Imports]) -> None:
    """A guard on the reader: it finds known edges, so an empty answer means no loops."""
    assert "zocalo.transport.base" in graph["zocalo.service.runner"].module_level
    assert "zocalo.transport" in graph["zocalo.service.runner"].module_level  # the package runs too
    assert "zocalo.service.base" in graph["zocalo.service"].type_checking
    assert "zocalo.log_handlers" in graph["zocalo.logs"].in_functions


def test_no_import_loops(graph: dict[str, Imports]) -> None:
    loops = cycles({module: imports.all() for module, imports in graph.items()})
    assert loops == [], "modules that import each other:\n" + "\n".join(
        " <-> ".join(loop) for loop in loops
    )


def package_of(module: str) -> str:
    """``zocalo.service.worker`` -> ``zocalo.service``: the room a module lives in."""
    return ".".join(module.split(".")[:2])


def test_no_import_loops_between_packages(graph: dict[str, Imports]) -> None:
    """Two packages that need each other are one package, or a loop waiting to happen,
    even when no two of their modules import each other (``service.worker`` ->
    ``monitor.metrics`` -> ``service.runner``)."""
    edges: dict[str, set[str]] = {}
    for module, imports in graph.items():
        edges.setdefault(package_of(module), set()).update(
            package_of(target) for target in imports.all()
        )
    for package, targets in edges.items():
        targets.discard(package)
    loops = cycles(edges)
    assert loops == [], "packages that import each other:\n" + "\n".join(
        " <-> ".join(loop) for loop in loops
    )


def test_every_module_has_a_layer(graph: dict[str, Imports]) -> None:
    for module in graph:
        layer_of(module)


def test_layers_import_only_downwards(graph: dict[str, Imports]) -> None:
    upward = upward_imports(graph)
    assert upward == [], "imports of a higher layer:\n" + "\n".join(upward)


def test_the_rules_catch_a_loop_closed_late_and_an_upward_import(tmp_path: Path) -> None:
    """On a scratch tree: a transport that imports the runner inside a function."""
    files = {
        "__init__.py": "",
        "transport/__init__.py": "",
        "transport/base.py": "def f():\n    from zocalo.service.runner import Runner\n",
        "service/__init__.py": "",
        "service/runner.py": "from zocalo.transport.base import f\n",
    }
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    scratch = import_graph(tmp_path)
    edges = {module: imports.all() for module, imports in scratch.items()}
    assert cycles(edges) == [["zocalo.service.runner", "zocalo.transport.base"]]
    assert upward_imports(scratch) == [
        "zocalo.transport.base -> zocalo.service (in a function)",
        "zocalo.transport.base -> zocalo.service.runner (in a function)",
    ]
