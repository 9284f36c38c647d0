"""Compares finished EM runs (issue 16): accuracy, selection accuracy and code rate per family,
the polarisation of the per-query native code rate, and the fraction of each family's queries
with at least one native code rollout (what plain RL can reinforce code from at all), per arm.

    python -m aci_jax.em.compare RUN_DIR [RUN_DIR ...] --out OUT_DIR \\
        [--label NAME=GLOB ...] [--benchmark NAME]

Each RUN_DIR holds the summary.json of `aci_jax.em.modes.autocode` (and its config.json). A run's
arm is its algorithm (summary["algorithm"]) unless a `--label NAME=GLOB` glob matches its
directory path (first match wins), so ablations of one algorithm can be separate arms. The
first arm is also compared with each other one seed by seed (final accuracy differences on the
seeds both ran), which is the reading that removes the seed's shared variance (warm-up, pools).

Evaluation points: iteration 0 is the warm-up policy (0 rollouts, 0 optimizer steps), then every
iteration evaluated, at the rollouts and optimizer steps summed up to and including it. Across
runs, points are aligned by iteration; "sd" is the sample standard deviation (ddof = 1), None
for a single run.

Writes OUT_DIR/compare.md (also printed), OUT_DIR/compare.json (the same numbers),
accuracy_vs_rollouts.png, accuracy_vs_steps.png, polarisation.png, code_rate_by_family.png,
and code_rate_histograms.png (the per-query native code-rate histogram of every E-step, per arm).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys

from aci_jax import fileio

FAMILY_PREFIX = "estep/family/"


class CompareError(Exception):
  """Bad input (a run directory, a flag); reported as one `error:` line, exit status 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line instead of usage + message
    raise CompareError(message)


# ------------------------------------------------------------------------------- load


def _read_json(path: str, what: str):
  if not fileio.isfile(path):
    raise CompareError(f"{path}: no such file (not a finished EM run?)")
  try:
    return fileio.read_json(path)
  except json.JSONDecodeError as e:
    raise CompareError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
  except OSError as e:
    raise CompareError(f"{path}: cannot read {what} ({e})") from None


def load_run(directory: str) -> dict:
  """{"dir", "summary", "config"} of one run; config.json is optional (only its seed is shown),
  summary.json is required and must look like one the EM mode writes."""
  directory = directory.rstrip("/") or directory
  summary = _read_json(fileio.join(directory, "summary.json"), "the summary")
  if not isinstance(summary, dict) or not isinstance(summary.get("iterations"), list):
    raise CompareError(f"{fileio.join(directory, 'summary.json')}: not an EM summary "
                       "(no 'iterations' list)")
  cfg_path = fileio.join(directory, "config.json")
  config = _read_json(cfg_path, "the config") if fileio.isfile(cfg_path) else {}
  return {"dir": directory, "summary": summary, "config": config if isinstance(config, dict)
          else {}}


def parse_labels(labels: list[str]) -> list[tuple[str, str]]:
  out = []
  for item in labels:
    name, sep, glob = item.partition("=")
    if not sep or not name or not glob:
      raise CompareError(f"--label {item!r}: expected NAME=GLOB")
    out.append((name, glob))
  return out


def arm_of(run: dict, labels: list[tuple[str, str]]) -> str:
  """The first label whose glob matches the directory (as given, or absolute); else the
  algorithm. fnmatch's `*` crosses `/`, so `*x4ep*` matches wherever the run lives."""
  paths = [run["dir"]] + ([] if fileio.is_remote(run["dir"]) else [os.path.abspath(run["dir"])])
  for name, glob in labels:
    if any(fnmatch.fnmatchcase(p, glob) for p in paths):
      return name
  return str(run["summary"].get("algorithm") or "unknown")


# ------------------------------------------------------------------------ computations


def stat(values) -> dict:
  """{"mean", "sd", "n"} over the values that are not None; sd is the sample sd (ddof = 1),
  None with fewer than two values (one seed says nothing about the spread)."""
  xs = [float(v) for v in values if v is not None]
  n = len(xs)
  if not n:
    return {"mean": None, "sd": None, "n": 0}
  mean = sum(xs) / n
  sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
  return {"mean": mean, "sd": sd, "n": n}


def default_benchmark(summary: dict) -> str:
  evals = [summary.get("warmup")] + [e.get("eval") for e in summary["iterations"]]
  for ev in evals:
    if ev:
      return next(iter(ev))
  raise CompareError("no evaluation in the first run's summary.json")


def _point_of(ev: dict) -> dict:
  fams = ev.get("per_family") or {}
  return {"accuracy": ev.get("accuracy"), "code_rate": ev.get("code_rate"),
          "selection_accuracy": ev.get("selection_accuracy"),
          "per_family": {f: {"accuracy": g.get("accuracy"), "code_rate": g.get("code_rate")}
                         for f, g in fams.items()}}


def run_points(summary: dict, benchmark: str) -> list[dict]:
  """The run's evaluation points of `benchmark`, each with its iteration and the cumulative
  rollouts and optimizer steps that produced the evaluated policy. A last iteration without
  an evaluation is followed by one of the final policy (summary["final"]): it gets that point."""
  points = []
  if (summary.get("warmup") or {}).get(benchmark):
    points.append({"iteration": 0, "rollouts": 0, "steps": 0,
                   **_point_of(summary["warmup"][benchmark])})
  rollouts = steps = 0
  iters = summary["iterations"]
  for i, e in enumerate(iters):
    rollouts += e.get("em/rollouts") or 0
    steps += e.get("em/mstep_steps") or 0
    ev = e.get("eval")
    if ev is None and i == len(iters) - 1:
      ev = summary.get("final")
    if ev and ev.get(benchmark):
      points.append({"iteration": e["iteration"], "rollouts": rollouts, "steps": steps,
                     **_point_of(ev[benchmark])})
  return points


def run_polarisation(summary: dict) -> list[dict]:
  return [{"iteration": e["iteration"], "above_95": e.get("estep/native_code_rate_above_95"),
           "below_05": e.get("estep/native_code_rate_below_05")} for e in summary["iterations"]]


def run_histograms(summary: dict) -> list[dict]:
  """Per E-step the per-query native code-rate histogram (10 bins over [0, 1]) as fractions of
  the step's queries; iterations logged without one are left out."""
  out = []
  for e in summary["iterations"]:
    h = e.get("estep/native_code_rate_query_hist")
    if h and sum(h):
      out.append({"iteration": e["iteration"], "fractions": [c / sum(h) for c in h]})
  return out


def _mean_histograms(per_run: list[list[dict]]) -> list[dict]:
  """Per iteration, the bin-wise mean of the runs' fractions (each run weighs the same)."""
  return [{"iteration": it, "n": len(rs),
           "fractions": [sum(b) / len(rs) for b in zip(*(r["fractions"] for r in rs))]}
          for it, rs in _group_by_iteration(per_run)]


def run_any_native(summary: dict) -> dict:
  """{family: {"mean", "first"}}: the fraction of the family's E-step queries with at least one
  native code rollout, averaged over iterations and at the first one (before any M-step: what
  the warm-up policy alone offers). Empty for runs logged before these keys existed."""
  per: dict[str, list[float]] = {}
  for e in summary["iterations"]:
    for k, v in e.items():
      if k.startswith(FAMILY_PREFIX) and k.endswith("/any_native_code") and v is not None:
        per.setdefault(k[len(FAMILY_PREFIX):-len("/any_native_code")], []).append(v)
  return {f: {"mean": sum(v) / len(v), "first": v[0]} for f, v in sorted(per.items())}


def _group_by_iteration(rows_per_run: list[list[dict]]) -> list[tuple[int, list[dict]]]:
  """Aligns runs by iteration: (iteration, the rows of the runs that have it), in order."""
  table: dict[int, list[dict]] = {}
  for rows in rows_per_run:
    for r in rows:
      table.setdefault(r["iteration"], []).append(r)
  return sorted(table.items())


def _by_iteration(rows_per_run: list[list[dict]], keys) -> list[dict]:
  """Per iteration, a stat over the runs that have it, per key."""
  return [{"iteration": it, "n": len(rs), **{k: stat(r[k] for r in rs) for k in keys}}
          for it, rs in _group_by_iteration(rows_per_run)]


def aggregate(runs: list[dict], arms: list[str], benchmark: str) -> dict:
  """compare.json: per arm (in order of first appearance) its runs and the statistics."""
  out: dict = {"benchmark": benchmark, "sd": "sample (ddof=1)", "arms": {}}
  for arm in dict.fromkeys(arms):
    members = [r for r, a in zip(runs, arms) if a == arm]
    points = []
    for r in members:
      p = run_points(r["summary"], benchmark)
      if not p:
        raise CompareError(f"{r['dir']}: no evaluation of benchmark {benchmark!r}")
      points.append(p)
    finals = [p[-1] for p in points]
    warm = [p[0] for p in points if p[0]["iteration"] == 0]
    fams = sorted({f for p in finals for f in p["per_family"]})
    anys = [run_any_native(r["summary"]) for r in members]
    any_fams = sorted({f for a in anys for f in a})
    out["arms"][arm] = {
        "runs": [{"dir": r["dir"], "seed": r["config"].get("seed"),
                  "algorithm": r["summary"].get("algorithm"), "points": p}
                 for r, p in zip(members, points)],
        "n": len(members),
        "warmup_accuracy": stat(p["accuracy"] for p in warm),
        "final": {
            **{k: stat(p[k] for p in finals)
               for k in ("accuracy", "selection_accuracy", "code_rate", "rollouts", "steps")},
            "per_family": {f: {k: stat(p["per_family"].get(f, {}).get(k) for p in finals)
                               for k in ("accuracy", "code_rate")} for f in fams}},
        "curve": _by_iteration(points, ("rollouts", "steps", "accuracy",
                                        "selection_accuracy", "code_rate")),
        "polarisation": _by_iteration([run_polarisation(r["summary"]) for r in members],
                                      ("above_95", "below_05")),
        "code_rate_histogram": _mean_histograms([run_histograms(r["summary"])
                                                 for r in members]),
        "any_native_code": {f: {k: stat(a.get(f, {}).get(k) for a in anys)
                                for k in ("mean", "first")} for f in any_fams},
    }
  out["paired"] = paired(out["arms"])
  return out


def paired(arms: dict) -> dict:
  """Final accuracy of the first arm minus each other arm's, on the seeds both ran: the seed
  draws the warm-up, the training pool and the held-out problems, so a per-seed difference
  removes that shared variance, which the arms' separate means and sds keep. {arm: {"seeds",
  "diff" (stat), "wins" (seeds where the first arm is strictly better), "ties"}}."""
  names = list(arms)
  if len(names) < 2:
    return {}
  def finals(arm):
    return {r["seed"]: r["points"][-1]["accuracy"] for r in arms[arm]["runs"]
            if r["seed"] is not None and r["points"][-1]["accuracy"] is not None}
  base = finals(names[0])
  out = {}
  for arm in names[1:]:
    other = finals(arm)
    seeds = sorted(set(base) & set(other))
    diffs = [base[s] - other[s] for s in seeds]
    out[arm] = {"seeds": seeds, "diff": stat(diffs), "wins": sum(d > 0 for d in diffs),
                "ties": sum(d == 0 for d in diffs)}
  return {"against": names[0], "arms": out}


# ------------------------------------------------------------------------------ report


def _fmt(s: dict, sd: bool = True) -> str:
  if s["mean"] is None:
    return "-"
  return f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if sd and s["sd"] is not None else "")


def _count(s: dict) -> str:
  return "-" if s["mean"] is None else f"{s['mean']:.6g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(r) + " |" for r in rows), ""]


def _iteration_table(arms: dict, series: str, first: str, second: str) -> list[str]:
  """Arms x iterations of `arms[arm][series]`, each cell "first / second" (means)."""
  its = sorted({r["iteration"] for a in arms.values() for r in a[series]})
  rows = []
  for name, a in arms.items():
    by_it = {r["iteration"]: r for r in a[series]}
    rows.append([name, *(f"{_fmt(by_it[i][first], False)} / {_fmt(by_it[i][second], False)}"
                         if i in by_it else "-" for i in its)])
  return _table(["arm", *(f"it {i}" for i in its)], rows)


def to_markdown(result: dict) -> str:
  arms = result["arms"]
  fams = sorted({f for a in arms.values() for f in a["final"]["per_family"]})
  lines = [f"# EM runs compared on `{result['benchmark']}`", "",
           "Final evaluation point per run; mean ± sample sd over runs. Families: accuracy "
           "(code rate).", ""]
  lines += _table(
      ["arm", "runs", "rollouts", "steps", "warm-up acc", "final acc", "selection acc",
       *fams],
      [[name, str(a["n"]), _count(a["final"]["rollouts"]), _count(a["final"]["steps"]),
        _fmt(a["warmup_accuracy"]), _fmt(a["final"]["accuracy"]),
        _fmt(a["final"]["selection_accuracy"]),
        *(f"{_fmt(a['final']['per_family'][f]['accuracy'])} "
          f"({_fmt(a['final']['per_family'][f]['code_rate'], False)})"
          if f in a["final"]["per_family"] else "-" for f in fams)]
       for name, a in arms.items()])
  lines += ["## Per evaluation point", "",
            "Accuracy / selection accuracy at each evaluation point (0 = the warm-up policy), "
            "mean over the runs that have it.", ""]
  lines += _iteration_table(arms, "curve", "accuracy", "selection_accuracy")
  pair = result.get("paired") or {}
  if pair.get("arms"):
    lines += [f"## Paired by seed: {pair['against']} minus each arm", "",
              "Final accuracy difference on the seeds both arms ran (mean ± sample sd), and on "
              f"how many of them {pair['against']} is strictly better.", ""]
    lines += _table(["arm", "seeds", "difference", f"{pair['against']} better"], [
        [name, str(len(d["seeds"])), _fmt(d["diff"]), f"{d['wins']} of {len(d['seeds'])}"]
        for name, d in pair["arms"].items()])
  if any(a["polarisation"] for a in arms.values()):
    lines += ["## Polarisation", "", "Per E-step: fraction of queries whose native code rate is "
              "> 0.95 / < 0.05 (mean over runs).", ""]
    lines += _iteration_table(arms, "polarisation", "above_95", "below_05")
  any_fams = sorted({f for a in arms.values() for f in a["any_native_code"]})
  if any_fams:
    lines += ["## Queries with at least one native code rollout", "",
              "Per family: mean over iterations (first iteration), mean over runs.", ""]
    lines += _table(["arm", *any_fams], [
        [name, *(f"{_fmt(a['any_native_code'][f]['mean'], False)} "
                 f"({_fmt(a['any_native_code'][f]['first'], False)})"
                 if f in a["any_native_code"] else "-" for f in any_fams)]
        for name, a in arms.items()])
  lines += ["## Runs", ""]
  for name, a in arms.items():
    runs = ", ".join(f"{r['dir']} (seed {r['seed']})" for r in a["runs"])
    lines.append(f"- **{name}**: {runs}")
  return "\n".join(lines) + "\n"


def _save(fig, path: str) -> None:
  fig.tight_layout()
  with fileio.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png")


def write_plots(result: dict, out_dir: str) -> list[str]:
  """The PNGs of the module docstring; returns their paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  arms = result["arms"]
  colors = {name: f"C{i % 10}" for i, name in enumerate(arms)}
  written = []

  def _done(fig, ax, name: str) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    path = fileio.join(out_dir, name)
    _save(fig, path)
    plt.close(fig)
    written.append(path)

  for x, label in (("rollouts", "cumulative rollouts"), ("steps", "cumulative optimizer steps")):
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, a in arms.items():
      for r in a["runs"]:  # thin: each run
        ax.plot([p[x] for p in r["points"]], [p["accuracy"] for p in r["points"]],
                "-", color=colors[name], lw=0.6, alpha=0.4)
      curve = [c for c in a["curve"] if c["accuracy"]["mean"] is not None]
      xs = [c[x]["mean"] for c in curve]
      ys = [c["accuracy"]["mean"] for c in curve]
      sd = [c["accuracy"]["sd"] or 0.0 for c in curve]
      ax.plot(xs, ys, "-o", color=colors[name], lw=2, ms=4, label=f"{name} (n={a['n']})")
      ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)],
                      color=colors[name], alpha=0.2, lw=0)
    ax.set_xlabel(f"{label} (mean over runs; 0 = warm-up policy)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{result['benchmark']}: accuracy against {label} (band: ±1 sd)")
    _done(fig, ax, f"accuracy_vs_{x}.png")

  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  for name, a in arms.items():
    pol = a["polarisation"]
    for key, style in (("above_95", "-o"), ("below_05", "--s")):
      pts = [(p["iteration"], p[key]["mean"]) for p in pol if p[key]["mean"] is not None]
      ax.plot([i for i, _ in pts], [v for _, v in pts], style, color=colors[name], ms=4,
              label=f"{name}: code rate {'> 0.95' if key == 'above_95' else '< 0.05'}")
  ax.set_xlabel("EM iteration (its E-step samples the previous policy)")
  ax.set_ylabel("fraction of queries")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("polarisation of the native code rate per query")
  _done(fig, ax, "polarisation.png")

  its = sorted({h["iteration"] for a in arms.values() for h in a["code_rate_histogram"]})
  if its:  # rows: arms, columns: E-steps; the shape the polarisation masses summarise
    fig, axes = plt.subplots(len(arms), len(its), figsize=(2.2 * len(its) + 1, 1.6 * len(arms)
                                                           + 0.8), dpi=100, squeeze=False,
                             sharex=True, sharey=True)
    centers = [(b + 0.5) / 10 for b in range(10)]
    for r, (name, a) in enumerate(arms.items()):
      by_it = {h["iteration"]: h for h in a["code_rate_histogram"]}
      for c, it in enumerate(its):
        ax = axes[r][c]
        if it in by_it:
          ax.bar(centers, by_it[it]["fractions"], width=0.095, color=colors[name])
        ax.set_ylim(0, 1.02)
        if r == 0:
          ax.set_title(f"E-step {it}", fontsize=8)
        if c == 0:
          ax.set_ylabel(name, fontsize=7)
        if r == len(arms) - 1:
          ax.set_xlabel("native code rate", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle("per-query native code rate: fraction of queries per bin (mean over runs)",
                 fontsize=8)
    path = fileio.join(out_dir, "code_rate_histograms.png")
    _save(fig, path)
    plt.close(fig)
    written.append(path)

  fams = sorted({f for a in arms.values() for f in a["final"]["per_family"]})
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(fams) + 2), 4), dpi=100)
  width = 0.8 / max(1, len(arms))
  for k, (name, a) in enumerate(arms.items()):
    stats = [a["final"]["per_family"].get(f, {}).get("code_rate") or stat([]) for f in fams]
    ax.bar([i + (k - (len(arms) - 1) / 2) * width for i in range(len(fams))],
           [s["mean"] or 0.0 for s in stats], width, yerr=[s["sd"] or 0.0 for s in stats],
           color=colors[name], capsize=2, label=name)
  ax.set_xticks(range(len(fams)), fams)
  ax.set_ylabel("final code rate (mean ± sd over runs)")
  ax.set_ylim(0, 1.05)
  ax.set_title(f"{result['benchmark']}: code rate per family at the final point")
  _done(fig, ax, "code_rate_by_family.png")
  return written


# --------------------------------------------------------------------------------- main


def main(argv=None) -> int:
  p = _Parser(prog="python -m aci_jax.em.compare", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished EM run directories")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--label", action="append", default=[], metavar="NAME=GLOB",
                 help="runs whose directory matches GLOB form arm NAME (first match wins)")
  p.add_argument("--benchmark", default=None, help="default: the first one evaluated")
  try:
    args = p.parse_args(argv)
    labels = parse_labels(args.label)
    runs = [load_run(d) for d in args.runs]
    benchmark = args.benchmark or default_benchmark(runs[0]["summary"])
    result = aggregate(runs, [arm_of(r, labels) for r in runs], benchmark)
  except CompareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  md = to_markdown(result)
  fileio.makedirs(args.out)
  fileio.write_text(fileio.join(args.out, "compare.md"), md)
  fileio.write_json(fileio.join(args.out, "compare.json"), result)
  write_plots(result, args.out)
  print(md, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
