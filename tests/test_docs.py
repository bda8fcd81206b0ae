"""The documentation against the repository: every measured figure the docs quote is the one
its record holds, and every reference to a repository file resolves.

Figures: ``docs/calibration.json`` holds the calibration (``python -m dakd calibrate`` writes
it); ``docs/measurements.json`` holds the rest (wall times, the main job's summary, the test
suite, the benchmarks), each with the command and the machine that measured it. ``QUOTES``
names the phrases that quote them: each must still be in its file and quote the record's value.
A new measurement goes into the record first, then into the docs.

References: path-like tokens under the repository's top-level folders in docs, specs, code
comments and docstrings, and relative Markdown links with their ``#anchors`` (GitHub's heading
slugs), must name files or folders that exist. Generated outputs (``runs/``) and files that are
downloaded rather than shipped (``DOWNLOADED``) are not references to the repository.
"""

from __future__ import annotations

import ast
import io
import json
import re
import statistics
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: Files whose figures are checked, relative to the repository.
RECORD = "docs/measurements.json"
CALIBRATION = "docs/calibration.json"


# -- the figures --------------------------------------------------------------------------------
def _fmt_gain(value: float) -> str:
    return f"{value:+.1f}"


def calibration_figures(data: dict) -> dict[str, str]:
    """The figures the docs derive from the calibration, as the docs print them."""
    results = data["results"]
    out: dict[str, str] = {}
    gains_bcd: list[float] = []
    for scenario, rows in results.items():
        fair = rows["student-DA + extra steps"]
        per = {p: [d - f for d, f in zip(rows[f"DAKD ({p})"], fair)] for p in "abcd"}
        gains_bcd += [g for p in "bcd" for g in per[p]]
        best = [max(rows[f"DAKD ({p})"][i] for p in "bcd") - fair[i] for i in range(len(fair))]
        out[f"{scenario}.best_gain_min"] = _fmt_gain(min(best))
        out[f"{scenario}.best_gain_max"] = _fmt_gain(max(best))
        for p in "acd":
            out[f"{scenario}.gain_{p}_mean"] = _fmt_gain(statistics.mean(per[p]))
        teacher = statistics.mean(rows["teacher (shipped)"])
        student = statistics.mean(rows["student-DA"])
        out[f"{scenario}.teacher_lead"] = _fmt_gain(teacher - student)
    out["gain_bcd_min"] = _fmt_gain(min(gains_bcd))
    out["gain_bcd_max"] = _fmt_gain(max(gains_bcd))
    return out


def table_cells(data: dict) -> list[list[str]]:
    """The calibration table's cells, row by row, as ``mean +- std`` over seeds."""
    cells = []
    for row in data["results"]["synth_to_real"]:
        cells.append(
            [
                f"{statistics.mean(vals):.1f} +- {statistics.stdev(vals):.1f}"
                for vals in (data["results"][s][row] for s in data["results"])
            ]
        )
    return cells


def flatten(record: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys to the values of a record, as text (the command and machine left out)."""
    out: dict[str, str] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            out[f"{prefix}{key}"] = str(value)
    return out


def figures() -> dict[str, str]:
    """Every figure the docs may quote, by name: ``measurements.*`` and ``calibration.*``."""
    record = json.loads((ROOT / RECORD).read_text())
    calibration = json.loads((ROOT / CALIBRATION).read_text())
    out = {f"measurements.{k}": v for k, v in flatten(record).items()}
    out.update({f"calibration.{k}": v for k, v in calibration_figures(calibration).items()})
    return out


N = r"([-+]?\d+(?:\.\d+)?)"  # a number as quoted
T = r"(\d+ min \d+ s)"  # a wall time as quoted

#: (file, phrase with one group per figure, the figures' names). Whitespace in a phrase matches
#: any run of whitespace (a line break included).
QUOTES: list[tuple[str, str, tuple[str, ...]]] = [
    # the main job: README and the spec table
    ("README.md", rf"the first command took \*\*{T}\*\*", ("measurements.main_job.wall",)),
    (
        "README.md",
        rf"the student-DA stage \({N} s\) and the fair baseline \({N} s after it\), the "
        rf"teacher's outputs on both domains stored once \({N} s,",
        (
            "measurements.main_job.student_da_s",
            "measurements.main_job.fair_baseline_s",
            "measurements.main_job.teacher_outputs_s",
        ),
    ),
    (
        "README.md",
        rf"best trial {N}, {N} over the fair baseline {N} \(student-DA trained on for the "
        rf"trials' steps\), {N} over student-DA {N}",
        tuple(
            f"measurements.main_job.summary.{k}"
            for k in (
                "best_trial",
                "gain_over_fair_baseline",
                "fair_baseline",
                "gain_over_student_da",
                "student_da",
            )
        ),
    ),
    (
        "README.md",
        rf"beats the fair baseline by {N}\*\*: the paper's weights with paradigm \(d\), \(c\) "
        rf"then \(b\), at {N}, {N} of the shipped teacher's {N}",
        (
            "measurements.main_job.summary.gain_over_fair_baseline_rounded",
            "measurements.main_job.summary.best_trial",
            "measurements.main_job.summary.share_of_teacher",
            "measurements.main_job.summary.teacher",
        ),
    ),
    (
        "README.md",
        rf"next come \(b\) with a small\s+lambda_pseudoT at {N} and \(c\) at {N} \(stopped at 100",
        (
            "measurements.main_job.summary.second_b",
            "measurements.main_job.summary.c_stopped_at_100",
        ),
    ),
    ("sweeps/README.md", rf"\| 8 \| {T} from a fresh clone \|", ("measurements.main_job.wall",)),
    # the quickstart
    (
        "docs/guide.md",
        rf"its fair baseline, {T} in a fresh clone \|",
        ("measurements.quickstart.wall",),
    ),
    ("sweeps/README.md", rf"\| 2 \| {T} from a fresh clone \|", ("measurements.quickstart.wall",)),
    # the test suite
    (
        "README.md",
        rf"suite \({N} tests; `bash \.ci/run`, lint included, took {T}",
        ("measurements.test_suite.tests", "measurements.test_suite.wall"),
    ),
    # the calibration, from calibration.json
    (
        "README.md",
        rf"DAKD \(b\)-\(d\) beat the fair baseline in every seed, by {N} to {N}",
        ("calibration.gain_bcd_min", "calibration.gain_bcd_max"),
    ),
    (
        "docs/guide.md",
        rf"in every seed, {N} to {N} over the fair baseline",
        ("calibration.gain_bcd_min", "calibration.gain_bcd_max"),
    ),
    (
        "docs/results.md",
        rf"by {N} to {N} \(synthetic-to-real\) and {N} to {N} \(real-to-real\) for its best "
        rf"paradigm, by {N} / {N} on average for \(c\) and {N} / {N} for \(d\)",
        tuple(
            f"calibration.{s}.{k}"
            for s, k in (
                ("synth_to_real", "best_gain_min"),
                ("synth_to_real", "best_gain_max"),
                ("real_to_real", "best_gain_min"),
                ("real_to_real", "best_gain_max"),
                ("synth_to_real", "gain_c_mean"),
                ("real_to_real", "gain_c_mean"),
                ("synth_to_real", "gain_d_mean"),
                ("real_to_real", "gain_d_mean"),
            )
        ),
    ),
    (
        "docs/results.md",
        rf"the teacher leads\s+student-DA by {N} / {N} on average",
        ("calibration.synth_to_real.teacher_lead", "calibration.real_to_real.teacher_lead"),
    ),
    # benchmarks, from their record
    (
        "docs/guide.md",
        rf"ratio trainer/hand = {N}",
        ("measurements.bench.train_step.ratio_trainer_hand",),
    ),
    (
        "docs/guide.md",
        rf"ratio served/consumption\s+= {N}",
        ("measurements.bench.train_step.ratio_served_consumption",),
    ),
    (
        "docs/guide.md",
        rf"live {N} ms, cached {N} ms, \*\*ratio {N}\*\*",
        tuple(f"measurements.bench.teacher_cache.{k}" for k in ("live_ms", "cached_ms", "ratio")),
    ),
    (
        "docs/guide.md",
        rf"On 2 idle cores:\s+{N} on the quickstart's one-minute trials",
        ("measurements.bench.sweep_overhead.efficiency_quickstart",),
    ),
    (
        "docs/guide.md",
        rf"{N} with 3-minute trials \({N}x\) and {N} with 4-minute trials \({N}x\)",
        tuple(
            f"measurements.bench.sweep_overhead.{k}"
            for k in ("efficiency_3min", "speedup_3min", "efficiency_4min", "speedup_4min")
        ),
    ),
    (
        "docs/guide.md",
        rf"on 2 cores {N} ms against {N} ms a step, {N}x more steps per second",
        tuple(
            f"measurements.bench.data_loading.{k}"
            for k in ("in_loop_wait_ms", "prefetch_wait_ms", "speedup")
        ),
    ),
    (
        "docs/guide.md",
        rf"\(with one\s+thread per trial {N}\)",
        ("measurements.bench.teacher_cache.ratio_one_thread",),
    ),
    (
        "docs/teacher-cache.md",
        rf"step ratio cached/live = {N}",
        ("measurements.bench.teacher_cache.ratio",),
    ),
    (
        "docs/teacher-cache.md",
        rf"\*\*ratio {N}\*\*",
        ("measurements.bench.teacher_cache.ratio_one_thread",),
    ),
    (
        "docs/performance.md",
        rf"3-minute trials \(450 steps\) {N} \([\d.]+ s against [\d.]+ s, {N}x\)",
        (
            "measurements.bench.sweep_overhead.efficiency_3min",
            "measurements.bench.sweep_overhead.speedup_3min",
        ),
    ),
    (
        "docs/datasets.md",
        rf"\({N}x more steps per second\)",
        ("measurements.bench.data_loading.speedup",),
    ),
    (
        "sweeps/README.md",
        rf"two at a time: {N} s with reuse against {N} s without",
        ("measurements.bench.actor_reuse.with_s", "measurements.bench.actor_reuse.without_s"),
    ),
]


def _phrase(pattern: str) -> re.Pattern:
    return re.compile(pattern.replace(" ", r"\s+"))


@pytest.mark.parametrize("path,pattern,names", QUOTES, ids=[f"{q[0]}:{q[2][0]}" for q in QUOTES])
def test_quoted_figures_are_the_recorded_ones(path, pattern, names):
    known = figures()
    text = (ROOT / path).read_text(encoding="utf-8")
    found = list(_phrase(pattern).finditer(text))
    assert found, f"{path} no longer has the phrase that quotes {', '.join(names)}: {pattern!r}"
    for match in found:
        quoted = dict(zip(names, match.groups()))
        expected = {name: known[name] for name in names}
        assert quoted == expected, f"{path} quotes {quoted}; the record holds {expected}"


def _unmeasured(entry: dict, name: str, measured: bool) -> list[str]:
    """The figures of a record entry with no command and machine on it or above it."""
    measured = measured or bool(entry.get("command") and entry.get("machine"))
    out = []
    for key, value in entry.items():
        if isinstance(value, dict):
            out += _unmeasured(value, f"{name}.{key}", measured)
        elif not measured:
            out.append(f"{name}.{key}")
    return out


def test_every_recorded_figure_names_how_it_was_measured():
    record = json.loads((ROOT / RECORD).read_text())
    missing = [f for name, entry in record.items() for f in _unmeasured(entry, name, False)]
    assert not missing, f"{RECORD}: no command and machine for {', '.join(missing)}"


@pytest.mark.parametrize("path", ["docs/guide.md", "docs/results.md"])
def test_calibration_tables_are_calibration_json(path):
    data = json.loads((ROOT / CALIBRATION).read_text())
    text = (ROOT / path).read_text(encoding="utf-8")
    header = text.index("| row | synth")
    rows = [line for line in text[header:].splitlines()[2:] if line.startswith("|")]
    expected = table_cells(data)
    assert len(rows) >= len(expected), f"{path}: the calibration table has fewer rows than the data"
    for line, want in zip(rows, expected):
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        # a row without spread (the shipped teacher, one file for every seed) prints no std
        got = [c if "+-" in c else f"{c} +- 0.0" for c in cells]
        assert got == want, f"{path}: {line!r} is not {want} ({CALIBRATION})"


def test_calibration_md_is_calibration_json():
    data = json.loads((ROOT / CALIBRATION).read_text())
    assert data["table"].strip() in (DOCS / "calibration.md").read_text(encoding="utf-8")


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
