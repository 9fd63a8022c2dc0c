"""The docs cannot drift from the repository layout: in README.md and docs/*.md every relative link points to a file
(and heading) that exists, every repository path in code (`tests/...py`, `examples/...`, `benchmarks/...py`,
`scripts/...`, `trl_attention/...`) exists, and every dotted `trl_attention.x.y` name resolves in the current layout
(not through an old module path kept for compatibility, which warns)."""

import importlib
import re
import warnings

import pytest

from tests.testing_utils import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = [str(page.relative_to(ROOT)) for page in PAGES]
# Where the old module paths may be named: the page that lists them next to their new homes.
OLD_PATHS_PAGE = ROOT / "docs" / "layout.md"

FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`]+`")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(
    r"(?<![\w./-])((?:tests|benchmarks)/[\w./*-]*\.py(?!\w)"
    r"|(?:examples|scripts|trl_attention_recipes|trl_attention)/[\w./*-]*)"
)
DOTTED = re.compile(r"(?<![\w./-])trl_attention(?:_recipes)?(?:\.\w+)+")
FROM_IMPORT = re.compile(r"^\s*from (trl_attention(?:_recipes)?[\w.]*) import ([\w, ]+)", re.MULTILINE)


def code_of(text: str) -> list[str]:
    """Inline code spans and fenced blocks: where repository paths and module names are written."""
    fences = FENCE.findall(text)
    return fences + INLINE_CODE.findall(FENCE.sub("", text))


def prose_of(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchors(path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (but - and _), spaces to dashes, -1 for repeats."""
    seen, result = {}, set()
    for heading in re.findall(r"^#+ (.*)$", FENCE.sub("", path.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_relative_links_point_to_existing_files_and_headings(page):
    broken = []
    for target in LINK.findall(prose_of(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target} (no file {path.relative_to(ROOT) if ROOT in path.parents else path})")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {path.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_repository_paths_exist(page):
    missing = []
    for code in code_of(page.read_text()):
        for path in PATH.findall(code):
            path = path.rstrip(".")
            if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                missing.append(path)
    assert not missing, f"{page.name}: paths that do not exist: {sorted(set(missing))}"


def resolve(dotted: str) -> str | None:
    """None if `dotted` (a module, or a module then attributes) resolves in the current layout, else why not."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        name = ".".join(parts[:split])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # an old path: told apart by its __name__ below
                obj = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if obj.__name__ != name:  # an alias of the module's new home
            return f"{name} is an old path of {obj.__name__}"
        break
    else:
        return "no such module"
    for attr in parts[split:]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if not hasattr(obj, attr):
                return f"{attr!r} not found"
            obj = getattr(obj, attr)
        moved = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
        if moved:
            return moved[0]
    return None


def old_paths() -> set[str]:
    from trl_attention import _compat

    moved = {f"{module}.{name}" for module, names in _compat.MOVED_NAMES.items() for name in names}
    return set(_compat.MOVED_MODULES) | set(_compat.SPLIT_MODULES) | moved


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_module_names_resolve_in_the_current_layout(page):
    names = set()
    for code in code_of(page.read_text()):
        names.update(name.rstrip(".") for name in DOTTED.findall(code))
        for module, imported in FROM_IMPORT.findall(code):
            names.update(f"{module}.{name.strip()}" for name in imported.split(",") if name.strip())
    if page == OLD_PATHS_PAGE:
        names -= old_paths()
    wrong = {name: why for name in sorted(names) if (why := resolve(name))}
    assert not wrong, f"{page.name}: names that do not resolve in the current layout: {wrong}"
