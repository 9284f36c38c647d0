"""Grading benchmark: our worker pool vs math-verify called directly in one process.

    python benchmarks/bench_grading.py [--data /work/shared/data/math500.jsonl] [--workers N]
    python benchmarks/bench_grading.py --cpu        # also CPU seconds of both engines in process
    python benchmarks/bench_grading.py --cases      # accuracy on the hand-labelled case tables

Throughput mode builds MATH500-style (gold, pred) pairs from the gold answers of a MATH-style
JSONL file (field ``answer``): the gold itself, a reformatted copy (\\dfrac, spaces, $...$,
\\left/\\right, "x = " prefix), another problem's answer, and an off-by-one integer. It grades them
with ``Grader`` (cache off, workers already started) and with ``math_verify.verify(parse(..),
parse(..))`` in this process, then prints pairs/s for each, the ratio, and the verdict agreement.

Case mode grades tests/test_grading_cases.py's table and tests/test_grading_classes.py's table with both engines (math-verify runs inside
our killable workers, so its hangs cannot stall the run) and prints accuracy against the human
labels per class, plus the "either says equal" combination — the measurement behind the engine
decision in docs/grading.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from aci_jax.grading import Grader  # noqa: E402


def make_pairs(answers: list[str]) -> list[tuple[str, str]]:
    """Four pairs per gold: identical, reformatted (equal), another answer, off-by-one (mostly unequal)."""
    pairs = []
    n = len(answers)
    for i, g in enumerate(answers):
        pairs.append((g, g))
        v = g.replace("\\frac", "\\dfrac")
        if not re.search(r"\d,(?:\\!)?\s*\d{3}", g):  # keep thousands separators intact
            v = v.replace(",", ", ")
        if "\\left" not in v and "\\text" not in v:
            v = v.replace("(", "\\left(").replace(")", "\\right)")
        v = f"${v}$" if i % 2 else f"x = {v}" if "=" not in g and "," not in g and "\\begin" not in g else v
        pairs.append((g, v))
        pairs.append((g, answers[(i * 7 + 3) % n]))
        pairs.append((g, str(int(g) + 1) if g.lstrip("-").isdigit() else g + "+1"))
    return pairs


def _measure(pairs, args, label: str) -> None:
    t0 = time.perf_counter()
    g = Grader(args.workers, cache_size=0, timeout=args.timeout)
    g.grade("1", "1")  # wait until the workers are up
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = g.grade_batch(pairs)
    t_ours = time.perf_counter() - t0
    stats = g.stats()
    g.close()

    from math_verify import parse, verify

    t0 = time.perf_counter()
    theirs, mv_errors = [], 0
    for gold, pred in pairs:
        try:  # defaults: math-verify's own SIGALRM timeouts (main thread, as users call it)
            theirs.append(bool(verify(parse(f"${gold}$"), parse(f"${pred}$"))))
        except Exception:  # noqa: BLE001
            mv_errors += 1
            theirs.append(False)
    t_mv = time.perf_counter() - t0

    agree = sum(a.equal == b for a, b in zip(ours, theirs))
    rate_ours, rate_mv = len(pairs) / t_ours, len(pairs) / t_mv
    print(f"== {label}: {len(pairs)} pairs")
    print(f"ours   : {rate_ours:8.1f} pairs/s  ({g.num_workers} workers, startup {startup:.2f}s not counted; "
          f"timeouts {stats['timeouts']}, equal {sum(r.equal for r in ours)})")
    print(f"mverify: {rate_mv:8.1f} pairs/s  (1 process; errors {mv_errors}, equal {sum(theirs)})")
    print(f"ratio ours/math-verify: {rate_ours / rate_mv:.2f}x")
    print(f"agreement: {agree}/{len(pairs)} = {agree / len(pairs):.3%}")
    dis = [(p, a.equal, b) for p, a, b in zip(pairs, ours, theirs) if a.equal != b]
    kinds = collections.Counter(("ours=T" if a else "ours=F") for _, a, _ in dis)
    print(f"disagreements: {dict(kinds)}; first {min(args.show, len(dis))}:")
    for (gold, pred), a, b in dis[: args.show]:
        print(f"  gold={gold!r:40} pred={pred!r:40} ours={a} math-verify={b}")


def _cpu(pairs, label: str, repeats: int = 3) -> None:
    """Engine cost without the pool: CPU seconds (time.process_time, this process only) of our
    ``compare`` and of math-verify's ``verify(parse, parse)`` on the same pairs, best of ``repeats``.
    CPU time is what a loaded machine does not distort: wall-clock rates on a shared 2-core VM
    move by 2-3x between runs, CPU seconds by a few percent."""
    from math_verify import parse, verify

    from aci_jax.grading.equiv import compare

    def ours():
        for gold, pred in pairs:
            compare(gold, pred)

    def theirs():
        for gold, pred in pairs:
            try:
                verify(parse(f"${gold}$"), parse(f"${pred}$"))
            except Exception:  # noqa: BLE001
                pass

    ours(), theirs()  # imports and first-call caches out of the measurement
    best = {}
    for name, fn in (("ours", ours), ("mverify", theirs)):
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        best[name] = min(times)
    print(f"== engine CPU time, in process, {label}: {len(pairs)} pairs, best of {repeats}")
    print(f"ours   : {best['ours']:7.2f} s CPU = {1e3 * best['ours'] / len(pairs):6.2f} ms/pair")
    print(f"mverify: {best['mverify']:7.2f} s CPU = {1e3 * best['mverify'] / len(pairs):6.2f} ms/pair")
    print(f"ratio (math-verify CPU / ours): {best['mverify'] / best['ours']:.2f}x")


def bench_throughput(args) -> None:
    with open(args.data, encoding="utf-8") as f:
        answers = [str(json.loads(line)["answer"]) for line in f if line.strip()]
    pairs = make_pairs(answers)
    print(f"{len(pairs)} pairs from {len(answers)} gold answers in {args.data}")
    _measure(pairs, args, "all pairs")
    # Identical strings are decided before any parsing; the rest is the harder share.
    _measure([p for p in pairs if p[0] != p[1]], args, "non-identical pairs only")
    if args.cpu:
        _cpu(pairs, "all pairs")
        _cpu([p for p in pairs if p[0] != p[1]], "non-identical pairs only")


def bench_cases(args) -> None:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_grading_cases import CASES as TABLE
    from test_grading_classes import NEW_CASES

    print("== the 210-case table (tests/test_grading_cases.py)")
    _bench_table(TABLE, args)
    print("\n== the issue-17 class table (tests/test_grading_classes.py)")
    _bench_table(NEW_CASES, args)


def _bench_table(CASES, args) -> None:
    items = [(g, p, r) for _, g, p, _, r in CASES]
    verdicts = {}
    for engine in ("native", "math_verify"):
        with Grader(args.workers, engine=engine, timeout=args.timeout) as g:
            t0 = time.perf_counter()
            verdicts[engine] = g.grade_batch(items)
            print(f"{engine}: {time.perf_counter() - t0:.2f}s, timeouts {g.stats()['timeouts']}")
    expected = [c[3] for c in CASES]
    combos = {
        "native": [r.equal for r in verdicts["native"]],
        "math_verify": [r.equal for r in verdicts["math_verify"]],
        "native OR math_verify": [a.equal or b.equal for a, b in zip(verdicts["native"], verdicts["math_verify"])],
    }
    classes = sorted({c[0] for c in CASES})
    print(f"\naccuracy against {len(CASES)} hand-labelled cases")
    print(f"{'class':16}" + "".join(f"{k:>24}" for k in combos))
    for cls in classes + ["ALL"]:
        idx = [i for i, c in enumerate(CASES) if cls in (c[0], "ALL")]
        row = "".join(f"{sum(v[i] == expected[i] for i in idx):>19}/{len(idx):<4}" for v in combos.values())
        print(f"{cls:16}{row}")
    for name, v in combos.items():
        fp = sum(1 for i in range(len(CASES)) if v[i] and not expected[i])
        fn = sum(1 for i in range(len(CASES)) if not v[i] and expected[i])
        print(f"{name}: false positives {fp}, false negatives {fn}")
    print("\nmath-verify errors on the table:")
    for i, c in enumerate(CASES):
        if combos["math_verify"][i] != expected[i]:
            print(f"  [{c[0]}] gold={c[1]!r} pred={c[2]!r} expected={c[3]} math-verify={combos['math_verify'][i]}"
                  f" ({verdicts['math_verify'][i].status})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/shared/data/math500.jsonl", help="JSONL with an 'answer' field")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--cases", action="store_true", help="accuracy on the case table instead of throughput")
    ap.add_argument("--show", type=int, default=15, help="disagreements to print")
    ap.add_argument("--cpu", action="store_true", help="also time both engines in process (CPU seconds)")
    args = ap.parse_args()
    if args.cases:
        bench_cases(args)
    else:
        if not os.path.exists(args.data):
            sys.exit(f"error: {args.data} not found (pass --data PATH to a JSONL file with an 'answer' field)")
        bench_throughput(args)


if __name__ == "__main__":
    main()
