"""Re-grade saved outputs: ``python -m aci_jax.grade PAIRS.jsonl [-o OUT.jsonl]``.

Input: one JSON object per line, ``{"gold": ..., "pred": ...}``; ``"response": true`` marks pred as a
whole model response (its last ``\\boxed{}`` is graded). Output (stdout or ``-o``): one line per
input line, ``{"equal": bool, "status": "ok"|"timeout"|"parse_error", "pred_extracted": ...}``,
in input order. A summary goes to stderr. Malformed input: one-line error, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from aci_jax import fileio
from aci_jax.grading.extract import FALLBACKS


def _read_pairs(path: str) -> list[dict]:
    pairs = []
    try:
        for n, obj in fileio.iter_jsonl(path):
            if "gold" not in obj or "pred" not in obj:
                raise ValueError(f"{path}:{n}: expected an object with keys 'gold' and 'pred'")
            if not isinstance(obj["pred"], str):
                raise ValueError(f"{path}:{n}: 'pred' must be a string")
            if isinstance(obj["gold"], bool) or not isinstance(obj["gold"], (str, int, float)):
                raise ValueError(f"{path}:{n}: 'gold' must be a string or a number")
            pairs.append({"gold": obj["gold"], "pred": obj["pred"],
                          "response": bool(obj.get("response", False))})
    except fileio.DataError as e:
        raise ValueError(str(e)) from None
    return pairs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aci_jax.grade", description=__doc__.split("\n")[0])
    ap.add_argument("pairs", help="JSONL file of {gold, pred[, response]} objects ('-' for stdin)")
    ap.add_argument("-o", "--output", default="-", help="output JSONL (default: stdout)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per comparison (default 5)")
    ap.add_argument("--rel-tol", type=float, default=1e-4, help="relative tolerance for decimals")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default min(4, cpus))")
    ap.add_argument("--engine", default="native", choices=("native", "math_verify"))
    ap.add_argument("--gold-style", default="auto", choices=("auto", "math", "gsm8k", "plain"))
    ap.add_argument("--fallback", nargs="?", const="answer_is", default="none",
                    choices=FALLBACKS,
                    help="what a response without \\boxed{} answers with: none (default), "
                         "answer_is ('the answer is X'; also a bare --fallback) or last_number")
    args = ap.parse_args(argv)
    try:
        pairs = _read_pairs(args.pairs)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("error: --timeout must be > 0", file=sys.stderr)
        return 2
    from aci_jax.grading import Grader

    try:
        with Grader(args.workers, timeout=args.timeout, rel_tol=args.rel_tol, engine=args.engine,
                    gold_style=args.gold_style, fallback=args.fallback) as g:
            results = g.grade_batch(pairs)
            stats = g.stats()
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    with out if out is not sys.stdout else contextlib.nullcontext():
        for r in results:
            out.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    n_eq = sum(r.equal for r in results)
    print(f"graded {len(results)} pairs: {n_eq} equal, {stats['timeouts']} timeouts, "
          f"{sum(r.status == 'parse_error' for r in results)} parse errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
