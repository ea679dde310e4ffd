"""The house plan, read from the package's imports: each folder imports only folders below it in
``ORDER`` (the README's Layout section), with no import cycles anywhere and no Flask below the web layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tagifai_api"
#: top to bottom; a folder may import itself and the folders after it (settings.py: anyone)
ORDER = ("server", "demo", "feedback", "retrain", "registry", "monitoring", "auth", "web", "telemetry", "serving", "scoring", "store",
         "ml")
#: what the Gunicorn master loads imports no Flask and, of the package, only these
SERVER_MAY_IMPORT = ("tagifai_api.settings", "tagifai_api.web.envelope", "tagifai_api.auth.keys", "tagifai_api.store",
                     "tagifai_api.server")
FLASK_FREE = ("server", "serving", "scoring", "store", "ml", "auth/keys.py", "telemetry/multiprocess.py",
              "telemetry/logs.py", "monitoring/statistics.py", "monitoring/service.py")


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, relative imports resolved, at any depth (lazy ones too)."""
    base = _module(path).split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = ".".join(base[: len(base) - node.level + 1] + [node.module or ""]) if node.level else node.module
            out.add(target.strip("."))
            out.update(f"{target}.{a.name}".strip(".") for a in node.names)
    return out


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}
IMPORTS = {name: _imports(path) for name, path in MODULES.items()}


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ORDER) else None


def _known(module: str) -> str | None:
    """The package module an import names (the longest known prefix)."""
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in MODULES:
            return candidate
    return None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _folder(m)))
def test_each_folder_imports_only_the_folders_below_it(module):
    mine = ORDER.index(_folder(module))
    upward = sorted({target for imported in IMPORTS[module] if (target := _known(imported))
                     and _folder(target) and ORDER.index(_folder(target)) < mine})
    assert not upward, f"{module} ({_folder(module)}/) imports {upward}, which lie above it"


def test_the_master_side_imports_no_flask_and_not_the_app():
    for module in (m for m in MODULES if _folder(m) == "server"):
        package = {i for i in IMPORTS[module] if i.startswith("tagifai_api")}
        # a package alone is the face ``from tagifai_api.web import envelope`` names
        assert all(i in ("tagifai_api", "tagifai_api.web") or i.startswith(SERVER_MAY_IMPORT) for i in package), \
            (module, package)


@pytest.mark.parametrize("place", FLASK_FREE)
def test_flask_stays_in_the_web_layer(place):
    for path in [PACKAGE / place] if place.endswith(".py") else (PACKAGE / place).rglob("*.py"):
        assert not any(i == "flask" or i.startswith(("flask.", "werkzeug")) for i in _imports(path)), path


def test_no_import_cycles():
    graph = {m: {t for i in imports if (t := _known(i)) and t != m and not m.startswith(t + ".")}
             for m, imports in IMPORTS.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                # a package's __init__ handing on its own submodules is not a design cycle
                assert all(c.startswith(nxt) for c in cycle), f"import cycle: {' -> '.join(cycle)}"
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_at_most_five_modules_at_the_package_top():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 5, top
