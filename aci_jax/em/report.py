"""summary.json and PNG curves of an EM run (accuracy, code rate, selection accuracy)."""

from __future__ import annotations

from aci_jax import fileio

METRICS = ("accuracy", "code_rate", "selection_accuracy")


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
      fig.tight_layout()
      with fileio.atomic_open(path, "wb") as f:  # local or gs://, never a torn PNG
        fig.savefig(f, format="png")
      plt.close(fig)
      written.append(path)
  return written
