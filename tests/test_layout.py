"""The package layout's promises: a cheap `import trl_attention`; every 0.1.0 public name still importable from its
0.1.0 path (a moved one with a DeprecationWarning naming its new home, as the same object); no import cycle between
the package's top-level units and no import of another unit's private name; the library never imports its recipes;
no module over 400 lines."""

import ast
import importlib
import json
import subprocess
import sys
import warnings

import pytest

from tests.testing_utils import ROOT
from trl_attention import _compat

PACKAGE = ROOT / "trl_attention"
RECIPES = ROOT / "trl_attention_recipes"
PUBLIC_NAMES_0_1_0 = json.loads((ROOT / "tests" / "data" / "public_names_0.1.0.json").read_text())
INFRASTRUCTURE = {"_lazy", "_compat"}  # the package's own plumbing, importable by every unit
LONG_MODULES = {  # path -> why splitting it would cut one idea in two
    "trl_attention/ops/attention_rows_triton.py": "the fused Triton path: on-chip helpers, the four kernels and the "
    "launcher are one algorithm (its docstring); split, each file was a fragment of it",
}


def test_import_is_cheap():
    code = (
        "import sys, trl_attention; trl_attention.__all__; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _moved(module: str, name: str) -> str | None:
    """The new home of `module.name` if it moved in 0.2.0, else None."""
    if module in _compat.MOVED_MODULES:
        return _compat.MOVED_MODULES[module]
    return _compat.SPLIT_MODULES.get(module, _compat.MOVED_NAMES.get(module, {})).get(name)


@pytest.mark.parametrize("module", sorted(PUBLIC_NAMES_0_1_0))
def test_every_0_1_0_public_name_still_imports(module):
    for name in PUBLIC_NAMES_0_1_0[module]:
        sys.modules.pop(module, None) if module in _compat.MOVED_MODULES else None  # warn afresh
        new = _moved(module, name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = getattr(importlib.import_module(module), name)
        deprecations = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
        if new is None:
            assert not deprecations, f"{module}.{name} did not move but warns: {deprecations}"
            continue
        assert any(new in message for message in deprecations), f"{module}.{name}: no warning naming {new}"
        assert value is getattr(importlib.import_module(new), name), f"{module}.{name} is not {new}.{name}"


def test_a_moved_module_is_the_new_module_object():
    sys.modules.pop("trl_attention.layouts", None)
    with pytest.warns(DeprecationWarning, match=r"trl_attention.layouts moved to trl_attention.visual.layouts"):
        old = importlib.import_module("trl_attention.layouts")
    assert old is importlib.import_module("trl_attention.visual.layouts")


def test_moves_are_in_the_changelog():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    deprecated = changelog.split("### Deprecated", 1)[1].split("\n## ", 1)[0]
    missing = [path for path in [*_compat.MOVED_MODULES, *_compat.SPLIT_MODULES] if f"`{path}`" not in deprecated]
    missing += [
        f"{module}.{name}"
        for module, names in _compat.MOVED_NAMES.items()
        for name in names
        if f"`{module}" not in deprecated or f"{name}`" not in deprecated
    ]
    assert not missing, f"moved without a CHANGELOG 'Deprecated' entry: {missing}"


def _library_modules(package=PACKAGE):
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path):
    """(imported module, imported name or None) of every import in `path`, function-level ones too, resolved."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])  # a module's package; a package's itself
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                yield module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def _unit(path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _unit_graph():
    """{unit: {unit it imports}} over the package's top-level modules and packages, and the private-name imports."""
    graph, private = {}, []
    for path in _library_modules():
        unit = _unit(path)
        graph.setdefault(unit, set())
        for module, name in _imports(path):
            parts = module.split(".")
            if parts[0] != "trl_attention":
                continue
            target = parts[1] if len(parts) > 1 else name
            if target in (unit, None, "__version__") or target in INFRASTRUCTURE:
                continue
            graph[unit].add(target)
            if (name or "").startswith("_") or any(p.startswith("_") for p in parts[2:]):
                private.append(f"{path.relative_to(ROOT)} imports {module}.{name}")
    return graph, private


def test_no_import_cycle_between_units():
    graph, _ = _unit_graph()
    state, stack, cycles = {}, [], []

    def visit(unit):
        state[unit] = "open"
        stack.append(unit)
        for target in sorted(graph.get(unit, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[unit] = "done"

    for unit in sorted(graph):
        if unit not in state:
            visit(unit)
    assert not cycles


def test_no_unit_imports_another_units_private_names():
    assert not _unit_graph()[1]


def test_the_library_never_imports_its_recipes():
    importers = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _library_modules()
        for module, _ in _imports(path)
        if module.split(".")[0] == "trl_attention_recipes"
    ]
    # by name either (importlib): only the deprecated 0.1.0 paths of _compat.py resolve to a recipe
    named = [
        str(path.relative_to(ROOT))
        for path in _library_modules()
        if "trl_attention_recipes" in path.read_text() and path.name != "_compat.py"
    ]
    assert not importers and not named


def test_recipes_use_only_public_library_names():
    private = [
        f"{path.relative_to(ROOT)} imports {module}.{name}"
        for path in _library_modules(RECIPES)
        for module, name in _imports(path)
        if module.startswith("trl_attention.")
        and ((name or "").startswith("_") or any(p.startswith("_") for p in module.split(".")[1:]))
    ]
    assert not private


def test_no_module_over_400_lines():
    modules = _library_modules() + _library_modules(RECIPES)
    long = {str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > 400}
    assert set(long) <= set(LONG_MODULES), {path: n for path, n in long.items() if path not in LONG_MODULES}


def test_the_demo_command_module_imports_first_in_a_fresh_interpreter():
    """The CLI loads its added commands on first use, not at import (a circular import before)."""
    import subprocess
    import sys

    code = "import trl_attention_recipes.demo_command as d; from trl_attention import cli; print(d.COMMAND in cli.COMMANDS)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


def test_the_demo_command_is_a_recipe_the_cli_finds_through_its_entry_point():
    from trl_attention import cli

    (demo,) = [command for command in cli.COMMANDS if command.name == "demo"]
    assert demo.module == "trl_attention_recipes.demo_command" and demo not in cli.BUILTIN_COMMANDS
    assert cli.SUBCOMMANDS[0] == "demo"  # listed first, as before the move
