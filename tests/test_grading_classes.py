"""Held-out-style grading table for the classes of issue 17 (and what real model outputs look like).

Every class of the issue has equal AND not-equal pairs here, written as *different strings* from
the issue's examples (the held-out sets use other strings of the same kinds). Expected verdicts
are a careful human grader's, written by hand. The whole table must be right, with zero false
"equal" (a false "equal" is a reward the policy can learn to farm).
"""

from __future__ import annotations

import collections

import pytest

T, F = True, False

NEW_CASES = [
    # --- 1. false "equal" classes: division by zero, clock times, plain-text mixed numbers
    ("div_zero", r"\frac{2}{0}", r"\frac{9}{0}", F, F),
    ("div_zero", "6/0", "1/0", F, F),
    ("div_zero", r"\dfrac{-4}{0}", r"\frac{4}{0}", F, F),
    ("div_zero", r"\frac{0}{0}", r"\frac{0}{0}", T, F),          # the same string is the same answer
    ("div_zero", r"\frac{7}{0}", r"\infty", F, F),
    ("div_zero", r"\frac{3}{0}", "0", F, F),
    ("div_zero", r"\frac{x}{0}", r"\frac{y}{0}", F, F),
    ("div_zero", r"\frac{1}{2-2}", r"\frac{5}{3-3}", F, F),
    ("div_zero", "0/0", "1", F, F),
    ("div_zero", r"\frac{6}{3}", "2", T, F),
    ("clock", "10:00", "3:00", F, F),
    ("clock", "12:30", "6:15", F, F),
    ("clock", "4:00", "8:00", F, F),
    ("clock", "9:45", "9:45", T, F),
    ("clock", "7:30", "7:30:00", T, F),
    ("clock", "16:20", r"4:20\text{ PM}", T, F),
    ("clock", "16:20", r"4:20\text{ p.m.}", T, F),
    ("clock", "04:20", r"4:20 \text{ a.m.}", T, F),
    ("clock", "16:20", r"4:20\text{ AM}", F, F),
    ("clock", "9:05", "9:50", F, F),
    ("clock", "12:00", r"12:00\text{ noon}", F, F),   # not a time format we read: never equal by accident
    ("clock", r"12:15\text{ AM}", "0:15", T, F),
    ("clock", r"12:15\text{ PM}", "12:15", T, F),
    ("clock", "1:2", r"\frac{1}{2}", T, F),            # a ratio is still a ratio
    ("mixed_plain", "3 1/2", "7/2", T, F),
    ("mixed_plain", "3 1/2", "31/2", F, F),
    ("mixed_plain", "3 1/2", "3.5", T, F),
    ("mixed_plain", "5 3/8", r"\frac{43}{8}", T, F),
    ("mixed_plain", "5 3/8", r"\frac{53}{8}", F, F),
    ("mixed_plain", "-1 2/3", r"-\frac{5}{3}", T, F),
    ("mixed_plain", "-1 2/3", r"-\frac{1}{3}", F, F),
    ("mixed_plain", "12 3/4", "12.75", T, F),
    ("mixed_plain", "12 3/4", "123/4", F, F),
    ("mixed_plain", "1 1/8", "1.125", T, F),
    # --- 2. LaTeX that models write
    ("latex_short", r"\sqrt 5", r"\sqrt{5}", T, F),
    ("latex_short", r"2\sqrt 7", r"\sqrt{28}", T, F),
    ("latex_short", r"\sqrt 5", r"\sqrt{6}", F, F),
    ("latex_short", r"\frac 3 8", "0.375", T, F),
    ("latex_short", r"\frac 3 8", r"\frac{8}{3}", F, F),
    ("latex_short", r"\dfrac 2 5", r"\frac{2}{5}", T, F),
    ("latex_short", r"\frac 1{6}", r"\frac{1}{6}", T, F),
    ("latex_short", r"\frac{\pi} 3", r"\frac{\pi}{3}", T, F),
    ("latex_short", r"\sqrt[3] 64", "4", T, F),
    ("latex_short", r"\sqrt[4] 16", "2", T, F),
    ("latex_short", r"\sqrt[3] 64", "8", F, F),
    ("latex_short", r"\sqrt[3] 2", r"2^{1/3}", T, F),
    ("latex_short", r"\frac12 + \frac 1 3", r"\frac{5}{6}", T, F),
    ("latex_short", r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{3}}2", T, F),
    ("latex_short", r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{3}}3", F, F),
    ("latex_short", "-2", r"\sqrt[3]{-8}", T, F),             # the real cube root
    ("latex_short", "2", r"\sqrt[3]{-8}", F, F),
    ("latex_short", "4", r"(-8)^{2/3}", T, F),
    ("oxford", r"2, 5, \text{ and } 7", "2,5,7", T, F),
    ("oxford", r"-3, 0,\text{ and }8", r"\{-3, 0, 8\}", T, F),
    ("oxford", r"1, 2, and 3", "3,2,1", T, F),
    ("oxford", r"2, 5, \text{ and } 7", "2,5", F, F),
    ("oxford", r"-3, 0,\text{ and }8", "-3,8", F, F),
    ("oxford", r"4 \text{ and } 9", "4, 9", T, F),
    ("separators", "2;5;9", "2,5,9", T, F),
    ("separators", "2; 5; 9", "9, 5, 2", T, F),
    ("separators", "2;5;9", "2,5", F, F),
    ("separators", r"-4\text{or}6", "-4, 6", T, F),
    ("separators", r"x=-4\text{ or }x=6", "6,-4", T, F),
    ("separators", r"-4\text{or}6", "-4", F, F),
    ("separators", r"3\quad\text{or}\quad 5", "3,5", T, F),
    ("separators", r"\frac{1}{2}\text{or}-1", r"-1,\frac12", T, F),
    ("matrix_env", r"\left[\begin{array}{cc} 2 & -1 \\ 0 & 5 \end{array}\right]",
     r"\begin{pmatrix} 2 & -1 \\ 0 & 5 \end{pmatrix}", T, F),
    ("matrix_env", r"\left[\begin{array}{cc} 2 & -1 \\ 0 & 5 \end{array}\right]",
     r"\begin{pmatrix} 2 & 1 \\ 0 & 5 \end{pmatrix}", F, F),
    ("matrix_env", r"\left(\begin{array}{c} 3 \\ -7 \end{array}\right)", r"\begin{bmatrix} 3 \\ -7 \end{bmatrix}", T, F),
    ("matrix_env", r"\left(\begin{array}{c} 3 \\ -7 \end{array}\right)", "(3,-7)", T, F),
    ("matrix_env", r"\left(\begin{array}{c} 3 \\ -7 \end{array}\right)", "(-7,3)", F, F),
    ("matrix_env", r"\begin{bmatrix} 1 & 2 \end{bmatrix}", r"\begin{pmatrix} 1 & 2 \end{pmatrix}", T, F),
    ("matrix_expr", r"\begin{pmatrix} 2 & 0 \\ 1 & 3 \end{pmatrix} + \begin{pmatrix} 1 & 1 \\ 1 & 1 \end{pmatrix}",
     r"\begin{pmatrix} 3 & 1 \\ 2 & 4 \end{pmatrix}", T, F),
    ("matrix_expr", r"\begin{pmatrix} 2 & 0 \\ 1 & 3 \end{pmatrix} + \begin{pmatrix} 1 & 1 \\ 1 & 1 \end{pmatrix}",
     r"\begin{pmatrix} 3 & 1 \\ 2 & 3 \end{pmatrix}", F, F),
    ("matrix_expr", r"3\begin{pmatrix} 1 \\ -2 \end{pmatrix}", r"\begin{pmatrix} 3 \\ -6 \end{pmatrix}", T, F),
    ("matrix_expr", r"3\begin{pmatrix} 1 \\ -2 \end{pmatrix}", r"\begin{pmatrix} 3 \\ -2 \end{pmatrix}", F, F),
    ("matrix_expr", r"\begin{pmatrix} 1 & 1 \\ 0 & 1 \end{pmatrix}\begin{pmatrix} 2 \\ 3 \end{pmatrix}",
     r"\begin{pmatrix} 5 \\ 3 \end{pmatrix}", T, F),
    ("matrix_expr", r"\begin{pmatrix} 1 & 1 \\ 0 & 1 \end{pmatrix}^{3}", r"\begin{pmatrix} 1 & 3 \\ 0 & 1 \end{pmatrix}", T, F),
    ("matrix_expr", r"\begin{pmatrix} 1 & 1 \\ 0 & 1 \end{pmatrix}^{3}", r"\begin{pmatrix} 1 & 1 \\ 0 & 1 \end{pmatrix}", F, F),
    ("matrix_expr", r"\begin{pmatrix} 4 \\ 1 \end{pmatrix} - \begin{pmatrix} 1 \\ 1 \end{pmatrix}", "(3,0)", T, F),
    ("matrix_expr", r"\frac{1}{2}\begin{pmatrix} 2 & 4 \\ 6 & 8 \end{pmatrix}", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", T, F),
    ("trig_degrees", r"\cos 60^\circ", r"\frac{1}{2}", T, F),
    ("trig_degrees", r"\tan 45^{\circ}", "1", T, F),
    ("trig_degrees", r"\sin 60^\circ", r"\frac{\sqrt{3}}{2}", T, F),
    ("trig_degrees", r"\sin(90^\circ)", "1", T, F),
    ("trig_degrees", r"2\cos 30^\circ", r"\sqrt{3}", T, F),
    ("trig_degrees", r"\cos 60^\circ", r"\frac{\sqrt{3}}{2}", F, F),
    ("trig_degrees", r"\tan 45^{\circ}", r"\tan 45", F, F),      # radians
    ("trig_degrees", r"\sin 60^\circ", r"\frac{1}{2}", F, F),
    ("trig_degrees", r"\sin 60^\circ", r"\cos 30^\circ", T, F),
    ("trig_degrees", r"\frac12", r"\cos{60^\circ}", T, F),
    ("trig_degrees", r"-\frac12", r"\sin(-30^\circ)", T, F),
    ("trig_degrees", r"\frac12", r"\sin(-30^\circ)", F, F),
    ("trig_degrees", r"\frac12", r"\sin 30°", T, F),
    ("mixed_latex", r"2 \frac{3}{5}", r"\frac{13}{5}", T, F),
    ("mixed_latex", r"2 \frac{3}{5}", "2.6", T, F),
    ("mixed_latex", r"2 \frac{3}{5}", r"\frac{6}{5}", F, F),
    ("mixed_latex", r"2 \dfrac{3}{5}", r"\frac{23}{5}", F, F),
    ("mixed_latex", r"7\ \frac{1}{2}", "7.5", T, F),
    ("mixed_latex", r"-4 \frac{1}{4}", "-4.25", T, F),
    ("mixed_latex", r"-4 \frac{1}{4}", "-3.75", F, F),
    ("number_words", r"5\text{ million}", "5000000", T, F),
    ("number_words", r"5\text{ million}", "5000", F, F),
    ("number_words", r"1.2 \text{ billion}", "1200000000", T, F),
    ("number_words", r"1.2 \text{ billion}", "120000000", F, F),
    ("number_words", r"3\text{ thousand}", "3000", T, F),
    ("number_words", r"3\text{ thousand}", "300", F, F),
    ("number_words", r"\$4\text{ million}", "4,000,000", T, F),
    # --- 3. labelled answers
    ("label", "(x,y)=(2,-3)", "(2,-3)", T, F),
    ("label", "(x,y)=(2,-3)", "(-3,2)", F, F),
    ("label", "(2,-3)", "(p,q) = (2,-3)", T, F),
    ("label", "(a,b,c)=(1,2,3)", "(1,2,3)", T, F),
    ("label", "(a,b,c)=(1,2,3)", "(1,2,4)", F, F),
    ("label", "|AB|=12", "12", T, F),
    ("label", "|AB|=12", "13", F, F),
    ("label", "15", "|\\vec{v}| = 15", T, F),
    ("label", "AC=10", "10", T, F),
    ("label", "AC=10", "11", F, F),
    ("label", r"\angle ABC = 40", "40", T, F),
    ("label", "A_1:A_2=2:7", "2:7", T, F),
    ("label", "A_1:A_2=2:7", "7:2", F, F),
    ("label", "AB=4, CD=11", "4, 11", T, F),
    ("label", "AB=4, CD=11", "4, 12", F, F),
    ("label", "m+n=17", "17", T, F),
    ("label", "17", "a+b=17", T, F),
    ("label", "m+n=17", "18", F, F),
    ("label", "f(x)=2x+5", "y=2x+5", T, F),
    ("label", "h(x)=x^2-1", "y=x^2-1", T, F),
    ("label", "f(x)=2x+5", "y=2x-5", F, F),
    ("label", "f(x)=2x+5", "2x+5", T, F),
    ("label", "f^{-1}(x)=3x-2", "y=3x-2", T, F),
    ("label", "f(3)=7", "7", T, F),
    ("label", "7", "g(-2) = 7", T, F),
    ("label", "f(3)=7", "8", F, F),
    ("label", "x = 5+5+1 = 11", "11", T, F),
    ("label", "xy=6", "6", F, F),         # a curve
    ("label", "x+y=1", "1", F, F),        # the equation of a line, not a labelled value
    ("label", "7", r"\overline{PQ} = 7", T, F),
    ("label", "45", r"m\angle B = 45^\circ", T, F),
    ("label", "24", "[ABC]=24", T, F),
    ("label", r"\frac16", r"P(E) = \frac{1}{6}", T, F),
    ("label", r"\frac16", r"P(E) = \frac{1}{5}", F, F),
    ("label", "(2,3)", r"x=2 \text{ and } y=3", T, F),
    ("label", "2x=6", "6", F, F),
    ("label", "x=3", "y=3", F, F),
    # --- 4. answers split over several boxes (whole responses)
    ("multi_box", r"\{1,3,5\}", r"The roots are $\boxed{1}$, $\boxed{3}$, $\boxed{5}$.", T, T),
    ("multi_box", "1,3,5", r"so $x=\boxed{1}, \boxed{3}, \boxed{5}$", T, T),
    ("multi_box", "(2,5),(5,2)", r"Hence \boxed{(2,5)} \text{ or } \boxed{(5,2)}.", T, T),
    ("multi_box", "(2,5),(5,2)", r"Hence $\boxed{(2,5)}$ and $\boxed{(5,2)}$.", T, T),
    ("multi_box", "-2,2", r"\[\boxed{-2}\quad\text{and}\quad\boxed{2}\]", T, T),
    ("multi_box", r"\{1,3,5\}", r"The roots are $\boxed{1}$, $\boxed{3}$.", F, T),
    ("multi_box", "3", r"It could be \boxed{2}, \boxed{3}, \boxed{4}.", F, T),   # boxing every candidate
    ("multi_box", "4", r"\boxed{1} \boxed{2} \boxed{3} \boxed{4} \boxed{5}", F, T),
    ("multi_box", "5", r"First try \boxed{3}. That was wrong, so the answer is \boxed{5}.", T, T),
    ("multi_box", "3", r"First try \boxed{3}. That was wrong, so the answer is \boxed{5}.", F, T),
    ("multi_box", "7", r"We get \boxed{7}.<|im_end|>", T, T),
    ("multi_box", "(2,5),(5,2)", r"$\boxed{(2,5)}$ and $\boxed{(5,3)}$", F, T),
    # --- 5. relations, times, units, tolerance
    ("relation", "x < 4", "-x > -4", T, F),
    ("relation", "x < 4", "-x < -4", F, F),
    ("relation", r"x \geq -1", r"-2x \leq 2", T, F),
    ("relation", r"x \geq -1", r"-2x < 2", F, F),
    ("relation", "y > 3", "2y > 6", T, F),
    ("relation", r"x \le 5", r"5 \ge x", T, F),
    ("relation", "x >= 5", r"x \geq 5", T, F),
    ("relation", "x <= 2", "x < 2", F, F),
    ("relation", r"x \neq 4", r"(-\infty,4)\cup(4,\infty)", T, F),
    ("relation", r"x \neq 4", r"(-\infty,4]\cup(4,\infty)", F, F),
    ("relation", r"2 < |w| < 5", r"(-5,-2)\cup(2,5)", T, F),
    ("relation", r"2 < |w| < 5", "(2,5)", F, F),
    ("relation", r"|x| \le 3", "[-3,3]", T, F),
    ("relation", r"|x| \le 3", "(-3,3)", F, F),
    ("relation", r"|x| > 1", r"(-\infty,-1)\cup(1,\infty)", T, F),
    ("relation", r"|x| > 1", r"(1,\infty)", F, F),
    ("relation", r"1 \le |z| \le 4", r"[-4,-1]\cup[1,4]", T, F),
    ("relation", r"1 \le |z| \le 4", r"[-4,-1)\cup[1,4]", F, F),
    ("relation", r"-3 < 2x+1 < 5", "(-2,2)", T, F),
    ("relation", r"-3 < 2x+1 < 5", "[-2,2]", F, F),
    ("relation", r"x > -1 \text{ and } x < 5", "(-1,5)", T, F),   # "and" between relations: both hold
    ("relation", r"x > -1 \text{ and } x < 5", r"\mathbb{R}", F, F),
    ("relation", r"x < -1 \text{ or } x > 5", r"(-\infty,-1)\cup(5,\infty)", T, F),
    ("relation", r"|w| > 2 \text{ and } |w| \le 3", r"[-3,-2)\cup(2,3]", T, F),
    ("relation", r"|w| > 2 \text{ and } |w| \le 3", "(2,3]", F, F),
    ("time", "9:15", "9:15:00", T, F),
    ("time", "9:15", "9:15:30", F, F),
    ("time", "21:40", r"9:40\text{ P.M.}", T, F),
    ("time", "21:40", r"9:40 pm", T, F),
    ("time", "21:40", r"9:40\text{ a.m.}", F, F),
    ("time", "21:40", "21:04", F, F),
    ("time", "8:00", r"8\text{ AM}", T, F),
    ("time", "20:00", r"8\text{ AM}", F, F),
    ("percent", r"42\%", "42 pct", T, F),
    ("percent", r"42\%", "42 percent", T, F),
    ("percent", r"42\%", r"42\text{ percent}", T, F),
    ("percent", r"42\%", "24 percent", F, F),
    ("percent", r"42\%", "4.2 pct", F, F),
    ("percent", r"12.5\%", "12.5 per cent", T, F),
    ("tolerance", "5", "5.0003", F, F),
    ("tolerance", "5", "5.00", T, F),
    ("tolerance", "2468.13", "2468.14", F, F),
    ("tolerance", "2468.13", "2468.130", T, F),
    ("tolerance", "99999", "99999.5", F, F),
    ("tolerance", "0.125", "0.1251", F, F),
    ("tolerance", "100000", "100001", F, F),
    ("tolerance", r"\frac{5}{7}", "0.714286", T, F),
    ("tolerance", r"\frac{5}{7}", "0.7143", T, F),
    ("tolerance", r"\frac{5}{7}", "0.71428", T, F),        # truncated: still the value to 5 places
    ("tolerance", r"\frac{5}{7}", "0.7141", F, F),
    ("tolerance", r"\frac{5}{7}", "0.71", F, F),
    ("tolerance", r"\sqrt{3}", "1.73205", T, F),
    ("tolerance", r"\sqrt{3}", "1.7320", T, F),
    ("tolerance", r"\sqrt{3}", "1.7330", F, F),
    ("tolerance", r"10\pi", "31.4159", T, F),
    ("tolerance", r"10\pi", "31.4259", F, F),
    ("tolerance", "7x", "7.0002x", F, F),
    ("tolerance", "3.14159", r"\pi", T, F),
    # --- special tokens after the answer
    ("special_tokens", "29", "29<|im_end|>", T, F),
    ("special_tokens", "29", "29<|endoftext|>", T, F),
    ("special_tokens", "29", "29 <|eot_id|>", T, F),
    ("special_tokens", "29", "28<|im_end|>", F, F),
    ("special_tokens", r"\frac{1}{2}", r"\boxed{\frac{1}{2}}<|im_end|>", T, T),
    ("special_tokens", "29", r"\boxed{29}</s>", T, T),
    ("special_tokens", "29", r"\boxed{28}<|eot_id|>", F, T),
    ("special_tokens", "2, 3", r"\boxed{2}, \boxed{3}<|im_end|>", T, T),
    # --- what real model outputs look like (MATH500 / GSM8K)
    ("real", r"\dfrac{7}{20}", "0.35", T, F),
    ("real", r"\dfrac{7}{20}", "0.36", F, F),
    ("real", r"6\text{ cm}^2", "6", T, F),
    ("real", r"6\text{ cm}^2", "7", F, F),
    ("real", r"\$1,\!250", "1250", T, F),
    ("real", r"\$1,\!250", "1250.00", T, F),
    ("real", r"\$1,\!250", "125", F, F),
    ("real", "14{,}916", "14916", T, F),
    ("real", "14{,}916", "14917", F, F),
    ("real", "1 000 000", "1000000", T, F),
    ("real", "1, 000", "1000", F, F),                      # a list of two numbers, not a thousand
    ("real", r"30^\circ", "30", T, F),
    ("real", r"30^\circ", "60", F, F),
    ("real", r"25\%", "25", T, F),
    ("real", r"\pm 3", "3, -3", T, F),
    ("real", r"\pm 3", "3", F, F),
    ("real", r"\{-1, 4\}", r"\{4, -1\}", T, F),
    ("real", r"[2, \infty)", r"x \geq 2", T, F),
    ("real", r"(-\infty, 0)", r"x < 0", T, F),
    ("real", r"(-\infty, 0)", r"x \le 0", F, F),
    ("real", "1011_2", "1011", T, F),
    ("real", "1011_2", "1101", F, F),
    ("real", r"0.\overline{6}", r"\frac{2}{3}", T, F),
    ("real", r"0.\overline{6}", "0.6", F, F),
    ("real", r"\frac{9}{4}\pi", r"\frac94\pi", T, F),
    ("real", r"\sqrt{2}+\sqrt{5}", r"\sqrt 2+\sqrt 5", T, F),
    ("real", r"125\textnormal{ miles}", "125", T, F),
    ("real", "x=11", "x = 5+5+1 = 11", T, F),
    ("real", "11", r"x \approx 11", T, F),
    ("real", "7 = 11a+c", "11a+c", F, F),
    ("real", "2x+z=1", "1", F, F),
    ("real", r"\frac{x}{4}+\frac{y}{3}=1", "3x+4y=12", T, F),
    ("real", r"\tan^2 y + 1", r"\sec^2 y", T, F),
    ("real", r"\frac{1}{12}", "0.0833333333", T, F),
    ("real", r"(\frac{3}{5},\frac{8}{3}]", "(0.6,2.6667]", T, F),
    ("real", "2", r"\frac{1+\sqrt{5}}{2}", F, F),
    ("real", "1.5e3", "1500", T, F),
    ("real", r"2.5 \times 10^{4}", "25000", T, F),
    ("real", r"2.5 \times 10^{4}", "2500", F, F),
    ("real", r"\text{(D)}", r"\textbf{(D) }", T, F),
    ("real", r"\text{(D)}", "(E)", F, F),
    ("real", r"\text{Tuesday}", r"\text{tuesday}", T, F),
    ("real", "12", "The answer is 12", F, F),                 # a bare pred is not a response
    ("real", "3 4", "34", F, F),                              # two numbers side by side are not 34
    ("real", "12 500", "12500", T, F),                        # a space as the thousands separator
    ("real", r"\{\}", r"\emptyset", T, F),
    ("real", r"\{\}", r"\{0\}", F, F),
    ("real", "(4;-1;2)", "(4,-1,2)", T, F),
    ("real", "(4;-1;2)", "(4,1,2)", F, F),
    ("real", "(3,8)or(8,3)", "(8,3),(3,8)", T, F),
    ("real", "(3,8)or(8,3)", "(8,3)", F, F),
    ("real", "(5,-2)", "x=5, y=-2", T, F),
    ("real", "(5,-2)", "y=-2, x=5", T, F),
    ("real", "(5,-2)", "x=-2, y=5", F, F),
    ("real", "28 percentage", "28", T, F),
    ("real", "12 cookies", "12", T, F),
    ("real", r"17\text{ any text}", "17", T, F),
    ("real", "10 choose 3", "10", F, F),
    ("real", "1.5 dozen", "18", T, F),
    ("real", "185\\\\", "185", T, F),
    ("real", r"\frac{\sqrt{3}}{3} \approx 0.577", r"\frac{1}{\sqrt3}", T, F),
    ("real", r"\frac{\sqrt{3}}{3} \approx 0.577", "0.577", F, F),
    ("real", "C. x = 42", r"\text{(C)}", T, F),
    ("real", "C. x = 42", "D", F, F),
    ("real", r"(3, \frac{\pi}{2})", r"\\left( 3, \\frac{\\pi}{2} \\right)", T, F),   # escaped twice
    ("real", r"(1, \pi)", r"\begin{pmatrix}1\\\pi\end{pmatrix}", T, F),      # a row break before \pi
    ("real", r"(1, \pi)", r"\begin{pmatrix}1\\\pi^2\end{pmatrix}", F, F),
    ("real", "3s^2", "3*s**2", T, F),                         # Python's power
    ("real", "3s^2", "3*s**3", F, F),
    ("real", "42", "**42**", T, F),                           # markdown bold
    ("real", r"(-\sqrt{3},\sqrt{3})", "(-1.732, 1.732)", T, F),
    ("real", r"(-\sqrt{3},\sqrt{3})", "(-1.7, 1.7)", F, F),
    ("number_words", "2000000", "2 million dollars", T, F),
    ("number_words", "2", "2 million dollars", F, F),
    ("separators", "1, 2", "1or2", T, F),
    ("separators", "12", "1or2", F, F),
    # a percent is also the fraction it stands for
    ("percent_value", r"40\%", "0.4", T, F),
    ("percent_value", r"40\%", r"\frac{2}{5}", T, F),
    ("percent_value", r"40\%", "0.04", F, F),
    ("percent_value", "0.075", r"7.5\%", T, F),
    ("percent_value", "0.075", r"7.6\%", F, F),
    ("percent_value", "0.4", "40", F, F),                    # without the sign, 40 is forty
    # gold answers written over several boxes, and the opt-in plain-text fallback
    ("gold_boxes", r"The solutions are $\boxed{-3}$ and $\boxed{3}$.", "3,-3", T, F),
    ("gold_boxes", r"The solutions are $\boxed{-3}$ and $\boxed{3}$.", "3", F, F),
]


# (gold, response, expected) graded with fallback=True: no box, "the answer is" phrase.
FALLBACK_CASES = [
    ("28", r"Final Answer: The final answer is $28$. I hope it is correct.", T),
    (r"\frac{2}{3}", r"So the answer is \(\frac{2}{3}\), as claimed.", T),
    ("3.5", "Thus the answer is 3.5. Next we check it.", T),
    ("29", "The answer is 29<|im_end|>", T),
    ("29", "The answer is 29.<|endoftext|>", T),
    ("29", "The answer is 28<|im_end|>", F),
    ("28", r"Final Answer: The final answer is $27$. I hope it is correct.", F),
]


def test_every_class_has_both_verdicts():
    by_class = collections.defaultdict(set)
    for cls, _, _, expected, _ in NEW_CASES:
        by_class[cls].add(expected)
    missing = [c for c, v in by_class.items() if v != {True, False}]
    assert not missing, f"classes without both equal and unequal pairs: {missing}"
    assert len(NEW_CASES) >= 250


@pytest.fixture(scope="module")
def verdicts():
    from aci_jax.grading import Grader

    with Grader(num_workers=2) as grader:  # the real path: spawned workers, 5 s limit
        return grader.grade_batch([(g, p, r) for _, g, p, _, r in NEW_CASES])


@pytest.mark.parametrize("idx", range(len(NEW_CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(NEW_CASES)])
def test_case(verdicts, idx):
    cls, gold, pred, expected, _ = NEW_CASES[idx]
    res = verdicts[idx]
    assert res.status in ("ok", "parse_error")
    assert res.equal is expected, f"[{cls}] gold={gold!r} pred={pred!r}: got {res}"


@pytest.fixture(scope="module")
def fallback_verdicts():
    from aci_jax.grading import Grader

    with Grader(num_workers=1, fallback=True) as grader:
        return grader.grade_batch([(g, r, True) for g, r, _ in FALLBACK_CASES])


@pytest.mark.parametrize("idx", range(len(FALLBACK_CASES)))
def test_fallback_answer_phrase(fallback_verdicts, idx):
    gold, response, expected = FALLBACK_CASES[idx]
    assert fallback_verdicts[idx].equal is expected, (gold, response, fallback_verdicts[idx])
