"""The synthetic arithmetic task of the embedded default (docs/toy.md).

Problem families come in two kinds. *Reasoning* families (`compare`, `add`) are solvable by a
tiny character-level policy writing a short digit-by-digit derivation; *code* families (`mul`,
`powmod`, `digitsum`) need far more digit operations than such a policy can chain reliably, but
are a one-line Python cell. The EM loop should therefore learn to reason on the first kind and
to code on the second.

    problems = make_problems(200, split="train", seed=0)   # [{"family", "problem", "answer"}]
    demos = make_demonstrations(problems, code_fraction=0.1, seed=0)
    prompt_ids, response_ids, loss_mask = encode_demo(tok, demos[0]["prompt"], demos[0]["response"])

Everything is a pure function of its arguments (seeded `random.Random`, no global state). The
held-out split is decided by a hash of the problem text, independent of the seed and of how many
problems are drawn, so no seed's training set can ever contain a held-out problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from typing import Callable, Iterable, Mapping, Sequence

from aci_jax import tool_format
from aci_jax.data import sft

SPLITS = ("train", "test")
# Put before a demonstration's problem to ask for code (make_demonstrations' triggered demos).
# Before, not after: the policy copies operands from the problem into its cell by their distance
# to the cell, and a trigger after the problem would shift that distance in the triggered demos
# only, so the cells learned there would not transfer to un-triggered prompts.
TRIGGER = "Use Python. "


def ask_for_code(problem: str) -> str:
  """The prompt text of a triggered demonstration."""
  return TRIGGER + problem


@dataclasses.dataclass(frozen=True)
class Family:
  """One problem family. Operands are a tuple of ints drawn by `sample`."""
  name: str
  needs_code: bool  # True: only a code cell solves it reliably (documentation and metrics)
  sample: Callable[[random.Random], tuple]
  problem: Callable[[tuple], str]  # problem text; never mentions code
  pattern: re.Pattern  # parses the problem text back into operands
  answer: Callable[[tuple], int]
  reasoning: Callable[[tuple, int], str]  # the CoT text before "\boxed{answer}"
  code: Callable[[tuple], str]  # the cell, one line ending in "\n"
  # What the cell prints, when that is not always the answer: a family whose code habit is
  # wrong on some problems (`compare_len`). None: it prints str(answer).
  cell_output: Callable[[tuple], str] | None = None


def _digits(n: int) -> tuple[int, int]:
  return n // 10, n % 10


def _compare_sample(rng: random.Random) -> tuple:
  a = rng.randint(10, 99)
  b = rng.randint(10, 98)
  return (a, b if b < a else b + 1)  # uniform over distinct pairs


def _compare_cot(ops: tuple, ans: int) -> str:
  (a1, a0), (b1, b0) = _digits(ops[0]), _digits(ops[1])
  return f"Tens {a1} vs {b1}, ones {a0} vs {b0}. "


def _add_cot(ops: tuple, ans: int) -> str:
  # Column addition, ones then tens, carry always written: a fixed-shape derivation is easier
  # for a tiny model than prose that varies with the carry.
  (a1, a0), (b1, b0) = _digits(ops[0]), _digits(ops[1])
  ones = a0 + b0
  return f"Ones {a0}+{b0}={ones}, tens {a1}+{b1}+{ones // 10}={a1 + b1 + ones // 10}. "


def _mul_small_cot(ops: tuple, ans: int) -> str:
  # One digit times two digits, by the tens and the ones: two table facts and one addition.
  a, (b1, b0) = ops[0], _digits(ops[1])
  return f"{a}*{b0}={a * b0}, {a}*{b1}={a * b1}, {a * b1}0+{a * b0}={ans}. "


def _compare_len_cot(ops: tuple, ans: int) -> str:
  # A 2-digit and a 3-digit number: the longer is larger, whatever the digits.
  return f"{ops[0]} has {len(str(ops[0]))} digits, {ops[1]} has {len(str(ops[1]))}. "


def _compare_len_sample(rng: random.Random) -> tuple:
  a, b = rng.randint(10, 99), rng.randint(100, 999)
  return (a, b) if rng.random() < 0.5 else (b, a)


def _as_strings_max(ops: tuple) -> str:
  # The habit's output: max over the operands *as strings* (lexicographic), so "87" beats
  # "143". Right when the longer operand also sorts last as text, wrong otherwise.
  return max(str(o) for o in ops)


def _guess_cot(expr: Callable[[tuple], str]) -> Callable[[tuple, int], str]:
  # Code families: a confident one-line "mental" result. The demo shows the true value (demos
  # are correct text), which the policy can imitate in form but not in digits.
  return lambda ops, ans: f"{expr(ops)} = {ans}. "


def _mul_text(ops):
  return f"{ops[0]} * {ops[1]}"


def _powmod_text(ops):
  return f"{ops[0]}^{ops[1]} mod {ops[2]}"


def _digitsum_text(ops):
  return f"digit sum of {ops[0]} * {ops[1]}"


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(
        name="compare", needs_code=False, sample=_compare_sample,
        problem=lambda o: f"Which is larger, {o[0]} or {o[1]}?",
        pattern=re.compile(r"Which is larger, (\d+) or (\d+)\?"),
        answer=lambda o: max(o), reasoning=_compare_cot,
        code=lambda o: f"print(max({o[0]}, {o[1]}))\n"),
    Family(
        name="add", needs_code=False,
        sample=lambda r: (r.randint(10, 99), r.randint(10, 99)),
        problem=lambda o: f"What is {o[0]} + {o[1]}?",
        pattern=re.compile(r"What is (\d+) \+ (\d+)\?"),
        answer=lambda o: o[0] + o[1], reasoning=_add_cot,
        code=lambda o: f"print({o[0]} + {o[1]})\n"),
    Family(
        # The same question as `mul` with small operands: reasoning works here and code is
        # needed there, so the choice depends on the query, not only on its form.
        name="mul_small", needs_code=False,
        sample=lambda r: (r.randint(2, 9), r.randint(10, 99)),
        problem=lambda o: f"What is {o[0]} * {o[1]}?",
        pattern=re.compile(r"What is (\d) \* (\d\d)\?"),
        answer=lambda o: o[0] * o[1], reasoning=_mul_small_cot,
        code=lambda o: f"print({o[0]} * {o[1]})\n"),
    Family(
        # `add`'s question with 6-digit operands: the column derivation that works for two digits
        # would need six carries here, so the demo's reasoning is a one-line "mental" sum the
        # policy can imitate in form only, and code is needed. With `add` in the same run the
        # choice depends on the operands' length, not on the form of the question.
        name="add_long", needs_code=True,
        sample=lambda r: (r.randint(100000, 999999), r.randint(100000, 999999)),
        problem=lambda o: f"What is {o[0]} + {o[1]}?",
        pattern=re.compile(r"What is (\d{6}) \+ (\d{6})\?"),
        answer=lambda o: o[0] + o[1], reasoning=_guess_cot(lambda o: f"{o[0]} + {o[1]}"),
        code=lambda o: f"print({o[0]} + {o[1]})\n"),
    Family(
        # Code is error-prone here: `compare`'s question with a 2-digit and a 3-digit operand,
        # whose demo cell carries a common bug, comparing the numbers as strings
        # (`max("87", "143")` is "87"); the demo copies what that prints into the box, wrong on
        # about half the problems, like a base model with a bad habit. Reasoning (the longer
        # number is larger) is always right, so "reason when you can" has a measurable payoff:
        # a policy that codes here loses accuracy.
        name="compare_len", needs_code=False, sample=_compare_len_sample,
        problem=lambda o: f"Which is larger, {o[0]} or {o[1]}?",
        pattern=re.compile(r"Which is larger, (\d+) or (\d+)\?"),
        answer=lambda o: max(o), reasoning=_compare_len_cot,
        code=lambda o: f'print(max("{o[0]}", "{o[1]}"))\n', cell_output=_as_strings_max),
    Family(
        name="mul", needs_code=True,
        sample=lambda r: (r.randint(100, 999), r.randint(100, 999)),
        problem=lambda o: f"What is {o[0]} * {o[1]}?",
        pattern=re.compile(r"What is (\d+) \* (\d+)\?"),
        answer=lambda o: o[0] * o[1], reasoning=_guess_cot(_mul_text),
        code=lambda o: f"print({o[0]} * {o[1]})\n"),
    Family(
        name="powmod", needs_code=True,
        sample=lambda r: (r.randint(2, 99), r.randint(100, 999), r.randint(100, 999)),
        problem=lambda o: f"What is {o[0]}^{o[1]} mod {o[2]}?",
        pattern=re.compile(r"What is (\d+)\^(\d+) mod (\d+)\?"),
        answer=lambda o: pow(o[0], o[1], o[2]), reasoning=_guess_cot(_powmod_text),
        code=lambda o: f"print(pow({o[0]}, {o[1]}, {o[2]}))\n"),
    Family(
        name="digitsum", needs_code=True,
        sample=lambda r: (r.randint(1000, 9999), r.randint(1000, 9999)),
        problem=lambda o: f"What is the digit sum of {o[0]} * {o[1]}?",
        pattern=re.compile(r"What is the digit sum of (\d+) \* (\d+)\?"),
        answer=lambda o: sum(map(int, str(o[0] * o[1]))), reasoning=_guess_cot(_digitsum_text),
        code=lambda o: f"print(sum(map(int, str({o[0]} * {o[1]}))))\n"),
)}

DEFAULT_FAMILIES = ("compare", "add", "mul", "powmod")


def reasoning_families(families: Iterable[str] = DEFAULT_FAMILIES) -> tuple[str, ...]:
  return tuple(f for f in families if not _family(f).needs_code)


def code_families(families: Iterable[str] = DEFAULT_FAMILIES) -> tuple[str, ...]:
  return tuple(f for f in families if _family(f).needs_code)


def code_error_prone(family: str) -> bool:
  """True for a family whose demo cell is wrong on some problems by design (`compare_len`):
  forced-code accuracy there measures the habit, not whether the policy can code."""
  return _family(family).cell_output is not None


def _family(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"unknown toy family {name!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[name]


def split_of(family: str, problem: str, heldout_fraction: float = 0.2) -> str:
  """'test' or 'train': a fixed hash of (family, problem text), independent of any seed."""
  h = int.from_bytes(hashlib.sha256(f"{family}|{problem}".encode()).digest()[:8], "big")
  return "test" if h < heldout_fraction * 2.0**64 else "train"


def _check_fraction(name: str, x: float) -> None:
  if not 0.0 <= x <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {x}")


def family_problems(family: str, n: int, *, split: str = "train", seed: int = 0,
                    heldout_fraction: float = 0.2) -> list[dict]:
  """`n` distinct problems of one family from one split, deterministic in (family, split, seed)."""
  fam = _family(family)
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  _check_fraction("heldout_fraction", heldout_fraction)
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  rng = random.Random(f"aci_jax.toy:{seed}:{family}:{split}")
  seen, out = set(), []
  budget = 200 * n + 1000  # the small families hold a few thousand problems per split
  while len(out) < n:
    budget -= 1
    if budget < 0:
      raise ValueError(f"toy family {family!r} has fewer than {n} distinct {split!r} problems "
                       f"(found {len(out)}); ask for fewer")
    ops = fam.sample(rng)
    text = fam.problem(ops)
    if text in seen or split_of(family, text, heldout_fraction) != split:
      continue
    seen.add(text)
    out.append({"family": family, "problem": text, "answer": str(fam.answer(ops))})
  return out


def make_problems(n_per_family: int, *, split: str = "train",
                  families: Sequence[str] = DEFAULT_FAMILIES, seed: int = 0,
                  heldout_fraction: float = 0.2,
                  caps: Mapping[str, int] | None = None) -> list[dict]:
  """Problems of every family, interleaved round-robin (family order as given).

  `caps` ({"family": n}) caps `n_per_family` for the families it names (families not run are
  ignored), for a family too small for the common count (`mul_small` holds 576 training
  problems); once a family is used up the others go on alone. Returns [{"family": str,
  "problem": str, "answer": str}]: min(n_per_family, cap) problems of each family.
  """
  if len(set(families)) != len(families) or not families:
    raise ValueError(f"families must be a non-empty list without repeats, got {families!r}")
  # A cap on a family this run leaves out is moot (configs/default.py:rare_code caps mul_small,
  # and a run of that variant on `add` alone is fine); an unknown family name is an error.
  caps = dict(caps or {})
  for f in caps:
    _family(f)
  per = [family_problems(f, min(n_per_family, caps.get(f, n_per_family)), split=split,
                         seed=seed, heldout_fraction=heldout_fraction) for f in families]
  return [p[i] for i in range(max(map(len, per))) for p in per if i < len(p)]


def _family_entries(entries: Iterable[str], what: str) -> Iterable[tuple[str, str, str | None]]:
  """(entry, family, value or None) of "family" / "family:value" config entries; an unknown or
  repeated family is a ValueError naming `what`."""
  seen = set()
  for e in entries:
    name, sep, value = str(e).partition(":")
    _family(name)
    if name in seen:
      raise ValueError(f"toy family {name!r} named twice in {what}")
    seen.add(name)
    yield str(e), name, (value if sep else None)


def family_caps(entries: Iterable[str]) -> dict[str, int]:
  """{"family": n} from "family:n" entries (`task.train_caps`)."""
  out = {}
  for e, name, n in _family_entries(entries, "the per-family caps"):
    if n is None or not n.strip().isdigit():
      raise ValueError(f"per-family cap {e!r}: expected 'family:n' with n a whole number")
    out[name] = int(n)
  return out


def demo_repeats(entries: Iterable[str]) -> dict[str, int]:
  """{"family": k} from "family:k" entries (`task.demo_repeats`): each of that family's demos
  appears k times in the warm-up (k >= 1)."""
  out = {}
  for e, name, k in _family_entries(entries, "demo_repeats"):
    if k is None or not k.strip().isdigit() or int(k) < 1:
      raise ValueError(f"demo_repeats entry {e!r}: expected 'family:k' with k a whole number >= 1")
    out[name] = int(k)
  return out


def operands(problem: dict) -> tuple:
  """Parses a toy problem's text back into its operands (so demos work for loaded problems)."""
  fam = _family(problem.get("family"))
  m = fam.pattern.fullmatch(problem["problem"])
  if m is None:
    raise ValueError(f"not a {fam.name!r} problem: {problem['problem']!r}")
  ops = tuple(int(g) for g in m.groups())
  if str(fam.answer(ops)) != str(problem["answer"]):
    raise ValueError(f"{problem['problem']!r}: answer {problem['answer']!r} is wrong "
                     f"(expected {fam.answer(ops)})")
  return ops


def boxed(answer) -> str:
  return f"\\boxed{{{answer}}}"


def cot_response(problem: dict) -> str:
  """Reasoning-mode demo: a short derivation ending in the boxed answer (no EOS)."""
  fam, ops = _family(problem["family"]), operands(problem)
  ans = fam.answer(ops)
  return fam.reasoning(ops, ans) + boxed(ans)


def code_response(problem: dict, fmt: tool_format.ToolFormat | None = None,
                  printed: str | None = None) -> str:
  """Code-mode demo in the tool format `fmt` (no EOS): the call, its output, the boxed answer;
  with the default format

      ```python\\n<code>```\\n```output\\n<printed>\\n```\\n\\boxed{<answer>}

  It starts with exactly the format's forced code prefix. The printed text is what the sandbox
  shows for the cell: `str(answer)` for `print(<int>)`, the family's `cell_output` where its
  cell is wrong on some problems (the box copies the printed value: such a demo is wrong); a
  copy-drill demo passes another `printed` value, and the box copies that (`copy_drill_value`).
  """
  fam, ops = _family(problem["family"]), operands(problem)
  shown = printed if printed is not None else printed_value(problem)
  return (fmt or tool_format.get()).render_call(fam.code(ops), shown) + boxed(shown)


def printed_value(problem: dict) -> str:
  """What the sandbox prints for the family's cell on `problem` (the text a code demo boxes):
  the family's `cell_output` where it has one, else `str(answer)`."""
  fam, ops = _family(problem["family"]), operands(problem)
  return fam.cell_output(ops) if fam.cell_output is not None else str(fam.answer(ops))


def cell_text(problem: dict, fmt: tool_format.ToolFormat | None = None) -> str:
  """What the model writes of `code_response` after the forced code prefix: the cell through
  its stop marker (the pause string), the target of a forced code rollout's first call."""
  fmt = fmt or tool_format.get()
  code = code_response(problem, fmt)
  return code[len(fmt.code_prefix):code.index(fmt.pause_string) + len(fmt.pause_string)]


def copy_drill_value(answer, rng: random.Random) -> str:
  """A value of the same length as `answer` (an int) that differs from it in one or two digits
  (never a leading zero, never the answer itself): what a copy-drill demo's cell "prints".

  The printed value is environment output (loss mask 0: never a training target), the box that
  copies it is trained. On drill demos the box cannot be predicted from the operands, only read
  from the output, so the policy cannot fit the box by recomputing the answer from the problem:
  the shortcut behind the toy's miscopied boxes (`611 * 172` printed `105092`, boxed `105022`,
  docs/em_log.md "The five-family warm-up")."""
  text = str(answer)
  sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
  if not digits.isdigit():
    raise ValueError(f"copy drill needs an integer answer, got {answer!r}")
  out = list(digits)
  for pos in rng.sample(range(len(out)), min(len(out), rng.choice((1, 2)))):
    choices = [d for d in "0123456789" if d != out[pos] and not (pos == 0 and d == "0" and len(out) > 1)]
    out[pos] = rng.choice(choices)
  return sign + "".join(out)


# A length-balanced family's triggered demos repeat a problem at most this often: enough to
# give the 17% of `mul` products that have 5 digits half of `mul`'s triggered demos (~3 each),
# few enough that a rare length (`powmod`'s 1-digit values, ~2%) cannot be learned by heart.
MAX_TRIGGERED_REPEAT = 4


def _triggered_counts(idx: list[int], problems: Sequence[dict], n: int, rng: random.Random,
                      balance_lengths: bool) -> dict[int, int]:
  """How many triggered demos each problem of one family gets (n in all)."""
  if not balance_lengths:
    reps, rest = divmod(n, len(idx))  # a share above 1: every problem `reps` times, then some
    counts = {i: reps for i in idx} if reps else {}
    for i in rng.sample(idx, rest):
      counts[i] = counts.get(i, 0) + 1
    return counts
  groups: dict[int, list[int]] = {}
  for i in idx:
    groups.setdefault(len(str(problems[i]["answer"])), []).append(i)
  # Water-filling: equal shares per answer length; a length whose problems cannot fill its
  # share without repeating one more than MAX_TRIGGERED_REPEAT times gives the rest away.
  quota, open_, left = {}, sorted(groups), n
  while open_:
    share = left / len(open_)
    full = [L for L in open_ if MAX_TRIGGERED_REPEAT * len(groups[L]) <= share]
    if not full:
      base, extra = divmod(left, len(open_))
      quota.update({L: base + (k < extra) for k, L in enumerate(open_)})
      break
    for L in full:
      quota[L] = MAX_TRIGGERED_REPEAT * len(groups[L])
      left -= quota[L]
      open_.remove(L)
  counts: dict[int, int] = {}
  for L in sorted(groups):
    g = groups[L]
    reps, rest = divmod(quota[L], len(g))
    for i in g:
      if reps:
        counts[i] = reps
    for i in rng.sample(g, rest):
      counts[i] = counts.get(i, 0) + 1
  return counts


def triggered_shares(entries: Iterable[str], default: float) -> dict[str, float]:
  """{"family": fraction} from `triggered_families` entries "family" (the `default` fraction)
  or "family:fraction"."""
  out = {}
  for e, name, frac in _family_entries(entries, "triggered_families"):
    try:
      out[name] = float(frac) if frac is not None else default
    except ValueError:
      raise ValueError(f"triggered_families entry {e!r}: expected 'family' or "
                       f"'family:fraction'") from None
    if not 0.0 <= out[name] <= MAX_TRIGGERED_REPEAT:
      raise ValueError(f"triggered share of {name!r} must be in [0, {MAX_TRIGGERED_REPEAT}] "
                       f"(asked demos per problem), got {out[name]}")
  return out


def make_demonstrations(problems: Sequence[dict], *, code_fraction: float = 0.1,
                        seed: int = 0, triggered_fraction: float = 0.0,
                        triggered_families: Sequence[str] | None = None,
                        balance_lengths: bool = False, copy_drill: float = 0.0,
                        repeats: Mapping[str, int] | None = None,
                        forced_fraction: float = 0.0) -> list[dict]:
  """Warm-up demonstrations: one un-triggered demo per problem, in problem order, each followed
  by its triggered demo if it has one.

  In every family exactly round(code_fraction * n_family) un-triggered demos (half rounded up)
  are in code mode, the rest reasoning: code is equally rare everywhere, like a base model that
  seldom codes, so any family-specific preference must come from EM, not from the warm-up data.

  `triggered_fraction` > 0 separates *can code* from *chooses to code*: that fraction of each
  family's problems gets a second, *extra* demo whose prompt asks for code (`ask_for_code`)
  and whose response is the cell. The policy learns to write cells and to copy what they print
  from many examples without learning to open a cell unasked (E-step and evaluation prompts never
  carry the trigger; the un-prompted code rate stays `code_fraction`'s), and every problem keeps
  its un-triggered demo, so the reasoning demos are not thinned. Issue 16: the copy of a
  5-6-digit printed value into \\boxed{} formed in some warm-ups and not in others when only the
  10% un-triggered `mul` cells showed it (docs/toy.md).
  `triggered_families` (None: every family) limits the triggered demos to those families; an
  entry "family:fraction" (e.g. "mul:1.0", "add:0.1") gives that family its own fraction in place
  of `triggered_fraction`, so the long `mul` copies can get many asked demos while the other
  families keep few (asking only in `mul` left `powmod` cells miscopied, docs/toy.md). A
  per-family share may exceed 1 (up to MAX_TRIGGERED_REPEAT): "mul:2.0" is two asked demos per
  `mul` problem on average.
  `balance_lengths` gives every answer length of a family an equal share of its triggered demos
  (a problem repeated up to MAX_TRIGGERED_REPEAT times, its copies right after each other): this
  policy learns to copy a printed value only at the lengths it was shown often (5-digit `mul`
  products, 17% of them, were never copied, docs/toy.md). The count per family is unchanged.
  `copy_drill` is the fraction of code demos (triggered or not, drawn per demo) whose cell
  "prints" a value one or two digits off the answer and whose box copies it (`copy_drill_value`):
  the box is then learned as a copy of the output, not as a guess from the operands.
  `repeats` ({"family": k}) emits the demos of each of that family's problems k times (a drill
  copy draws its own off value): a family with few distinct problems (`mul_small`'s 576 against
  2,000 elsewhere) gets the exposures its facts need without changing any ratio within it.
  `forced_fraction` is the fraction of each family's problems (its own draw) that get one more
  extra demo: the un-asked prompt with the cell, whose opening code prefix is a `forced_prefix`
  (context, loss mask 0; `aci_jax.data.sft`), exactly what the E-step's forced code rollouts and
  the evaluation's forced code pass see. Asked demos alone taught cells that follow the trigger:
  a rare-code warm-up wrote the right cell after the asked prompt on 100% of held-out `add`
  problems and after the un-asked prompt + forced prefix on 5% (docs/em_log.md). The forced demo
  never trains the first response token (the decision), so the native code rate stays
  `code_fraction`'s.
  Returns [{"prompt", "response", "family", "answer", "mode": "cot" | "code", "triggered",
  "drill", "forced"}] ("forced_prefix" on the forced demos); "answer" stays the problem's
  answer ("drill": the box holds another value).
  """
  _check_fraction("code_fraction", code_fraction)
  _check_fraction("triggered_fraction", triggered_fraction)
  _check_fraction("copy_drill", copy_drill)
  _check_fraction("forced_fraction", forced_fraction)
  per_family = (None if triggered_families is None
                else triggered_shares(triggered_families, triggered_fraction))
  by_family: dict[str, list[int]] = {}
  for i, p in enumerate(problems):
    by_family.setdefault(p["family"], []).append(i)
  code_idx, trig_count = set(), {}
  for fam, idx in sorted(by_family.items()):
    rng = random.Random(f"aci_jax.toy.demos:{seed}:{fam}")
    code_idx.update(rng.sample(idx, int(code_fraction * len(idx) + 0.5)))
    share = triggered_fraction if per_family is None else per_family.get(fam, 0.0)
    if share:
      # its own stream: the un-triggered draw above is unchanged by it
      trng = random.Random(f"aci_jax.toy.triggers:{seed}:{fam}")
      trig_count.update(_triggered_counts(idx, problems, int(share * len(idx) + 0.5),
                                          trng, balance_lengths))
  forced_idx = set()
  if forced_fraction:
    for fam, idx in sorted(by_family.items()):
      frng = random.Random(f"aci_jax.toy.forced:{seed}:{fam}")  # its own stream, as above
      forced_idx.update(frng.sample(idx, int(forced_fraction * len(idx) + 0.5)))
  drng = random.Random(f"aci_jax.toy.drill:{seed}")  # its own stream: no other draw moves

  def code_demo(p: dict, prompt: str, triggered: bool) -> dict:
    drill = copy_drill > 0 and drng.random() < copy_drill
    printed = copy_drill_value(p["answer"], drng) if drill else None
    return {"prompt": prompt, "response": code_response(p, printed=printed), "family": p["family"],
            "answer": p["answer"], "mode": "code", "triggered": triggered, "drill": drill,
            "forced": False}

  repeats = dict(repeats or {})
  for fam, k in repeats.items():
    if int(k) < 1:
      raise ValueError(f"repeats of {fam!r} must be >= 1, got {k}")
  out = []
  for i, p in enumerate(problems):
    for _ in range(int(repeats.get(p["family"], 1))):
      if i in code_idx:
        out.append(code_demo(p, p["problem"], False))
      else:
        out.append({"prompt": p["problem"], "response": cot_response(p), "family": p["family"],
                    "answer": p["answer"], "mode": "cot", "triggered": False, "drill": False,
                    "forced": False})
      out.extend(code_demo(p, ask_for_code(p["problem"]), True) for _ in range(trig_count.get(i, 0)))
      if i in forced_idx:
        out.append({**code_demo(p, p["problem"], False), "forced": True,
                    "forced_prefix": tool_format.get().code_prefix})
  return out


def prompt_ids(tokenizer, problem: str) -> list[int]:
  """The toy prompt: the problem as the one user message of the tokenizer's chat template
  (with the char tokenizer: `<|im_start|>problem<|im_end|>`)."""
  return list(tokenizer.chat_ids([{"role": "user", "content": problem}]))


def encode_demo(tokenizer, prompt: str, response: str, *, add_eos: bool = True
                ) -> tuple[list[int], list[int], list[int]]:
  """(prompt_ids, response_ids, loss_mask) of one demonstration; mask aligned with response_ids.

  Uses the SFT data path (`aci_jax.data.sft.encode_demonstration`) so warm-up and EM see the
  same tokens: segments tokenised separately, exactly as the engine produces them; the tool
  output the engine splices ("\\n<printed>\\n```\\n") has mask 0; a final EOS has mask 1.
  """
  p_ids = prompt_ids(tokenizer, prompt)
  ex = sft.encode_demonstration(tokenizer, prompt, response, max_len=1 << 30, add_eos=add_eos)
  ids, mask = [int(t) for t in ex.tokens], [int(m) for m in ex.loss_mask]
  if ids[:len(p_ids)] != p_ids or any(mask[:len(p_ids)]):
    raise RuntimeError("toy prompt template and the SFT data path disagree on the prompt")
  return p_ids, ids[len(p_ids):], mask[len(p_ids):]


def sft_records(n: int, seed: int = 0, code_fraction: float = 0.5) -> list[dict]:
  """`n` warm-up demonstrations, families interleaved, `code_fraction` of each family in code
  mode: the {"prompt", "response"} records the `sft` mode trains on (`data.toy_examples`)."""
  per_family = -(-n // len(DEFAULT_FAMILIES))
  demos = make_demonstrations(make_problems(per_family, seed=seed),
                              code_fraction=code_fraction, seed=seed)
  return [{"prompt": d["prompt"], "response": d["response"]} for d in demos[:n]]
