"""The layers of ftray/ and what each may import, read from the source with `ast` (nothing is imported).

The layers (each sub-package's docstring says the same):
- ftray.spec (what a user writes) imports no driver, results, train, api or cli code;
- ftray.train (a trial's worker) imports no driver, results, api or cli code, save the run folder's
  format (ftray.results.runfolder: a one-worker trial stores its own checkpoints in the run);
- ftray.results (the run folder and its readers, without Ray) imports no driver, train, api or cli code;
- ftray.driver (Ray, the search, the trials) imports any layer but the entry points (api, cli);
- ftray.tasks imports only ftray.errors, ftray.checks and ftray.tasks; ftray.checks (the input checks every
  layer shares) imports only ftray.errors; ftray.errors imports nothing of ftray.

Function-local imports count for the layer rules: importing later is still depending on the other
layer. Type-only imports (under `if TYPE_CHECKING:`) count too. They do not count for import circles:
a function-local import runs after every module has loaded, which is what makes it the way out of a
circle; module-level imports (type-only ones included) must form no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ftray"

# What each layer must not import (a module, or any module under it).
FORBIDDEN = {
    "ftray.spec": ("ftray.driver", "ftray.results", "ftray.train", "ftray.api", "ftray.cli"),
    "ftray.train": ("ftray.driver", "ftray.results", "ftray.api", "ftray.cli"),
    "ftray.results": ("ftray.driver", "ftray.train", "ftray.api", "ftray.cli"),
    "ftray.driver": ("ftray.api", "ftray.cli"),
}
ALLOWED = {  # the one exception to FORBIDDEN, per layer
    "ftray.train": ("ftray.results.runfolder",),  # train/context.py: a one-worker trial stores its checkpoints
}
ONLY = {  # layers that may import only these
    "ftray.tasks": ("ftray.errors", "ftray.checks", "ftray.tasks"),
    "ftray.checks": ("ftray.errors",),
    "ftray.errors": (),
}

# Known breaks of the rules, (importer, imported), each with its reason (none today). An entry that no
# longer breaks a rule fails the test too, so this list only shrinks.
EXEMPT: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def resolve(node: ast.ImportFrom | ast.Import, importer: str) -> list[str]:
    """The ftray modules an import statement loads: `from ftray import storage` is ftray.storage,
    `from ftray.tasks import SyntheticTask` is ftray.tasks (its __init__)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if under(a.name, "ftray")]
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    if not under(base, "ftray"):
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def imports(name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every ftray import in the module `name`."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    found = []

    def walk(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((target, child.lineno, top) for target in resolve(child, name))
            # Inside a function the import runs when it is called; inside `if`/`try` at module level, on import.
            walk(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, True)
    return list(dict.fromkeys(found))  # `from m import a, b` is one import of m


def layer(name: str) -> str:
    return next((p for p in (*FORBIDDEN, *ONLY) if under(name, p)), "")


def breaks(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None."""
    own = layer(importer)
    if own in ONLY:
        if not any(under(imported, ok) for ok in ONLY[own]):
            return f"{own} imports only {', '.join(ONLY[own]) or 'nothing of ftray'}"
        return None
    for banned in FORBIDDEN.get(own, ()):
        if under(imported, banned) and not any(under(imported, ok) for ok in ALLOWED.get(own, ())):
            return f"{own} imports nothing from {banned}"
    return None


def test_the_modules_are_found():
    assert {"ftray.spec.sweep", "ftray.train.recipe", "ftray.driver.tuner", "ftray.results.runfolder",
            "ftray.tasks.base", "ftray.errors", "ftray.checks", "ftray"} <= set(MODULES)


def test_each_layer_imports_only_what_it_may():
    broken, exempt_seen = [], set()
    for name in MODULES:
        for imported, line, _ in imports(name):
            why = breaks(name, imported)
            if why is None:
                continue
            if (name, imported) in EXEMPT:
                exempt_seen.add((name, imported))
                continue
            broken.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {imported}: {why}")
    assert not broken, "imports across the layers' rules:\n  " + "\n  ".join(broken)
    stale = EXEMPT - exempt_seen
    assert not stale, f"exempt imports that no longer break a rule (drop them from EXEMPT): {sorted(stale)}"


def test_no_import_circles_at_module_level():
    graph = {name: sorted({m for m, _, top in imports(name) if top and m != name and m in MODULES})
             for name in MODULES}
    circles, state, stack = [], {}, []

    def visit(name: str) -> None:  # depth first; an edge back to a module on the stack closes a circle
        state[name] = "open"
        stack.append(name)
        for nxt in graph[name]:
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name)
    assert not circles, "module-level import circles:\n  " + "\n  ".join(circles)


def test_the_rules_catch_what_they_should():
    assert breaks("ftray.spec.sweep", "ftray.train.models") == "ftray.spec imports nothing from ftray.train"
    assert breaks("ftray.train.context", "ftray.results.runfolder") is None
    assert breaks("ftray.train.recipe", "ftray.results.report") == "ftray.train imports nothing from ftray.results"
    assert breaks("ftray.tasks.text", "ftray.spec.config") == ("ftray.tasks imports only ftray.errors, ftray.checks, "
                                                                "ftray.tasks")
    assert breaks("ftray.tasks.text", "ftray.checks") is None
    assert breaks("ftray.checks", "ftray.storage") == "ftray.checks imports only ftray.errors"
    assert breaks("ftray.driver.tuner", "ftray.train.recipe") is None
    tree = ast.parse("from ftray import storage\nfrom ftray.tasks import Task\nimport ftray.errors\n")
    assert [m for node in tree.body for m in resolve(node, "ftray.api")] == ["ftray.storage", "ftray.tasks",
                                                                           "ftray.errors"]
