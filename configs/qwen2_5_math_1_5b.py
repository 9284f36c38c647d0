"""AutoCode on Qwen2.5-Math-1.5B (a smaller Qwen2 for one TPU host or GPU).

  python -m aci_jax.main --config configs/qwen2_5_math_1_5b.py \
      --config.model.path=/path/or/hub-id --config.task.train_path=pool.jsonl \
      --config.warmup.data_path=demos.jsonl --config.warmup.steps=500 --workdir gs://...

Settings shared with the other paper configs live in configs/paper_common.py (each value marked
as the paper's or ours).
"""

import os
import importlib.util


def get_config():
  spec = importlib.util.spec_from_file_location(
      "paper_common", os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_common.py"))
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)
  return common.get_config("Qwen/Qwen2.5-Math-1.5B", lr=2e-6)
