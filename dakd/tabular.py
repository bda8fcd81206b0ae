"""Tables as text: Markdown (GitHub's pipe tables) and LaTeX (booktabs), each written in one place.

Every table the package prints or writes goes through :func:`markdown_table` or
:func:`latex_table`, so a cell is escaped once, here: ``|`` as ``\\|`` in Markdown, LaTeX's
special characters (and ``±``, ``–``, ``✓``, ``Δ``) as LaTeX. Columns are not padded: a table
reads the same in a terminal, a file and the MLflow UI, and its lines can be compared as text.

Plain Python, like the core: the trainer's evaluation, the calibration, the sweep and the result
tables all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["latex", "latex_table", "markdown_cell", "markdown_table"]

#: Markdown column alignment: ``"l"`` left, ``"r"`` right, ``""`` the renderer's default.
_RULES = {"": "---", "l": ":--", "r": "--:"}


def markdown_cell(value: object) -> str:
    """``value`` as one Markdown table cell: ``|`` escaped, so it cannot end the cell."""
    return str(value).replace("|", "\\|")


def _markdown_line(cells: Iterable[object]) -> str:
    return "| " + " | ".join(markdown_cell(c) for c in cells) + " |"


def markdown_table(
    header: Sequence[object], rows: Iterable[Sequence[object]], align: str | None = None
) -> str:
    """A Markdown table: the header, the rule, one line per row; lines joined by ``\\n``, no
    newline at the end. ``align`` has one letter per column out of ``l``, ``r`` and ``-`` (the
    renderer's default, the same as no ``align``)."""
    if align is not None and len(align) != len(header):
        raise ValueError(f"align {align!r}: one letter per column, {len(header)} columns")
    rules = [_RULES[a.replace("-", "")] for a in (align or "-" * len(header))]
    lines = [_markdown_line(header), "|" + "|".join(rules) + "|"]
    lines += [_markdown_line(row) for row in rows]
    return "\n".join(lines)


_LATEX = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "±": "$\\pm$",
    "–": "--",
    "✓": "\\checkmark",
    "Δ": "$\\Delta$",
}


def latex(text: object) -> str:
    """``text`` escaped for LaTeX; a leading minus of a number is set as one (``$-$``)."""
    text = str(text)
    if len(text) > 1 and text[0] == "-" and text[1].isdigit():
        return "$-$" + latex(text[1:])
    return "".join(_LATEX.get(ch, ch) for ch in text)


def latex_table(
    header: Sequence[object],
    rows: Iterable[Sequence[object]],
    caption: str,
    label: str,
    notes: Sequence[str] = (),
) -> str:
    """A booktabs ``table`` float: the first column left-aligned, the others right-aligned;
    wider than 10 columns it is scaled to the line width. ``caption`` and ``notes`` (footnotes
    under the table) are escaped like the cells; ``label`` is used as it is. Ends with a newline."""
    columns = "l" + "r" * (len(header) - 1)
    wide = len(header) > 10
    lines = [
        "% needs \\usepackage{booktabs} (and graphicx, amssymb for wide tables and ticks)",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{latex(caption)}}}",
        f"\\label{{{label}}}",
    ]
    if wide:
        lines.append("\\resizebox{\\linewidth}{!}{%")
    lines += [
        f"\\begin{{tabular}}{{{columns}}}",
        "\\toprule",
        " & ".join(latex(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(latex(c) for c in row) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}" + ("}" if wide else "")]
    lines += [f"\\par\\footnotesize {latex(note)}" for note in notes]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"
