"""The limits of one comparison: static size guards (``LIMITS``), the refusal raised when an input
is too large to evaluate safely (``Refused``), and the per-comparison work budget (``WORK``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

DEFAULT_REL_TOL = 1e-4


@dataclass(frozen=True)
class Limits:
    """Static guards applied before anything reaches sympy (sizes in characters/digits)."""

    max_len: int = 100_000        # longer answers: string comparison only
    max_sympy_len: int = 400      # longest atom handed to the LaTeX parser
    max_brace_depth: int = 24     # deeper nesting is not parsed
    max_digits: int = 1000        # digit runs longer than this are compared as strings
    max_pow_log10: float = 1e5    # refuse to evaluate anything whose magnitude may exceed 10^(1e5)
    max_items: int = 5000         # list/matrix entries
    max_parses: int = 150         # LaTeX parses per comparison (each distinct atom once: cached)
    max_parse_chars: int = 8_000  # characters handed to the LaTeX parser per comparison
    max_solves: int = 12          # relations handed to the solver per comparison


LIMITS = Limits()


class Refused(Exception):
    """The expression is too large to evaluate safely."""


class _WorkState(threading.local):
    """Per-comparison cache of parsed atoms and the work budget that bounds a whole comparison:
    a list of 5,000 items each within the size limits must not add up to minutes. Reset by
    ``compare``; past the budget, parses raise Refused (not equal unless string-identical).
    Thread-local, so in-process comparisons in several threads do not share a budget."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.parsed, self.parses, self.chars, self.solves = {}, 0, 0, 0

    def charge(self, n_chars: int) -> None:
        self.parses += 1
        self.chars += n_chars
        if self.parses > LIMITS.max_parses or self.chars > LIMITS.max_parse_chars:
            raise Refused("work budget of one comparison spent")

    def solve(self) -> None:
        self.solves += 1
        if self.solves > LIMITS.max_solves:
            raise Refused("solver budget of one comparison spent")


WORK = _WorkState()
