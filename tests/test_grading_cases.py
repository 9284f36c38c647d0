"""The grading case table: (class, gold, pred, expected, pred_is_response).

Expected verdicts are what a careful human grader says about the mathematics (written by hand,
not produced by the grader). Every class has equal and unequal pairs. The same table is used by
benchmarks/bench_grading.py --cases to measure math-verify against our engine (docs/grading.md).
"""

from __future__ import annotations

import collections

import pytest

T, F = True, False
MAT_NEG_I = r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}"
COL = r"\begin{pmatrix} -18 \\ -49 \\ 96 \end{pmatrix}"

CASES = [
    # --- false positives of other graders: all unequal
    ("false_positive", "50", "0.5", F, F),
    ("false_positive", "0.5", "50", F, F),
    ("false_positive", "5000", "50", F, F),
    ("false_positive", "(1,2)", "[1,2]", F, F),
    ("false_positive", "[1,2)", "[1,2]", F, F),
    ("false_positive", r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}", F, F),
    ("false_positive", r"1/2^{99}", r"1/2^{98}", F, F),
    ("false_positive", "(1,2]", "(1,2)", F, F),
    ("false_positive", "100", "1", F, F),
    ("false_positive", r"\frac{1}{2^{99}}", r"\frac{1}{2^{99}}", T, F),
    # --- normalisation
    ("normalise", r"\dfrac{3}{4}", r"\frac{3}{4}", T, F),
    ("normalise", r"\tfrac{3}{4}", "0.75", T, F),
    ("normalise", r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})", T, F),
    ("normalise", r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{3})", F, F),
    ("normalise", r"10,\!080", "10080", T, F),
    ("normalise", "10,080", "10080", T, F),
    ("normalise", r"12,\! 345,\! 678", "12345678", T, F),
    ("normalise", r"12,\! 345,\! 678", "12,345,679", F, F),
    ("normalise", "1,000,000", "1000000", T, F),
    ("normalise", "1,000,000", "100000", F, F),
    ("normalise", "18.90", "18.9", T, F),
    ("normalise", r"\$18.90", "18.90", T, F),
    ("normalise", r"\$18.90", r"\$19.80", F, F),
    ("normalise", r"90^\circ", "90", T, F),
    ("normalise", r"90^{\circ}", r"90", T, F),
    ("normalise", r"75^\circ", "15", F, F),
    ("normalise", r"50\%", "50", T, F),
    ("normalise", r"50\%", "5", F, F),
    ("normalise", r"15\mbox{ cm}^2", "15", T, F),
    ("normalise", r"15\text{ cm}^2", "15 cm^2", T, F),
    ("normalise", r"12\text{ inches}", "12", T, F),
    ("normalise", r"12\text{ inches}", "13", F, F),
    ("normalise", r"1\frac{4}{5}", r"\frac{9}{5}", T, F),
    ("normalise", r"1\frac{4}{5}", "1.8", T, F),
    ("normalise", r"1\frac{4}{5}", r"\frac{4}{5}", F, F),
    ("normalise", r"-2\frac{1}{2}", r"-\frac{5}{2}", T, F),
    ("normalise", "52_8", "52", T, F),
    ("normalise", "52_8", "52_{8}", T, F),
    ("normalise", "52_8", "42", F, F),
    ("normalise", "2516_8", "2516", T, F),
    ("normalise", "1011_2", "11", F, F),
    ("normalise", r"x \in [-2,7]", "[-2,7]", T, F),
    ("normalise", r"x \in [-2,7]", "[-2,7)", F, F),
    ("normalise", r"\frac12", r"\frac{1}{2}", T, F),
    ("normalise", r"11\sqrt2", r"11\sqrt{2}", T, F),
    ("normalise", r"11\sqrt2", r"11\sqrt{3}", F, F),
    ("normalise", "5.", "5", T, F),
    ("normalise", "{5}", "5", T, F),
    ("normalise", r"\displaystyle\frac{1}{2}", "1/2", T, F),
    ("normalise", r"$\frac{1}{2}$", "0.5", T, F),
    ("normalise", r"\frac{3}{4}", "3/4", T, F),
    ("normalise", r"\dfrac{33}{100}", "0.33", T, F),
    # --- numbers
    ("number", "025", "25", T, F),
    ("number", "073", "73", T, F),
    ("number", "025", "250", F, F),
    ("number", "27.0", "27", T, F),
    ("number", "27.0", "28", F, F),
    ("number", r"\frac{1}{3}", "0.33333", T, F),
    ("number", r"\frac{1}{3}", "0.33", F, F),
    ("number", r"\frac{2}{3}", "0.6667", T, F),
    ("number", r"\pi", "3.14159", T, F),
    ("number", r"\pi", "3.14", F, F),
    ("number", r"\sqrt{2}", "1.41421", T, F),
    ("number", "0.1", r"\frac{1}{10}", T, F),
    ("number", "2.5", r"\frac{5}{2}", T, F),
    ("number", "-3", "3", F, F),
    ("number", "-3", "-3.0", T, F),
    ("number", "0.001", "10^{-3}", T, F),
    ("number", "12", "12.5", F, F),
    ("number", "100", "100.0", T, F),
    ("number", r"-\frac{24}{25}", "-0.96", T, F),
    ("number", r"\frac{-24}{25}", r"-\frac{24}{25}", T, F),
    ("number", "0", "-0", T, F),
    ("number", "0", "0.0001", F, F),
    ("number", "3", r"\frac{6}{2}", T, F),
    ("number", r"\frac{11}{36}", r"\frac{22}{72}", T, F),
    ("number", r"\frac{11}{36}", r"\frac{11}{35}", F, F),
    ("number", "4.5", r"\frac{9}{2}", T, F),
    # --- symbolic expressions
    ("symbolic", r"2\sqrt{5}", r"\sqrt{20}", T, F),
    ("symbolic", r"2\sqrt{5}", r"\sqrt{10}", F, F),
    ("symbolic", r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", T, F),
    ("symbolic", r"\frac{\sqrt{3}}{3}", r"\frac{\sqrt{2}}{2}", F, F),
    ("symbolic", r"1+2\sqrt{3}", r"2\sqrt{3}+1", T, F),
    ("symbolic", r"16\sqrt{3}", r"\sqrt{768}", T, F),
    ("symbolic", r"12\pi", r"\pi \cdot 12", T, F),
    ("symbolic", r"12\pi", "12", F, F),
    ("symbolic", r"\sqrt{2}+\sqrt{3}", r"\sqrt{5+2\sqrt{6}}", T, F),
    ("symbolic", "x^5 - x^4 + x^3 - x^2 + x - 1", "x^5+x^3+x-x^4-x^2-1", T, F),
    ("symbolic", "x^5 - x^4 + x^3 - x^2 + x - 1", "x^5 - x^4 + x^3 - x^2 + x + 1", F, F),
    ("symbolic", "(x+1)^2", "x^2+2x+1", T, F),
    ("symbolic", "(x+1)^2", "x^2+1", F, F),
    ("symbolic", r"\frac{x+1}{x-1}", r"\frac{1+x}{-1+x}", T, F),
    ("symbolic", "2^{10}", "1024", T, F),
    ("symbolic", "2^{10}", "1023", F, F),
    ("symbolic", "3^{-2}", r"\frac{1}{9}", T, F),
    ("symbolic", r"\log_2 8", "3", T, F),
    ("symbolic", r"\log_2 8", "4", F, F),
    ("symbolic", r"\ln(e^2)", "2", T, F),
    ("symbolic", r"\sin\frac{\pi}{6}", r"\frac{1}{2}", T, F),
    ("symbolic", r"\cos\frac{\pi}{3}", r"\frac{\sqrt{3}}{2}", F, F),
    ("symbolic", r"\tan\frac{\pi}{4}", "1", T, F),
    ("symbolic", r"\sin^2 x + \cos^2 x", "1", T, F),
    ("symbolic", r"\sqrt[3]{8}", "2", T, F),
    ("symbolic", "8^{1/3}", "2", T, F),
    ("symbolic", r"\binom{5}{2}", "10", T, F),
    ("symbolic", "5!", "120", T, F),
    ("symbolic", "5!", "24", F, F),
    ("symbolic", r"\frac{\pi}{4}", "0.785398", T, F),
    ("symbolic", r"\frac{\pi}{2}", "90", F, F),
    ("symbolic", "p - q", "-q + p", T, F),
    ("symbolic", "p - q", "q - p", F, F),
    ("symbolic", "2a+3b", "3b+2a", T, F),
    ("symbolic", "x^2", "y^2", F, F),
    # --- complex numbers
    ("complex", "6+9i", "9i+6", T, F),
    ("complex", "6+9i", "6-9i", F, F),
    ("complex", "1+2i", "(1+2i)", T, F),
    ("complex", "i", r"\sqrt{-1}", T, F),
    ("complex", r"\frac{1+i}{2}", "0.5+0.5i", T, F),
    ("complex", r"e^{i\pi}", "-1", T, F),
    ("complex", "2i", "-2i", F, F),
    ("complex", "(1+i)^2", "2i", T, F),
    # --- tuples, sets, solution lists
    ("tuple_set", "(15,-29)", "(15, -29)", T, F),
    ("tuple_set", "(15,-29)", "(-29,15)", F, F),
    ("tuple_set", r"(3, \frac{\pi}{2})", "(3, 1.5707963)", T, F),
    ("tuple_set", "(1,2,3)", "(1,2)", F, F),
    ("tuple_set", "-2,1", "1,-2", T, F),
    ("tuple_set", "-2,1", "1, -2", T, F),
    ("tuple_set", "-2,1", "-2", F, F),
    ("tuple_set", "-2,1", "-2,1,3", F, F),
    ("tuple_set", r"\{1,2\}", "1,2", T, F),
    ("tuple_set", r"\{1\pm\sqrt{5},-2\}", r"-2, 1+\sqrt{5}, 1-\sqrt{5}", T, F),
    ("tuple_set", r"1\pm\sqrt{5}", r"1+\sqrt{5}, 1-\sqrt{5}", T, F),
    ("tuple_set", r"1\pm\sqrt{5}", r"1+\sqrt{5}", F, F),
    ("tuple_set", "1,-2", "x=1, x=-2", T, F),
    ("tuple_set", "1,-2", r"x = 1 \text{ or } x = -2", T, F),
    ("tuple_set", "(1,2)", "1,2", F, F),
    ("tuple_set", r"\langle 1, 2\rangle", "(1,2)", T, F),
    ("tuple_set", "(1,2),(3,4)", "(3,4),(1,2)", T, F),
    ("tuple_set", "(1,2),(3,4)", "(1,2),(4,3)", F, F),
    ("tuple_set", r"\frac{1}{2}, \frac{1}{3}", "0.5, 0.33333", T, F),
    # --- intervals and unions
    ("interval", r"(-\infty, 2) \cup (3, \infty)", r"(-\infty,2)\cup(3,\infty)", T, F),
    ("interval", r"(-\infty, 2) \cup (3, \infty)", r"(3, \infty) \cup (-\infty, 2)", T, F),
    ("interval", r"(-\infty, 2) \cup (3, \infty)", r"(-\infty, 2] \cup (3, \infty)", F, F),
    ("interval", r"(-\infty, 2) \cup (3, \infty)", r"x < 2 \text{ or } x > 3", T, F),
    ("interval", r"(5,\infty)", "x > 5", T, F),
    ("interval", r"(5,\infty)", r"x \geq 5", F, F),
    ("interval", r"[5,\infty)", r"x \ge 5", T, F),
    ("interval", "[-2,7]", r"-2 \le x \le 7", T, F),
    ("interval", "[-2,7]", r"-2 < x \le 7", F, F),
    ("interval", r"(2,12) \cup (12,102)", "(2,102)", F, F),
    ("interval", r"[1,2] \cup [2,3]", "[1,3]", T, F),
    ("interval", "(0,1]", "(0, 1]", T, F),
    ("interval", r"(-\infty,\infty)", r"\mathbb{R}", T, F),
    ("interval", r"[0,\frac{1}{2})", "[0,0.5)", T, F),
    ("interval", r"[0,\frac{1}{2})", "[0,0.5]", F, F),
    # --- matrices and vectors
    ("matrix", MAT_NEG_I, r"\begin{pmatrix}-1&0\\0&-1\end{pmatrix}", T, F),
    ("matrix", MAT_NEG_I, r"\begin{bmatrix} -1 & 0 \\ 0 & -1 \end{bmatrix}", T, F),
    ("matrix", MAT_NEG_I, r"\begin{pmatrix} -1 & 0 \\ 0 & 1 \end{pmatrix}", F, F),
    ("matrix", COL, "(-18,-49,96)", T, F),
    ("matrix", COL, "(-18,-49)", F, F),
    ("matrix", r"\begin{pmatrix} 1/2 \\ 3 \end{pmatrix}", r"\begin{pmatrix} \frac{1}{2} \\ 3 \end{pmatrix}", T, F),
    ("matrix", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1&3\\2&4\end{pmatrix}", F, F),
    ("matrix", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\langle 1,2 \rangle", T, F),
    # --- equations and inequalities
    ("equation", "x=3", "3", T, F),
    ("equation", "3", "x=3", T, F),
    ("equation", "x=3", "x=4", F, F),
    ("equation", "x=3", "4", F, F),
    ("equation", "y=2x+3", "y = 3 + 2x", T, F),
    ("equation", "y=2x+3", "2x - y + 3 = 0", T, F),
    ("equation", "y=2x+3", "y=2x-3", F, F),
    ("equation", "x+y=2", "2x+2y=4", T, F),
    ("equation", "x^2+y^2=25", "x^2+y^2=5", F, F),
    ("equation", r"y = -\frac{1}{2}x + 4", "x + 2y = 8", T, F),
    ("equation", "x > 5", "5 < x", T, F),
    ("equation", r"x \le 3", "x < 3", F, F),
    ("equation", r"k = \frac{1}{2}", "0.5", T, F),
    # --- multiple choice
    ("choice", r"\text{(C)}", "C", T, F),
    ("choice", r"\text{(C)}", "(C)", T, F),
    ("choice", r"\text{(C)}", r"\textbf{(C)}", T, F),
    ("choice", "(C)", "D", F, F),
    ("choice", r"\text{(A)}", r"\text{(B)}", F, F),
    ("choice", "B", r"\text{B}", T, F),
    # --- text answers
    ("text", r"\text{Monday}", "Monday", T, F),
    ("text", r"\text{Monday}", "Tuesday", F, F),
    ("text", r"\text{east}", "East", T, F),
    ("text", r"\text{yes}", "no", F, F),
    ("text", r"\text{neither}", "neither", T, F),
    ("text", "odd", "even", F, F),
    ("text", "no", "on", F, F),
    # --- dataset gold styles (gold read with extract_gold(style="auto"))
    ("gold_style", "Each pays 5 * 425 = <<5*425=2125>>2125 dollars.\n#### 2,125", "2125", T, F),
    ("gold_style", "She has 18 left.\n#### 18", r"\$18.00", T, F),
    ("gold_style", "So -3.\n#### -3", "3", F, F),
    ("gold_style", "025", "25", T, F),
    ("gold_style", "073", "73.0", T, F),
    ("gold_style", "073", "37", F, F),
    ("gold_style", 27.0, "27", T, F),
    ("gold_style", 27.0, r"\frac{27}{1}", T, F),
    ("gold_style", 27.0, "26", F, F),
    ("gold_style", r"The total is $\boxed{\frac{14}{3}}$.", r"\frac{14}{3}", T, F),
    ("gold_style", r"The total is $\boxed{\frac{14}{3}}$.", r"\frac{3}{14}", F, F),
    # --- extraction from whole responses (pred_is_response=True)
    ("extract", "5", r"so the answer is \boxed{5}.", T, T),
    ("extract", r"\frac{1}{2}", r"we get $\boxed{\frac{1}{2}}$", T, T),
    ("extract", "3", r"first \boxed{2} then \boxed{3}", T, T),
    ("extract", "2", r"first \boxed{2} then \boxed{3}", F, T),
    ("extract", r"\{1,2\}", r"\boxed{\{1,2\}}", T, T),
    ("extract", "5", "The answer is 5.", F, T),
    ("extract", "5", r"\fbox{5}", T, T),
    ("extract", r"\frac{\sqrt{3}}{2}", r"so \boxed{\frac{\sqrt{3}}{2}} done", T, T),
    ("extract", "5", r"\boxed{5", F, T),
    ("extract", "10", r"\boxed 10", T, T),
]


def test_table_size_and_coverage():
    assert len(CASES) >= 150
    by_class = collections.defaultdict(set)
    for cls, _, _, expected, _ in CASES:
        by_class[cls].add(expected)
    missing = [c for c, v in by_class.items() if v != {True, False}]
    assert not missing, f"classes without both equal and unequal pairs: {missing}"


@pytest.fixture(scope="module")
def verdicts():
    from aci_jax.grading import Grader

    with Grader(num_workers=2) as grader:  # the real path: spawned workers, 5 s limit
        return grader.grade_batch([(g, p, r) for _, g, p, _, r in CASES])


@pytest.mark.parametrize("idx", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_case(verdicts, idx):
    cls, gold, pred, expected, _ = CASES[idx]
    res = verdicts[idx]
    assert res.status in ("ok", "parse_error")
    assert res.equal is expected, f"[{cls}] gold={gold!r} pred={pred!r}: got {res}"


def test_no_box_is_parse_error(verdicts):
    idx = next(i for i, c in enumerate(CASES) if c[2] == "The answer is 5.")
    assert verdicts[idx].status == "parse_error" and verdicts[idx].pred_extracted is None
