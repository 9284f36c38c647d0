"""Answer extraction: the final ``\\boxed{...}`` / ``\\fbox{...}`` answer of a response (the last box,
or the run of boxes written as one answer), and gold answers.

All functions are linear-time string scans (no regex backtracking on hostile input), so they are
safe to run in the parent process before a comparison is sent to a worker.
"""

from __future__ import annotations

import re

from .normalize import SPECIAL_TOKENS, match_braces

__all__ = ["extract_answer", "extract_gold", "last_boxed", "final_boxes", "fallback_mode",
           "GOLD_STYLES", "FALLBACKS"]

# What a response without a box answers with (opt-in; docs/grading.md):
#   none         no answer;
#   answer_is    the "the answer is X" / "final answer: X" phrase, `Answer: X` or `#### X` line;
#   last_number  that phrase if there is one, else the last number of the response.
FALLBACKS = ("none", "answer_is", "last_number")

# "The answer is X." fallback: take the rest of the line after the last occurrence.
_ANSWER_IS = re.compile(r"(?:(?:final answer|the answer)\s*(?:is|:)\s*:?|^####|^[ \t]*answer[ \t]*:)[ \t]*",
                        re.IGNORECASE | re.MULTILINE)
GOLD_STYLES = ("auto", "math", "gsm8k", "plain")


_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


# What may stand between the boxes of one final answer: commas, semicolons, "and"/"or" (plain or in
# \text{}), math delimiters, spacing and line breaks. Any other word ends the run.
_BOX_GAP = re.compile(r"(?:[\s$,;&]|\\[,;:! ]|\\q?quad|\\\\|\\[\[\]()]|\\text\{\s*(?:and|or)?\s*\}|\b(?:and|or)\b)*")
_MAX_GAP = 60


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete box, in order of their start (linear time)."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return []
    match = match_braces(text)
    out = []
    for m in _BOX_RE.finditer(text):
        k = m.end()
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            end = match.get(k)
            if end is not None:
                out.append((m.start(), end + 1, text[k + 1 : end].strip()))
        elif k > m.end() and k < len(text):
            arg = re.match(r"[^\s$]+", text[k : k + 1000])  # "\\boxed 5": up to a space or '$'
            if arg:
                out.append((m.start(), k + arg.end(), arg.group(0)))
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}`` (or ``\\boxed 5``) in ``text``.

    Linear time: braces are matched in one pass, then box commands are tried from the last one
    back (an unclosed last box is skipped).
    """
    boxes = _boxes(text)
    return boxes[-1][2] if boxes else None


def final_boxes(text: str) -> list[str]:
    """The boxes of the final answer: the last box and the boxes right before it that are
    separated from the next one only by commas, "and"/"or", delimiters or spacing.

    ``\\boxed{2}, \\boxed{4}, \\boxed{6}`` -> ``['2', '4', '6']``; ``\\boxed{2} so \\boxed{3}`` -> ``['3']``.
    A response that boxes several candidates gets one answer, the list of all of them, which
    is then compared as a whole: an extra candidate makes it a different list, never a second try.
    """
    boxes = _boxes(text)
    if not boxes:
        return []
    run = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        gap_start, gap_end = box[1], run[0][0]
        if gap_start > gap_end or gap_end - gap_start > _MAX_GAP:
            break  # nested in the next box, or too far away to be one answer
        if _BOX_GAP.fullmatch(text, gap_start, gap_end) is None:
            break
        run.insert(0, box)
    return [b[2] for b in run]


# A number as written in prose: sign, digits with optional thousands commas, decimals ("1,234.5").
# Not inside a word or right after a digit or a decimal point ("x2", "3.14" is one number).
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?![\w])")


def fallback_mode(fallback: bool | str) -> str:
    """One of FALLBACKS for a fallback setting: a name, or a bool (True = "answer_is", the
    original opt-in; False = "none")."""
    if isinstance(fallback, bool):
        return "answer_is" if fallback else "none"
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; expected one of {FALLBACKS}")
    return fallback


def extract_answer(response: str, *, fallback: bool | str = False) -> str | None:
    """The final answer of a model response, or None when it gives none.

    The answer is the content of the last ``\\boxed{}``/``\\fbox{}`` (nested braces allowed); boxes
    written one after another as one answer (``\\boxed{2}, \\boxed{4}``) are joined into the list
    ``2, 4`` (``final_boxes``). Chat-template tokens such as ``<|im_end|>`` are ignored.
    With ``fallback="answer_is"`` (or True) a response without a box may still answer through
    the last "the answer is X" / "final answer: X" phrase, an ``Answer: X`` line or a GSM8K-style
    ``#### X`` line: X is the math span ``$...$``/``\\(...\\)`` right after the phrase, else the
    rest of its sentence (markdown ``**`` dropped). ``fallback="last_number"``: that phrase, else the last number written in the
    response (``624 dollars per day.`` -> ``624``). Off (``"none"``) by default: training rewards
    need the boxed format.
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be str, got {type(response).__name__}")
    fallback = fallback_mode(fallback)
    response = SPECIAL_TOKENS.sub(" ", response)  # <|im_end|> after the answer is not part of it
    boxes = [b for b in final_boxes(response) if b]
    if len(boxes) > 1:
        return ", ".join(boxes)
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed if boxed else None
    if fallback == "none":
        return None
    matches = list(_ANSWER_IS.finditer(response))
    if matches:
        return _answer_phrase(response[matches[-1].end() :].split("\n", 1)[0].strip())
    if fallback == "last_number":
        numbers = _NUMBER.findall(response)
        if numbers:
            return numbers[-1]
    return None


_MATH_SPAN = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def _answer_phrase(rest: str) -> str | None:
    """The answer at the start of the rest of an "the answer is" line: a math span ``$...$``
    (what follows it, such as "I hope it is correct.", is not part of it), else the text up to the
    end of the sentence."""
    rest = rest.replace("**", "")  # markdown bold around the answer
    for opener, closer in _MATH_SPAN:
        if rest.startswith(opener):
            end = rest.find(closer, len(opener))
            if end > len(opener):
                return rest[len(opener):end].strip() or None
    m = _SENTENCE_END.search(rest)
    if m:
        rest = rest[: m.start()]
    rest = rest.strip().rstrip(".").strip().strip("$").strip()
    return rest or None


def extract_gold(text: str | int | float, style: str = "auto") -> str:
    """The reference answer as a string.

    styles: ``math`` — a MATH solution: the last ``\\boxed{}`` if there is one, else the text;
    ``gsm8k`` — the text after the last ``####`` (thousands commas kept; the comparison drops them);
    ``plain`` — the text itself (numbers such as AMC's ``27.0`` are formatted with ``repr``);
    ``auto`` — ``####`` if present, else a box if present, else plain.
    """
    if style not in GOLD_STYLES:
        raise ValueError(f"unknown gold style {style!r}; expected one of {GOLD_STYLES}")
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise TypeError(f"gold must be str, int or float, got {type(text).__name__}")
    if not isinstance(text, str):
        return repr(text)
    if style in ("gsm8k", "auto") and "####" in text:
        return text.rsplit("####", 1)[1].strip()
    if style == "gsm8k":
        raise ValueError("gsm8k-style gold has no '####' marker")
    if style in ("math", "auto"):
        boxes = [b for b in final_boxes(text) if b]
        if len(boxes) > 1:
            return ", ".join(boxes)  # \\boxed{1} and \\boxed{-2}: one answer, as for responses
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed
    return text.strip()
