"""String-level normalisation of MATH-style answers (rules documented in docs/grading.md).

``normalize`` maps notational variants of one answer onto one string: ``\\dfrac``->``\\frac``,
``\\left``/``\\right`` dropped, spacing commands dropped, ``\\text{}`` unwrapped, degree/percent/
dollar signs and trailing units dropped, ``10,\\!080``->``10080``, ``52_8``->``52``,
``1\\frac{4}{5}``->``(1+\\frac{4}{5})``, ``\\frac12``->``\\frac{1}{2}``, ``x \\in S``->``S``.
``key`` folds the spaces of a string for comparing it (all but one between two digits).
Every regex here is linear (no nested quantifiers), so hostile strings cannot make it backtrack.
"""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["normalize", "key", "strip_text_wrappers", "match_braces", "brace_stats", "UNIT_WORDS", "SPECIAL_TOKENS"]

# Unit words dropped when they trail a quantity ("5 cm", "12\text{ inches}", "3 square units").
UNIT_WORDS = (
    "square units|square unit|sq units|cubic units|units|unit|square feet|square inches|"
    "square meters|square centimeters|square cm|sq ft|cm|mm|km|m|meters|meter|centimeters|"
    "centimeter|kilometers|inches|inch|in|feet|foot|ft|yards|yard|yd|miles|mile|mi|mph|"
    "degrees|degree|deg|radians|dollars|dollar|cents|cent|hours|hour|hrs|hr|minutes|minute|min|"
    "seconds|second|sec|s|days|day|weeks|week|months|month|years|year|pounds|pound|lbs|lb|"
    "ounces|ounce|oz|kg|grams|gram|g|liters|liter|l|ml|gallons|gallon|people|students|ways|"
    "percentage|percent|per cent|pct|points|point|times|marbles|apples|coins|cups|pages|books|boxes|minutes"
)
_UNIT_TAIL = re.compile(r"^(.*?[0-9}).)])\s*(?:\\text\{\s*(?:" + UNIT_WORDS + r")\s*\}|\s(?:" + UNIT_WORDS
                        + r"))(?:\^\{?[23]\}?)?$")
_TEXT_CMDS = ("\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm", "\\mathbf", "\\mathit",
              "\\mbox", "\\textnormal", "\\operatorname", "\\mathsf", "\\textsf")
_SPACING = ("\\!", "\\,", "\\;", "\\:", "\\>", "\\quad", "\\qquad", "~", "\\displaystyle",
            "\\textstyle", "\\limits")
_SIZING = ("\\left", "\\right", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\biggl", "\\biggr",
           "\\big", "\\Big", "\\bigg", "\\Bigg")
_THOUSANDS = re.compile(r"^([+-]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+)(\.\d+)?$")
_BASE_SUB = re.compile(r"^([0-9A-Fa-f]+)_\{?(\d{1,2})\}?$")
_MIXED = re.compile(r"(^|[^\w}^_.])(\d+)\\frac\{(\d+)\}\{(\d+)\}")
# One-token arguments, as TeX reads them: \frac12, \frac 1 4, \frac ab, \frac{1} 4, \sqrt 3, \sqrt[3] 27.
_FRAC_SHORT = re.compile(r"\\frac(?: ?(\d)| ([a-zA-Z])) ?([0-9a-zA-Z])")
_FRAC_SHORT1 = re.compile(r"\\frac(?: ?(\d)| ([a-zA-Z])) ?\{")
_FRAC_SHORT2 = re.compile(r"\\frac ?\{([^{}]*)\} ?([0-9a-zA-Z])")
_SQRT_SHORT = re.compile(r"\\sqrt(\[[^\[\]{}]{1,20}\])?(?: ?(\d+)| ([a-zA-Z])|(?<=\]) ?([a-zA-Z]))")
# A command written with two backslashes (a string escaped twice on its way, "\\\\left("): only
# commands a matrix row break "\\\\" is never followed by without a space in answers.
_DOUBLE_ESCAPED = re.compile(r"(?<!\\)\\\\(?=(?:left|right|frac|dfrac|tfrac|sqrt|leq?|geq?|neq?|pi|cdot|times|infty|"
                             r"in|text|mathrm|boxed|pm|cup|cap)(?![a-zA-Z]))")
_RELATION = re.compile(r"<|>|\\[lg]eq?(?![a-zA-Z])|\\[lg]eqslant|\\[lg]t(?![a-zA-Z])|≤|≥")
_AND_RELATIONS = re.compile(r"\s*(?:\\(?:text|textbf|textrm|mbox|mathrm) ?\{ ?and ?\}|\\land(?![a-zA-Z])|"
                            r"\\wedge(?![a-zA-Z])|(?<=\s)and(?=\s))\s*")
_PY_POW = re.compile(r"(?<=[\w)}])\*\*(?=[\w({-])")
# Tokens of chat templates that a decoder may leave after the answer (<|im_end|>, </s>, ...).
SPECIAL_TOKENS = re.compile(r"<\|[^|<>\s]{1,40}\|>|<\uff5c[^\uff5c<>]{1,40}\uff5c>|</?s>"
                            r"|<(?:eos|bos|pad|unk|end_of_turn|start_of_turn)>")
# A trig function of a degree angle: \sin 30^\circ -> \sin(\frac{30\pi}{180}) (before degrees are dropped).
_DEG_ANGLE = r"(-?\d{1,6}(?:\.\d{1,6})?) ?(?:\^ ?\{? ?\\circ ?\}?|\^\{?\\degree\}?|\\degree|\u00b0)"
_TRIG_DEG = re.compile(r"\\(sin|cos|tan|sec|csc|cot)(\^\{?[0-9]\}?)? ?(?:\( ?" + _DEG_ANGLE + r" ?\)|\{ ?" + _DEG_ANGLE
                       + r" ?\}|" + _DEG_ANGLE + ")")
# Mixed numbers written with a space: 3 \frac{1}{4}, 2 1/4 (proper fractions only; 2 5/4 is left alone).
_MIXED_SP = re.compile(r"(^|[\s,;(\[{=])([+-]?)(\d+) (?:\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))(?=$|[\s,;)\]}])")
# Number words: 2 million, 3.5\text{ billion}.
_SCALE = {"dozen": 12, "hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_SCALE_WORD = re.compile(r"^([+-]?)(\d{1,15}(?:\.\d{1,15})?) ?(dozen|hundred|thousand|million|billion|trillion)"
                         r"(?: [A-Za-z]{2,20}){0,2}$", re.IGNORECASE)  # "2 million dollars"
# Words after a plain number ("12 cookies", "17\text{ any text}"): what is counted, not part of the value.
_WORD_TAIL = re.compile(r"^([+-]?(?:\d[\d,]*(?:\.\d+)?|\.\d+|\\frac\{\d+\}\{\d+\}))"
                        r" ([A-Za-z]{3,}(?: [A-Za-z]{2,}){0,2})$")
_NOT_A_NOUN = {"and", "or", "not", "but", "less", "more", "than", "over", "plus", "minus", "times", "divided",
               "squared", "cubed", "percent", "percentage", "pct", "factorial", "choose", "mod", "modulo",
               "power", "root", "roots", "inverse", "half", "halves", "third", "thirds", "fourth", "fourths",
               "quarter", "quarters", "fifth", "fifths", "sixth", "sixths", "seventh", "sevenths", "eighth",
               "eighths", "ninth", "ninths", "tenth", "tenths", "hundredth", "hundredths", "thousandths",
               "dozen", "dozens", "hundred", "hundreds", "thousand", "thousands", "million", "millions",
               "billion", "billions", "trillion"}
# A choice letter followed by its option text: "C. x = 42", "(B) 7".
_CHOICE_TEXT = re.compile(r"^(?:\(([A-E])\)|([A-E])[.)]) \S")
# "or"/"and" as list separators, also glued to their neighbours by \text{or}; an Oxford comma before them.
_TEXT_CONJ = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm) ?\{ ?(?:or|and) ?\}")
_CONJ = re.compile(r"(?:\s*,)?\s+(?:or|and)\s+|(?:\s*,)?\s*\x00\s*(?:,\s*)?|(?<=[)\]\d])\s?(?:or|and)\s?(?=[(\[\d-])")
# A matrix environment wrapped in brackets: \left[\begin{array}{cc}...\end{array}\right].
_BRACKETED_ENV = re.compile(r"^[\[(] ?(\\begin\{(array|matrix|smallmatrix)\}.*\\end\{\2\}) ?[\])]$")
_IN_PREFIX = re.compile(r"^[a-zA-Z]\s*\\in\s*")
# A backslash that is itself escaped (the "\\\\" row separator of a matrix) starts no command.
_DELIMS = re.compile(r"(?<!\\)\\[()\[\]]")
_SPACES = re.compile(r"(?<!\\)\\[!,;:>]")
_NEGSPACE = re.compile(r"(?<!\\)\\!\s*")
_BSPACE = re.compile(r"(?<!\\)\\ ")
_INT_DOT0 = re.compile(r"^([+-]?\d+)\.0+$")
_LE = re.compile(r"\\le(?![a-zA-Z])")
_GE = re.compile(r"\\ge(?![a-zA-Z])")
_CHOICE = re.compile(r"^\(?\s*([A-E])\s*\)?$")


def match_braces(text: str) -> dict[int, int]:
    """{index of an unescaped '{': index of its matching '}'} for every closed group; one pass."""
    stack: list[int] = []
    match: dict[int, int] = {}
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character (\{, \}, \\)
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def brace_stats(s: str) -> tuple[int, bool]:
    """(maximum nesting depth of unescaped ``{}``, whether they are balanced)."""
    depth = best = 0
    ok = True
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
            best = max(best, depth)
        elif c == "}":
            depth -= 1
            ok = ok and depth >= 0
        i += 1
    return best, ok and depth == 0


_TEXT_RE = re.compile(r"\\(?:" + "|".join(c[1:] for c in _TEXT_CMDS) + r")(?![a-zA-Z]) *\{")


def strip_text_wrappers(s: str) -> str:
    """Replace ``\\text{X}`` (and ``\\mathrm``, ``\\textbf``, ..., nested too) by ``X`` in one pass."""
    if "\\" not in s:
        return s
    match = match_braces(s)
    drop = set()
    for m in _TEXT_RE.finditer(s):
        close = match.get(m.end() - 1)
        if close is not None:
            drop.update(range(m.start(), m.end()))
            drop.add(close)
    return "".join(c for i, c in enumerate(s) if i not in drop) if drop else s


def _frac_bare_denominator(s: str) -> str:
    """``\\frac{\\sqrt{3}}2`` -> ``\\frac{\\sqrt{3}}{2}``: a one-token denominator after a braced
    numerator that itself has braces (the regex above handles flat numerators). One pass."""
    match = match_braces(s)
    inserts = []
    for m in re.finditer(r"\\frac ?\{", s):
        close = match.get(m.end() - 1)
        if close is None:
            continue
        k = close + 1
        if k < len(s) and s[k] == " ":
            k += 1
        if k < len(s) and (s[k].isdigit() or s[k].isalpha()):
            inserts.append((close + 1, k, s[k]))
    if not inserts:
        return s
    out, pos = [], 0
    for start, k, ch in sorted(inserts):  # one join, not one copy of the string per insert
        out += [s[pos:start], "{", ch, "}"]
        pos = k + 1
    out.append(s[pos:])
    return "".join(out)


def _mixed_spaced(m: re.Match) -> str:
    lead, sign, whole = m.group(1), m.group(2), m.group(3)
    num, den = (m.group(4), m.group(5)) if m.group(4) is not None else (m.group(6), m.group(7))
    if not int(num) < int(den):
        return m.group(0)
    return f"{lead}{sign}({whole}+\\frac{{{num}}}{{{den}}})"


_LONE_LABEL = re.compile(r"^[a-zA-Z](?:_\{?[a-zA-Z0-9]{1,3}\}?)?$")


def _approx(s: str) -> str:
    """``a \\approx b``: the exact ``a`` is the answer and ``b`` a comment on it, unless ``a`` only
    names the value (``x \\approx 11`` is ``x = 11``) or is missing (``\\approx 3.14`` is ``3.14``)."""
    parts = s.split("\\approx")
    lhs = parts[0].strip()
    if not lhs:
        return parts[-1].strip()
    if _LONE_LABEL.match(lhs):
        return f"{lhs} = {parts[-1].strip()}"
    return lhs


def normalize(s: str) -> str:
    """Canonical string for a MATH-style answer (see module docstring). Never raises on str input."""
    s = SPECIAL_TOKENS.sub(" ", s)
    s = _DOUBLE_ESCAPED.sub(r"\\", s)  # \\frac from a doubly escaped string is \frac
    s = " ".join(s.split())  # first: no regex below ever sees a run of whitespace
    # Math-mode delimiters.
    s = _DELIMS.sub("", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = s.replace("{,}", ",")  # 14{,}916: TeX's way to keep a thousands comma tight
    if len(s) > 4 and s.startswith("**") and s.endswith("**"):
        s = s[2:-2]  # markdown bold around the whole answer
    s = _PY_POW.sub("^", s)  # 3*s**2: Python's power
    s = _NEGSPACE.sub("", s)  # "10,\\! 080": \! glues digit groups, spaces after it included
    s = _SPACES.sub("", s)
    for c in _SPACING[5:]:
        s = s.replace(c, "")
    s = _BSPACE.sub(" ", s)
    for c in _SIZING:
        # \left( -> (, \left\{ -> \{, \left. -> (nothing)
        s = s.replace(c + ".", "").replace(c, "")
    # Degrees, percent (a trig function of a degree angle first gets its angle in radians).
    s = _TRIG_DEG.sub(lambda m: f"\\{m.group(1)}{m.group(2) or ''}(\\frac{{{m.group(3) or m.group(4) or m.group(5)}"
                      f"\\pi}}{{180}})", s)
    for c in ("^{\\circ}", "^\\circ", "{}^\\circ", "^{\\circ }", "\\circ", "°", "\\degree"):
        s = s.replace(c, "")
    s = s.replace("\\%", "").replace("%", "")
    # Units in \text{} after a quantity, before \text is unwrapped.
    s = s.strip()
    m = _UNIT_TAIL.match(s)
    if m:
        s = m.group(1)
    if _RELATION.search(s):  # "x > 1 and x < 5" is an intersection, not a list of answers
        s = _AND_RELATIONS.sub(r" \\wedge ", s)
    s = _TEXT_CONJ.sub("\x00", s)
    s = strip_text_wrappers(s)
    s = " ".join(s.split())  # unwrapping may have joined spaces; _CONJ must see single ones
    # "or"/"and" between answers are list separators (an Oxford comma before them is one separator).
    s = _CONJ.sub(",", s)
    s = s.replace("infinity", "\\infty")
    s = _LE.sub(r"\\leq", s)
    s = _GE.sub(r"\\geq", s)
    s = s.replace("\\lt", "<").replace("\\gt", ">").replace("\\leqslant", "\\leq").replace("\\geqslant", "\\geq")
    s = s.replace("≤", "\\leq").replace("≥", "\\geq")
    if "\\approx" in s:
        s = _approx(s)
    s = s.replace(">=", "\\geq ").replace("<=", "\\leq ").replace("!=", "\\ne ").replace("≠", "\\ne ")
    s = s.replace("\\neq", "\\ne").replace("\\emptyset", "\\varnothing")
    if s.strip() in ("\\{\\}", "\\{ \\}", "{}"):
        s = "\\varnothing"
    s = _FRAC_SHORT.sub(lambda m: f"\\frac{{{m.group(1) or m.group(2)}}}{{{m.group(3)}}}", s)
    s = _FRAC_SHORT1.sub(lambda m: f"\\frac{{{m.group(1) or m.group(2)}}}{{", s)
    s = _FRAC_SHORT2.sub(r"\\frac{\1}{\2}", s)
    if "\\frac{" in s:
        s = _frac_bare_denominator(s)
    s = _SQRT_SHORT.sub(lambda m: f"\\sqrt{m.group(1) or ''}{{{m.group(2) or m.group(3) or m.group(4)}}}", s)
    s = s.strip()
    # Trailing sentence period; units written without \text.
    while s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    m = _UNIT_TAIL.match(s)
    if m:
        s = m.group(1)
    s = _IN_PREFIX.sub("", s)
    s = " ".join(s.split())
    m = _SCALE_WORD.match(s)
    if m:
        v = Decimal(m.group(2)) * _SCALE[m.group(3).lower()]
        s = m.group(1) + format(v.normalize() if v == v.to_integral_value() else v, "f")
    m = _WORD_TAIL.match(s)
    if m and m.group(2).split()[0].lower() not in _NOT_A_NOUN:
        s = m.group(1)
    s = s.rstrip("\\").rstrip()  # a trailing line break "185\\\\" (rstrip: linear on any run)
    m = _BRACKETED_ENV.match(s)
    if m:
        s = m.group(1)
    # Thousands separators: only the strict 1,234,567 shape (with no spaces) is a single number.
    m = _THOUSANDS.match(s)
    if m:
        s = m.group(1) + m.group(2).replace(",", "").replace(" ", "") + (m.group(3) or "")
    # Trailing zero decimals of a plain number: 27.0 -> 27, 18.50 stays (handled numerically).
    m = _INT_DOT0.match(s)
    if m:
        s = m.group(1)
    # Base subscripts: 52_8 -> 52 (the digits are what the problem asks for).
    m = _BASE_SUB.match(s)
    if m:
        s = m.group(1)
    # Mixed numbers (MATH convention): 1\frac{4}{5} -> (1+\frac{4}{5}).
    s = _MIXED_SP.sub(_mixed_spaced, s)
    s = _MIXED.sub(lambda mm: f"{mm.group(1)}({mm.group(2)}+\\frac{{{mm.group(3)}}}{{{mm.group(4)}}})", s)
    m = _CHOICE.match(s) or _CHOICE_TEXT.match(s)
    if m:
        s = m.group(1) or m.group(2)
    # Wrapping braces {x} -> x.
    k = 0
    while k < 64 and len(s) >= 2 and s[0] == "{" and match_braces(s).get(0) == len(s) - 1:
        s = s[1:-1].strip()
        k += 1
    return s


_SPACE_KEY = re.compile(r"(?<!\d) | (?!\d)")


def key(s: str) -> str:
    """``s`` without spaces, except one between two digits: "3 4" is not "34"."""
    return _SPACE_KEY.sub("", s)
