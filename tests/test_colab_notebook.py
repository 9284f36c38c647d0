"""colab/quickstart.ipynb executes headless on a CPU (nbclient), so the notebook cannot rot.

The notebook reads ACI_QUICKSTART_TINY=1 and runs the embedded default with a tiny override.
First test: a plain CPU runtime (part 3 must skip itself). Second test: part 3 forced onto the
CPU with a tiny local Qwen2 checkpoint, local MATH500 and pool files, so its API calls run too.
"""

import glob
import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "quickstart.ipynb")


def _execute(tmp_path, **env) -> nbformat.NotebookNode:
  """Runs every cell in a fresh kernel with cwd tmp_path; raises on the first cell error."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  kernel_env = {**os.environ, "ACI_QUICKSTART_TINY": "1", "PYTHONPATH": ROOT,
                # One host device: the toy run compiles faster and the test sees what a
                # Colab CPU runtime sees.
                "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **env}
  client = NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute(env=kernel_env)
  return nb


def _outputs(nb):
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(nb) -> str:
  out = []
  for o in _outputs(nb):
    if o.output_type == "stream":
      out.append(o.text)
    elif "data" in o:
      out.append(o.data.get("text/markdown", "") + o.data.get("text/html", ""))
  return "\n".join(out)


def _markdown(nb) -> list[str]:
  return [o.data["text/markdown"] for o in _outputs(nb)
          if "data" in o and "text/markdown" in o.data]


def _pngs(nb) -> list[str]:
  return [o.data["image/png"] for o in _outputs(nb) if "data" in o and "image/png" in o.data]


def _table_rows(markdown: str) -> dict[tuple[str, str], list[str]]:
  """{(point, benchmark): cells} of the summary table in one Markdown output."""
  rows = {}
  for line in markdown.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 5 and cells[0] != "point" and not set(cells[0]) <= {"-"}:
      rows[(cells[0], cells[1])] = cells[2:]
  return rows


@pytest.mark.slow
def test_cpu_part_runs_headless_with_plots_and_summary_table(tmp_path):
  nb = _execute(tmp_path)
  assert not [o for o in _outputs(nb) if o.output_type == "error"]
  text = _text(nb)
  assert "runtime: CPU" in text
  assert "nothing to install" in text  # the checkout is importable: no pip run
  workdir = tmp_path / "runs" / "quickstart" / "toy"
  summary = json.loads((workdir / "summary.json").read_text())
  plots = sorted(glob.glob(str(workdir / "plots" / "*.png")))
  assert plots and len(_pngs(nb)) == len(plots)
  tables = [m for m in _markdown(nb) if "| point | benchmark | accuracy" in m]
  assert len(tables) == 1
  rows = _table_rows(tables[0])
  assert set(rows) == {("warm-up", "toy"), ("iteration 1", "toy")}
  assert rows[("warm-up", "toy")][0] == f"{summary['warmup']['toy']['accuracy']:.2f}"
  assert rows[("iteration 1", "toy")][1] == f"{summary['final']['toy']['code_rate']:.2f}"
  # Part 3 skipped itself in each of its four code cells.
  assert text.count("this part needs a TPU or GPU") == 4  # load, evaluate, render, EM
  assert not (tmp_path / "runs" / "quickstart" / "math500_base").exists()


@pytest.mark.slow
def test_part3_runs_on_cpu_with_a_tiny_local_checkpoint(tmp_path):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from hf_fixtures import make_hf_model, save_hf_model  # noqa: E402 (imports torch)
  from tokenizer_fixtures import build_tokenizer  # noqa: E402

  model_dir = tmp_path / "tiny_qwen2"
  build_tokenizer(model_dir, vocab_size=300)
  save_hf_model(make_hf_model("qwen2", vocab_size=304), model_dir)
  math500 = tmp_path / "math500.jsonl"
  math500.write_text("".join(json.dumps(r) + "\n" for r in [
      {"problem": "What is $2 + 3$?", "answer": "5", "subject": "Algebra",
       "unique_id": "test/algebra/1.json"},
      {"problem": "Compute $7 \\cdot 6$.", "answer": "42", "subject": "Prealgebra",
       "unique_id": "test/prealgebra/2.json"}]))
  pool = tmp_path / "pool.jsonl"
  pool.write_text("".join(json.dumps({"problem": f"What is {a} + {a}?", "answer": str(2 * a)})
                          + "\n" for a in range(1, 5)))
  nb = _execute(tmp_path, ACI_QUICKSTART_PART3_ON_CPU="1", ACI_QUICKSTART_MODEL=str(model_dir),
                ACI_QUICKSTART_MATH500=str(math500), ACI_QUICKSTART_POOL=str(pool))
  text = _text(nb)
  assert "this part needs a TPU or GPU" not in text
  assert "MATH500[:2] greedy accuracy" in text
  # Rendered trajectories: one HTML block per shown response, with the problem and the gold.
  html = [o.data["text/html"] for o in _outputs(nb) if "data" in o and "text/html" in o.data]
  assert html and all("gold" in h for h in html)
  assert any("What is $2 + 3$?" in h for h in html)
  em_dir = tmp_path / "runs" / "quickstart" / "em_qwen2.5-math-1.5b"
  summary = json.loads((em_dir / "summary.json").read_text())
  assert len(summary["iterations"]) == 1
  final = json.loads((em_dir / "eval" / "iteration_1" / "math500.summary.json").read_text())
  assert final["greedy"]["n"] == 2 and summary["final"]["math500"]["accuracy"] is not None
  em_tables = [m for m in _markdown(nb) if "| point | benchmark" in m and "math500" in m]
  assert len(em_tables) == 1
  assert set(_table_rows(em_tables[0])) == {("warm-up", "math500"), ("iteration 1", "math500")}
  assert len(_pngs(nb)) == (len(glob.glob(str(em_dir / "plots" / "*.png"))) +
                            len(glob.glob(str(tmp_path / "runs/quickstart/toy/plots/*.png"))))
