"""summary.json and PNG curves of an EM run (accuracy, code rate, selection accuracy, and the
polarisation of the native code rate per query over the E-steps)."""

from __future__ import annotations

from aci_jax import fileio

METRICS = ("accuracy", "code_rate", "selection_accuracy")
# E-step statistics per iteration (estep.polarisation): the overall native code rate and the
# mass of queries that (almost) never / (almost) always code natively.
POLARISATION = (("estep/native_code_rate", "native code rate (all rollouts)"),
                ("estep/native_code_rate_below_05", "queries with code rate < 0.05"),
                ("estep/native_code_rate_above_95", "queries with code rate > 0.95"))


def write_summary(path: str, summary: dict) -> None:
  """Atomic JSON write (temp file + rename)."""
  fileio.write_json(path, summary)


def curves(summary: dict) -> dict:
  """{benchmark: {series name: ([x], [y])}}: x = 0 for the warm-up policy, then iterations."""
  points = [(0, summary.get("warmup") or {})]
  points += [(e["iteration"], e["eval"]) for e in summary.get("iterations", []) if "eval" in e]
  out: dict = {}
  for x, point in points:
    for bench, p in point.items():
      series = out.setdefault(bench, {})
      for m in METRICS:
        if p.get(m) is not None:
          xs, ys = series.setdefault(m, ([], []))
          xs.append(x)
          ys.append(p[m])
      for key in ("per_family", "per_subject"):
        for group, g in (p.get(key) or {}).items():
          for m in METRICS:
            if g.get(m) is not None:
              xs, ys = series.setdefault(f"{m}/{group}", ([], []))
              xs.append(x)
              ys.append(g[m])
  return out


def polarisation_curves(summary: dict) -> dict:
  """{series label: ([iteration], [value])} of the E-step polarisation statistics."""
  out: dict = {}
  for e in summary.get("iterations", []):
    for key, label in POLARISATION:
      if e.get(key) is not None:
        xs, ys = out.setdefault(label, ([], []))
        xs.append(e["iteration"])
        ys.append(e[key])
  return out


def _save(fig, path: str) -> None:
  fig.tight_layout()
  with fileio.atomic_open(path, "wb") as f:  # local or gs://, never a torn PNG
    fig.savefig(f, format="png")


def write_plots(summary: dict, directory: str) -> list[str]:
  """One PNG per benchmark and metric: the overall curve and one line per family/subject."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []
  for bench, series in curves(summary).items():
    for m in METRICS:
      if m not in series:
        continue
      fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
      xs, ys = series[m]
      ax.plot(xs, ys, "k-o", lw=2, label="all")
      for name, (gx, gy) in sorted(series.items()):
        if name.startswith(m + "/"):
          ax.plot(gx, gy, "--o", ms=3, label=name.split("/", 1)[1])
      ax.set_xlabel("EM iteration (0 = warm-up policy)")
      ax.set_ylabel(m.replace("_", " "))
      ax.set_ylim(-0.02, 1.02)
      ax.set_title(f"{bench}: {m.replace('_', ' ')} ({summary.get('algorithm', '')})")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7, loc="best")
      path = fileio.join(directory, f"{bench}_{m}.png")
      _save(fig, path)
      plt.close(fig)
      written.append(path)
  pol = polarisation_curves(summary)
  if pol:
    # The E-step of iteration i samples the policy of iteration i - 1: x is the iteration.
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for (label, (xs, ys)), style in zip(pol.items(), ("k-o", "b--o", "r--o")):
      ax.plot(xs, ys, style, ms=4, label=label)
    ax.set_xlabel("EM iteration (its E-step samples the previous policy)")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"native code rate per query ({summary.get('algorithm', '')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    path = fileio.join(directory, "polarisation.png")
    _save(fig, path)
    plt.close(fig)
    written.append(path)
  return written
