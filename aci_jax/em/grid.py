"""Runs a comparison grid (issue 16 item 3): every arm on every seed, then `em.compare` on it.

    python -m aci_jax.em.grid --config configs/default.py:rare_code --out OUT --seeds 1,2,3,4,5 \\
        [--arm NAME="--config.key=value ..." ...] [--dry_run] [-- --config.key=value ...]

An arm is a name and the config overrides that make it; without `--arm` the arms are the four
algorithms (`autocode`, `em_no_decision`, `grpo`, `rejection_sft`: `--config.em.algorithm=X`,
which draw the same rollout budget per query, aci_jax/em/algorithms.py). Overrides after `--`
apply to every run. Run (arm, seed) trains in OUT/<arm>/s<seed> with
`python -m aci_jax.main --config C --workdir OUT/<arm>/s<seed> --config.seed=<seed> <arm's>
<common>`, its output in OUT/<arm>/s<seed>.log; the runs go one after another, seed by seed.

The warm-up is shared. It depends on the seed and on everything but the EM loop, so arms whose
overrides differ only in `--config.em.*` reuse, per seed, the warm-up of the first of them to
finish one (its exported policy is copied into the next run's workdir, which `autocode` then
loads instead of training): on the toy the warm-up is most of a run's time. Arms with other
overrides (`--config.task.code_fraction=0`: epsilon) share among themselves when those are
equal. After each run the reuse is checked: the run's resolved config (config.json) must equal
the donor's outside `em`, or the grid stops.

Re-running the same command resumes: finished runs (summary.json) are skipped, an interrupted
one resumes from its checkpoint. Then `python -m aci_jax.em.compare` over every run, each arm
labelled by its directory, writes OUT/compare/ (compare.md, compare.json, plots).

A run that fails stops the grid with one `error:` line (its log's path) and exit status 1; bad
flags exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys

from aci_jax import fileio
from aci_jax.em import compare

DEFAULT_ARMS = ("autocode", "em_no_decision", "grpo", "rejection_sft")
# The config section the warm-up does not read: arms that differ only here share it.
_EM_ONLY = re.compile(r"--config\.em\.[A-Za-z_.]+=")
_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


class GridError(Exception):
  """Bad input; one `error:` line, exit status 2."""


class RunFailed(Exception):
  """A run of the grid exited nonzero; one `error:` line, exit status 1."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise GridError(message)


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  overrides: tuple[str, ...]

  @property
  def warmup_key(self) -> tuple[str, ...]:
    """Arms with equal keys train the same warm-up on a seed: their non-`em` overrides."""
    return tuple(o for o in self.overrides if not _EM_ONLY.match(o))


@dataclasses.dataclass(frozen=True)
class Run:
  arm: Arm
  seed: int
  workdir: str

  @property
  def log(self) -> str:
    return self.workdir + ".log"


def parse_arm(text: str) -> Arm:
  name, sep, rest = text.partition("=")
  if not sep or not _NAME.fullmatch(name):
    raise GridError(f"--arm {text!r}: expected NAME=\"--config.key=value ...\" (NAME of "
                    "letters, digits, _ . + -)")
  try:
    overrides = tuple(shlex.split(rest))
  except ValueError as e:
    raise GridError(f"--arm {text!r}: {e}") from None
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    raise GridError(f"--arm {name}: {bad[0]!r} is not a --config.key=value override")
  return Arm(name, overrides)


def parse_seeds(text: str) -> list[int]:
  try:
    seeds = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise GridError(f"--seeds {text!r}: expected comma-separated integers") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise GridError(f"--seeds {text!r}: expected distinct integers")
  return seeds


def plan(arms: list[Arm], seeds: list[int], out: str) -> list[Run]:
  """Seed-major, so a seed's warm-up is reused by the arms after the first."""
  return [Run(a, s, os.path.join(out, a.name, f"s{s}")) for s in seeds for a in arms]


def command(config: str, run: Run, common: list[str]) -> list[str]:
  return [sys.executable, "-m", "aci_jax.main", "--config", config, "--workdir", run.workdir,
          f"--config.seed={run.seed}", *run.arm.overrides, *common]


def _finished(run: Run) -> bool:
  return os.path.isfile(os.path.join(run.workdir, "summary.json"))


def _warmup_export(workdir: str) -> str:
  return os.path.join(workdir, "warmup", "hf")


def _has_warmup(workdir: str) -> bool:
  return os.path.isfile(os.path.join(_warmup_export(workdir), "config.json"))


def _without_em(config: dict) -> dict:
  return {k: v for k, v in config.items() if k != "em"}


def check_shared_warmup(run: Run, donor: Run) -> None:
  """The run that reused `donor`'s warm-up must have been configured like it outside `em`."""
  mine = fileio.read_json(os.path.join(run.workdir, "config.json"))
  theirs = fileio.read_json(os.path.join(donor.workdir, "config.json"))
  a, b = _without_em(mine), _without_em(theirs)
  if a != b:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    raise RunFailed(f"{run.workdir} reused the warm-up of {donor.workdir} but their configs "
                    f"differ outside em (in {', '.join(keys)}): delete {run.workdir} and give "
                    "the arm its own warm-up")


def run_grid(config: str, runs: list[Run], common: list[str], *, dry_run: bool = False,
             echo=print) -> None:
  # (seed, warm-up key) -> the first run of that group with a finished warm-up
  donors: dict[tuple, Run] = {}
  for run in runs:
    group = (run.seed, run.arm.warmup_key)
    if group not in donors and _has_warmup(run.workdir):
      donors[group] = run
    if _finished(run):
      echo(f"done     {run.workdir}")
      continue
    cmd = command(config, run, common)
    donor = donors.get(group)
    if donor is run:
      donor = None
    if donor is not None and not _has_warmup(run.workdir):
      echo(f"warm-up  {_warmup_export(donor.workdir)} -> {_warmup_export(run.workdir)}")
      if not dry_run:
        tmp = _warmup_export(run.workdir) + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(_warmup_export(donor.workdir), tmp)
        os.replace(tmp, _warmup_export(run.workdir))  # config.json lands with the whole export
    echo(f"run      {shlex.join(cmd)} > {run.log}")
    if dry_run:
      donors.setdefault(group, run)
      continue
    os.makedirs(os.path.dirname(run.workdir), exist_ok=True)
    with open(run.log, "ab") as log:
      rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
      raise RunFailed(f"{run.workdir}: exit status {rc}; see {run.log}")
    if donor is not None:
      check_shared_warmup(run, donor)
    if group not in donors and _has_warmup(run.workdir):
      donors[group] = run


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  common: list[str] = []
  if "--" in argv:
    k = argv.index("--")
    argv, common = argv[:k], argv[k + 1:]
  p = _Parser(prog="python -m aci_jax.em.grid", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="config file[:variant] of every run")
  p.add_argument("--out", required=True, help="grid directory (OUT/<arm>/s<seed>, OUT/compare)")
  p.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 1,2,3,4,5")
  p.add_argument("--arm", action="append", default=[], metavar='NAME="OVERRIDES"',
                 help="an arm and its --config overrides (repeatable; default: the 4 algorithms)")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  try:
    args = p.parse_args(argv)
    if "://" in args.out:
      raise GridError(f"--out {args.out!r}: the grid directory must be local (each run's "
                      "--workdir may not be a bucket here: the warm-up is copied on disk)")
    if not os.path.isfile(args.config.split(":")[0]):
      raise GridError(f"--config {args.config!r}: no such file")
    bad = [o for o in common if not o.startswith("--config.")]
    if bad:
      raise GridError(f"{bad[0]!r} after --: expected --config.key=value overrides")
    if any(o.startswith(("--config.seed=", "--workdir")) for o in common):
      raise GridError("the grid sets --config.seed and --workdir itself")
    arms = ([parse_arm(a) for a in args.arm] if args.arm else
            [Arm(n, (f"--config.em.algorithm={n}",)) for n in DEFAULT_ARMS])
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
      raise GridError(f"arm names repeat: {names}")
    runs = plan(arms, parse_seeds(args.seeds), args.out)
  except GridError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    run_grid(args.config, runs, common, dry_run=args.dry_run)
  except RunFailed as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.dry_run:
    return 0
  labels = [f"--label={a.name}={os.path.join(args.out, a.name, '*')}" for a in arms]
  return compare.main([r.workdir for r in runs] + ["--out", os.path.join(args.out, "compare"),
                                                   *labels])


if __name__ == "__main__":
  sys.exit(main())
