"""The documentation against the repository: every reference to a repository file resolves.

Path-like tokens under the repository's top-level folders in docs, specs, code comments and
docstrings, and relative Markdown links with their ``#anchors`` (GitHub's heading slugs), must
name files or folders that exist. Generated outputs (``runs/``) and files that are downloaded
rather than shipped (``DOWNLOADED``) are not references to the repository. The measured figures
the docs quote are checked in ``test_docs_figures.py``.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# -- the references -----------------------------------------------------------------------------
#: The repository's top-level folders a path-like token starts with.
PREFIXES = ("docs", "sweeps", "configs", "weights", "bench", "analysis", "dakd", "tests")
PREFIXES += ("examples", ".ci", "cluster")
#: Files a user downloads into the checkout (the published ImageNet DRNs): named, never shipped.
DOWNLOADED = re.compile(r"weights/drn_d_\d+-[0-9a-f]{8}\.pth$")
#: Paths inside an MLflow run's artifacts, which the docs name with the same prefixes.
ARTIFACTS = {"weights/model.pt", "analysis/pareto_front.png", "analysis/sensitivity.png"}
#: What a built package carries and the checkout does not (setup.py copies the shipped files).
BUILT = {"dakd/_shipped"}
#: An upper-case word in a path is a placeholder (teacher_da-SCENARIO.pt): any name matches.
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]{2,}")
#: Where references are looked for: docs, specs and the code's comments and docstrings.
SOURCES = ("*.md", "docs/**/*.md", "sweeps/**/*.md", "sweeps/*.yaml", "configs/**/*.yaml")
SOURCES += ("cluster/*", ".ci/run", "dakd/**/*.py", "bench/**/*.py", "analysis/**/*.py")
SOURCES += ("sweeps/**/*.py", "tests/**/*.py")

PATH_TOKEN = re.compile(
    r"(?<![\w./<>{}$-])((?:\.\./)*(?:" + "|".join(re.escape(p) for p in PREFIXES) + r")/[\w./*-]*)"
)
LINK = re.compile(r"\]\(([^()\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def sources() -> list[Path]:
    found = {p for pattern in SOURCES for p in ROOT.glob(pattern) if p.is_file()}
    return sorted(p for p in found if ".venv" not in p.parts and p.name != "test_docs.py")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (duplicates numbered, as GitHub does)."""
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            base = slug(line.lstrip("#"))
            seen[base if base not in seen else f"{base}-{seen[base]}"] = 0
            seen[base] = seen.get(base, 0) + 1
    return set(seen)


def _resolves(token: str, base: Path) -> bool:
    token = PLACEHOLDER.sub("*", token)
    target = (base / token).resolve() if token.startswith("../") else ROOT / token
    if "*" in token:
        return any(target.parent.glob(target.name))
    return target.exists()


def prose(path: Path) -> list[tuple[int, str]]:
    """The lines of a file that speak about the project: a Python file's comments and
    docstrings (its code and string literals are data), any other file whole."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    out = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            out.append((token.start[0], token.string))
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                lines = value.value.splitlines()
                out += [(body[0].lineno + i, line) for i, line in enumerate(lines)]
    return out


def _where(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def path_problems(path: Path) -> list[str]:
    """Path-like tokens in a file that name no file or folder of the repository."""
    out = []
    for number, line in prose(path):
        for match in PATH_TOKEN.finditer(line):
            token = match.group(1).rstrip(".,;:")
            if DOWNLOADED.search(token) or token in ARTIFACTS | BUILT or "..." in token:
                continue  # a file to download, a run's artifact, or an elided path (docs/...)
            if not _resolves(token, path.parent):
                out.append(f"{_where(path)}:{number}: {token}")
    return out


def link_problems(path: Path) -> list[str]:
    """Relative Markdown links (and their #anchors) that do not resolve."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for match in LINK.finditer(line):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            where = f"{_where(path)}:{number}: {target}"
            if not dest.exists():
                out.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                out.append(f"{where} (no heading {anchor!r} in {dest.name})")
    return out


def test_references_resolve():
    problems = []
    for path in sources():
        problems += path_problems(path)
        if path.suffix == ".md":
            problems += link_problems(path)
    assert not problems, "references to nothing in the repository:\n" + "\n".join(problems)


def test_reference_check_finds_what_is_broken(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n\n```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\nSee docs/nothing.md and docs/method.md, [x](other.md#a-section), "
        "[y](other.md#not-a-heading), [z](missing.md), [ok](#a-page), [no](#b-page).\n"
    )
    found = [p.split(": ", 1)[1] for p in path_problems(page) + link_problems(page)]
    assert found == [
        "docs/nothing.md",
        "other.md#not-a-heading (no heading 'not-a-heading' in other.md)",
        "missing.md (no such file)",
        "#b-page (no heading 'b-page' in page.md)",
    ]
    assert slug("Sweep overhead: Ray Tune + MLflow against a plain loop") == (
        "sweep-overhead-ray-tune--mlflow-against-a-plain-loop"
    )
