"""Answer extraction: the last ``\\boxed{...}`` / ``\\fbox{...}`` of a response, and gold answers.

All functions are linear-time string scans (no regex backtracking on hostile input), so they are
safe to run in the parent process before a comparison is sent to a worker.
"""

from __future__ import annotations

import re

from .normalize import match_braces

__all__ = ["extract_answer", "extract_gold", "last_boxed", "GOLD_STYLES"]

# "The answer is X." fallback (opt-in): take the rest of the line after the last occurrence.
_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*", re.IGNORECASE)
GOLD_STYLES = ("auto", "math", "gsm8k", "plain")


_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}`` (or ``\\boxed 5``) in ``text``.

    Linear time: braces are matched in one pass, then box commands are tried from the last one
    back (an unclosed last box is skipped).
    """
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    match = match_braces(text)
    for m in reversed(list(_BOX_RE.finditer(text))):
        k = m.end()
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            end = match.get(k)
            if end is not None:
                return text[k + 1 : end].strip()
        elif k > m.end() and k < len(text):
            arg = re.match(r"[^\s$]+", text[k : k + 1000])  # "\\boxed 5": up to a space or '$'
            if arg:
                return arg.group(0)
    return None


def extract_answer(response: str, *, fallback: bool = False) -> str | None:
    """The final answer of a model response, or None when it gives none.

    The answer is the content of the last ``\\boxed{}``/``\\fbox{}`` (nested braces allowed).
    With ``fallback=True`` a response without a box may still answer through the last
    "the answer is X" / "final answer: X" phrase (X runs to the end of its line, a trailing period
    and surrounding ``$`` are dropped). Off by default: training rewards need the boxed format.
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be str, got {type(response).__name__}")
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed if boxed else None
    if fallback:
        matches = list(_ANSWER_IS.finditer(response))
        if matches:
            rest = response[matches[-1].end() :].split("\n", 1)[0].strip()
            rest = rest.strip().rstrip(".").strip().strip("$").strip()
            return rest or None
    return None


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
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed
    return text.strip()
