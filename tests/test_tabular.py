"""Markdown and LaTeX tables, written by hand: the rule, alignment and escaping of every table the
package prints or writes."""

from __future__ import annotations

import pytest

from dakd.tabular import latex, latex_table, markdown_cell, markdown_table


def test_a_markdown_table_is_header_rule_and_rows():
    text = markdown_table(["row", "mIoU"], [["a", "12.00"], ["b", 3]])
    assert text == "| row | mIoU |\n|---|---|\n| a | 12.00 |\n| b | 3 |"
    assert markdown_table(["x"], []) == "| x |\n|---|"


def test_a_pipe_is_escaped_once_in_header_and_cells():
    text = markdown_table(["a|b"], [["c|d"], ["\\|"]])
    assert text.splitlines() == ["| a\\|b |", "|---|", "| c\\|d |", "| \\\\| |"]
    assert markdown_cell("x | y") == "x \\| y"


def test_alignment_sets_the_rule():
    assert markdown_table(["class", "IoU"], [], align="lr").splitlines()[1] == "|:--|--:|"
    assert markdown_table(["a", "b", "c"], [], align="-r-").splitlines()[1] == "|---|--:|---|"
    with pytest.raises(ValueError, match="one letter per column, 2 columns"):
        markdown_table(["a", "b"], [], align="l")


def test_latex_escapes_specials_and_sets_a_minus():
    assert latex("synth_to_real & 50% #1") == "synth\\_to\\_real \\& 50\\% \\#1"
    assert latex("14.00 ± 3.61") == "14.00 $\\pm$ 3.61"
    assert latex("-7.00") == "$-$7.00" and latex("-") == "-" and latex("a-1") == "a-1"
    assert latex("ΔmIoU ✓ –") == "$\\Delta$mIoU \\checkmark --"


def test_a_latex_table_is_a_booktabs_float():
    text = latex_table(["row", "mIoU"], [["a_b", "-1.5"]], "Results, s. Mean", "tab:x", ["n_1"])
    assert text.splitlines() == [
        "% needs \\usepackage{booktabs} (and graphicx, amssymb for wide tables and ticks)",
        "\\begin{table}[t]",
        "\\centering",
        "\\caption{Results, s. Mean}",
        "\\label{tab:x}",
        "\\begin{tabular}{lr}",
        "\\toprule",
        "row & mIoU \\\\",
        "\\midrule",
        "a\\_b & $-$1.5 \\\\",
        "\\bottomrule",
        "\\end{tabular}",
        "\\par\\footnotesize n\\_1",
        "\\end{table}",
    ]
    wide = latex_table([str(i) for i in range(11)], [], "c", "tab:w").splitlines()
    assert wide[5] == "\\resizebox{\\linewidth}{!}{%" and wide[-2] == "\\end{tabular}}"
