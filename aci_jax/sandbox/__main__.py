"""python -m aci_jax.sandbox CELLS.jsonl: run model-written cells the way the rollout does.

Input lines: {"session": ..., "code": ...} (cells of a session run in file order). Output: one
JSON line per cell, in input order: {"session", "status", "output", "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from aci_jax import fileio


def _parse(argv):
  ap = argparse.ArgumentParser(prog="python -m aci_jax.sandbox", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("cells", help="JSONL file of {\"session\", \"code\"} lines, or - for stdin")
  ap.add_argument("--mode", choices=("persistent", "replay", "isolated"), default="persistent")
  ap.add_argument("--timeout", type=float, default=5.0, help="wall-clock seconds per cell")
  ap.add_argument("--memory-mb", type=int, default=4096, help="memory limit per session (all its processes; docs/sandbox.md)")
  ap.add_argument("--max-chars", type=int, default=400, help="display truncation length")
  ap.add_argument("--max-output-bytes", type=int, default=16 << 20)
  ap.add_argument("--workers", type=int, default=0, help="concurrent cells (0: all cores)")
  ap.add_argument("--isolation", choices=("auto", "namespaces", "seccomp"), default="auto")
  ap.add_argument("--allow-weak", action="store_true",
                  help="run without root (sessions share your uid; see docs/sandbox.md)")
  ap.add_argument("--quiet", action="store_true", help="no isolation report on stderr")
  return ap.parse_args(argv)


def _read_cells(path: str) -> list[tuple[object, str]]:
  """[(session, code)] in file order; DataError (file:line) on a malformed line."""
  cells = []
  for n, obj in fileio.iter_jsonl(path):
    if "session" not in obj or not isinstance(obj.get("code"), str):
      raise fileio.DataError(f"{path}:{n}: expected {{\"session\": ..., \"code\": \"...\"}}")
    session = obj["session"]
    if isinstance(session, (list, dict)):
      session = json.dumps(session, sort_keys=True)
    cells.append((session, obj["code"]))
  return cells


def main(argv=None) -> int:
  args = _parse(argv)
  if args.cells != "-" and not os.path.isfile(args.cells):
    print(f"error: cannot read {args.cells}: no such file", file=sys.stderr)
    return 2
  try:
    cells = _read_cells(args.cells)
  except (OSError, fileio.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from aci_jax.sandbox import Sandbox, SandboxConfig, SandboxUnavailable
  try:
    cfg = SandboxConfig(mode=args.mode, timeout_s=args.timeout, memory_mb=args.memory_mb,
                        max_chars=args.max_chars, max_output_bytes=args.max_output_bytes,
                        max_workers=args.workers, isolation=args.isolation,
                        allow_weak=args.allow_weak).resolved()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    sb = Sandbox(cfg)
  except SandboxUnavailable as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  with sb:
    if not args.quiet:
      print("sandbox isolation: " + json.dumps(sb.isolation), file=sys.stderr)
    futures = [sb.submit(session, code) for session, code in cells]
    for (session, _), fut in zip(cells, futures):
      r = fut.result()
      sys.stdout.write(json.dumps({"session": session, "status": r.status.value,
                                   "output": r.output, "seconds": round(r.seconds, 6)},
                                  ensure_ascii=False) + "\n")
    sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
