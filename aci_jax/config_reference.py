"""The configuration reference, docs/config.md, generated from the config files.

    python -m aci_jax.config_reference --out docs/config.md     # regenerate after a config change
    python -m aci_jax.config_reference --check docs/config.md   # exit 1 if it is out of date

One row per key of the defaults (aci_jax/configuration.py), configs/default.py,
configs/sft_toy.py and every configs/paper.py preset: its meaning (MEANINGS below) and its value
in each. A key that some config has and MEANINGS lacks, or a meaning for a key no config has, is
an error, so the page cannot drift from the files.
"""

from __future__ import annotations

import argparse
import math
import os
import runpy
import sys

from aci_jax import configuration, fileio

# Columns of the tables: (title, config file; None: configuration.defaults()).
COLUMNS = (("defaults", None), ("default.py", "default"), ("sft_toy.py", "sft_toy"),
           ("paper.py", "paper"))

SECTIONS = {
    "": "Top level",
    "model": "model: the policy",
    "mesh": "mesh: the device mesh",
    "task": "task: problems (autocode mode)",
    "warmup": "warmup: stage-0 SFT (autocode mode)",
    "data": "data: SFT data (sft mode, and the warm-up run)",
    "em": "em: the EM loop and its baselines",
    "rollout": "rollout: the tool-integrated sampler",
    "sandbox": "sandbox: where model-written code runs",
    "grader": "grader: answer checking",
    "eval": "eval: evaluation during an autocode run",
    "train": "train: the train step",
    "loss": "loss: the objective",
    "optim": "optim: AdamW and its schedule",
    "checkpoint": "checkpoint: orbax checkpoints",
    "export": "export: Hugging Face directories",
    "dist": "dist: multi-host start",
}

MEANINGS = {
    "mode": "what runs: `autocode` (warm-up, EM, evaluation), `sft`, `export`",
    "seed": "seeds the data order, initialisation, sampling keys and curation",
    "problem_seed": "the toy's held-out evaluation problems and the warm-up gate's held-out "
                    "problems (-1 = `seed`)",
    "train_seed": "the toy's training problems and warm-up demonstrations (-1 = the problem "
                  "seed; a warm-up retry moves it)",
    "order_seed": "the SFT data's shuffle and packing (-1 = `seed`)",
    "init_seed": "the initial weights of a `scratch` model (-1 = `seed`)",
    "progress": "tqdm progress bars (training steps, rollout rows) on process 0",
    "tokenizer": "`toy` (built-in character tokenizer, 259 ids), a HF tokenizer directory, or "
                 "`\"\"` = the tokenizer of `model.path`",
    "model.init": "`scratch` (build from the keys below) or `hf` (config and weights from "
                  "`model.path`; then only `dtype`, `param_dtype`, `remat` are read here)",
    "model.path": "HF checkpoint: local directory or hub id `org/name` (downloaded once into "
                  "the Hugging Face cache)",
    "model.arch": "`qwen2` (q/k/v biases allowed) or `llama`",
    "model.vocab_size": "embedding rows; at least the tokenizer's size",
    "model.hidden_size": "D, the residual width",
    "model.intermediate_size": "F, the SwiGLU MLP width",
    "model.num_layers": "decoder layers (stacked with `nn.scan`)",
    "model.num_heads": "query heads H",
    "model.num_kv_heads": "key/value heads K (K divides H; K < H is GQA)",
    "model.head_dim": "Dh, per-head width",
    "model.qkv_bias": "biases on the q/k/v projections (Qwen2)",
    "model.tie_word_embeddings": "the LM head reuses the embedding matrix",
    "model.max_position_embeddings": "longest sequence the model is built for",
    "model.rope_theta": "RoPE base frequency",
    "model.eos_token_ids": "ids that end a response",
    "model.dtype": "compute dtype of activations and matmuls (`float32`, `bfloat16`, "
                   "`float16`)",
    "model.param_dtype": "storage dtype of parameters and Adam moments (float32 master "
                         "weights with bf16 compute is the usual choice)",
    "model.remat": "activation checkpointing per layer: `none`, `full`, `dots`",
    "mesh.data": "pure data-parallel axis size (-1: all remaining devices)",
    "mesh.fsdp": "data-parallel axis with parameters and optimizer state sharded (-1: all "
                 "remaining devices)",
    "mesh.tensor": "tensor-parallel axis (heads, MLP columns, vocabulary)",
    "task.name": "`toy` (the synthetic task, generated) or `jsonl` (files below)",
    "task.families": "toy problem families (docs/toy.md)",
    "task.train_per_family": "toy training problems per family",
    "task.train_caps": "per-family caps on train_per_family, `('family:n', ...)`, for a "
                       "family with fewer problems (`mul_small` has 576)",
    "task.eval_per_family": "toy held-out problems per family",
    "task.warmup_examples": "toy warm-up demonstrations (the first N training problems; 0 = all)",
    "task.code_fraction": "fraction of toy warm-up demonstrations that use a code cell "
                          "(of the un-triggered ones: the un-prompted code rate)",
    "task.triggered_fraction": "fraction of each toy family's problems that also get a warm-up "
                               "demo asking for code (\"Use Python. \" before the problem) and "
                               "answering with a cell: teaches writing cells and copying their "
                               "output without teaching the policy to open one unasked",
    "task.triggered_families": "the toy families whose problems get those demos (`()`: every "
                               "family); an entry 'family:fraction' sets that family's own "
                               "fraction (e.g. ('mul:1.0', 'powmod:0.3'))",
    "task.triggered_length_balance": "give every answer length of a family an equal share of "
                                     "its triggered demos (a problem repeated up to 4 times): "
                                     "the toy policy copies a printed value only at the "
                                     "lengths it saw often",
    "task.copy_drill": "fraction of toy code demos whose cell prints a value one or two digits "
                       "off the answer, boxed as printed: the box is learned as a copy of the "
                       "output (never a training target) rather than recomputed from the operands",
    "task.demo_repeats": "per-family repeats of the toy warm-up demos, `('family:k', ...)`: every "
                         "demo of that family's problems k times (`mul_small`'s 576 problems "
                         "against 2,000 in the other families)",
    "task.forced_fraction": "fraction of each toy family's problems that also get a warm-up "
                            "demo with the un-asked prompt and the cell, its opening code "
                            "prefix given as context (loss mask 0): cells learned where the "
                            "E-step and evaluation force code, without training the decision",
    "task.train_path": "JSONL training pool (`problem` or `question`, and `answer`)",
    "task.train_benchmark": "field mapping of the pool: `\"\"` (generic: `problem` or "
                            "`question`, and `answer`), or a registered benchmark's mapping: "
                            "`math500` (MATH records; `answer` or the last box of `solution`), "
                            "`gsm8k` (`#### N` answers), `aime24`, `amc23`",
    "task.eval_paths.math500": "MATH500 JSONL evaluated during the run (`\"\"`: skipped); "
                               "e.g. `--config.task.eval_paths.math500=data/math500.jsonl`",
    "task.eval_paths.gsm8k": "GSM8K test JSONL evaluated during the run (`\"\"`: skipped)",
    "task.eval_paths.aime24": "AIME24 JSONL evaluated during the run (`\"\"`: skipped)",
    "task.eval_paths.amc23": "AMC23 JSONL evaluated during the run (`\"\"`: skipped); at "
                             "least one benchmark needs a path",
    "task.instruction": "answer-format instruction after every problem, in the user message "
                        "of warm-up, E-step and evaluation prompts (`\"\"`: none)",
    "task.eval_limit": "evaluate the first N problems of each benchmark (0: all)",
    "warmup.steps": "warm-up SFT steps (0: no warm-up, start EM from the loaded policy)",
    "warmup.batch_size": "warm-up sequences per step",
    "warmup.lr": "warm-up peak learning rate",
    "warmup.warmup_steps": "linear learning-rate warm-up steps of the warm-up run",
    "warmup.seq_len": "warm-up sequence length (tokens)",
    "warmup.data_path": "JSONL demonstrations `{prompt, response}` in both modes (`jsonl` task;"
                        " the toy task generates its own)",
    "warmup.end_lr_ratio": "warm-up cosine decay ends at `lr` x this",
    "warmup.weight_decay": "warm-up AdamW weight decay",
    "warmup.b2": "warm-up Adam beta2",
    "warmup.clip_norm": "warm-up gradient clipping (0: none)",
    "warmup.pack_len": "pack each step's demonstrations into rows of this many tokens (0: one "
                       "padded row per demonstration; needs `loss.aggregation=token_mean`)",
    "warmup.gate": "toy probes the warm-up trains until, `(\"family:code\", "
                   "\"family:reason\", \"family:copy\", ...)`, each to `gate_min` (`()`: "
                   "none; aci_jax/eval/warmup_gate.py)",
    "warmup.gate_mode": "`extend`: the cosine over `steps`, then on at its final lr until the "
                        "probes pass (at most `gate_tail` steps more); `hold`: the peak lr "
                        "until they pass (at the latest `steps - gate_tail`), then `gate_tail` "
                        "steps of cosine",
    "warmup.gate_every": "check the gate's probes every this many steps",
    "warmup.gate_min": "a probe passes at this exact-match rate",
    "warmup.gate_n": "held-out problems per gate probe",
    "warmup.gate_tail": "`extend`: the most steps after `steps`; `hold`: cosine steps after the "
                        "gate",
    "warmup.gate_retries": "a gate that closes without passing: up to this many more "
                           "warm-ups from other training problems, initial weights and data "
                           "order, on the same held-out problems "
                           "(`warmup/retry_<k>/`; the passing one, else the best, is used)",
    "warmup.gate_retry_below": "retry only an attempt whose weakest probe is under this (1.0: "
                               "every attempt that did not pass; a near miss is kept)",
    "warmup.average_decay": "gate mode `extend`: the gate probes, and the warm-up exports, an "
                            "exponential moving average of the parameters over the tail after "
                            "`steps`, with this decay (0: the parameters themselves; inert "
                            "without such a tail, where the average is the parameters)",
    "data.train_path": "sft mode: JSONL `{prompt, response}`; empty = toy demonstrations "
                       "(the autocode mode points it at the warm-up demonstrations)",
    "data.toy_examples": "sft mode: number of toy demonstrations when `train_path` is empty",
    "data.seq_len": "sft mode: sequence length (the autocode mode uses `warmup.seq_len`)",
    "data.system": "system message of every prompt: warm-up SFT, E-step rollouts and "
                   "evaluation (empty: none)",
    "em.algorithm": "`autocode` (EM), `em_no_decision` (lambda = 0), `grpo` (standard RL), "
                    "`rejection_sft` (SFT on correct native rollouts); docs/em.md",
    "em.iterations": "EM iterations; 0: evaluate only (on a fresh workdir: parameters without "
                     "an optimizer state, no checkpoint)",
    "em.queries_per_iteration": "queries drawn per iteration (a seeded pass over the pool)",
    "em.native_samples": "unforced rollouts per query, for pi_hat(code|x)",
    "em.k_per_decision": "K: forced rollouts per decision (code, reasoning), for Q_hat(x, c)",
    "em.ask_for_code": "text put before the problem in the prompt of the forced code rollouts "
                        "(e.g. the toy's \"Use Python. \"); they are trained on under the "
                        "un-asked prompt with their behaviour log-probs re-scored there. Empty: "
                        "the code prefix alone forces code (docs/em.md)",
    "em.keep_per_query": "rollouts per query kept for the M-step, drawn by s*(c|x)",
    "em.alpha": "alpha of s* = softmax(alpha pi_hat Q_hat); `inf` = hard argmax (ties: higher "
                "Q_hat, then reasoning); below ln 9 the paper form cannot separate decisions",
    "em.form": "`paper` (softmax of the product, Eq. 5) or `posterior` (s* proportional to "
               "(pi_hat Q_hat)^alpha)",
    "em.score": "what s* scores: `pi_q` (pi_hat Q_hat, the paper) or `q` (Q_hat alone: reason "
                "when reasoning does as well, code when code does better; docs/em.md)",
    "em.code_cost": "price of a tool call, subtracted from Q_hat(x, code) in the score (with "
                    "`q` and alpha = inf: code must win by more than this)",
    "em.adv_whiten": "advantages whitened per query over the `kept` rollouts or over all "
                     "`forced` rollouts of the query, or `none` (advantage = reward) "
                     "(docs/em.md)",
    "em.pi_prior": "pseudo-count per decision added to the native counts of pi_hat",
    "em.epochs": "passes over the curated set per M-step",
    "em.batch_length": "M-step sequence length (0: the longest trajectory, bucketed)",
    "rollout.batch_size": "rows decoded together (continuous batching)",
    "rollout.max_prompt_tokens": "prompt + forced prefix limit (tokens)",
    "rollout.max_new_tokens": "response limit including tool output; longer responses are "
                              "truncated and score 0",
    "rollout.max_tool_calls": "code cells executed per response; later ones get a limit "
                              "message",
    "rollout.decode_steps": "decode steps per device call before the host looks at the rows",
    "rollout.tool_format": "the tool-call format (aci_jax/tool_format.py): `markdown` (code in a "
                           "python fence, its output in an output fence); it owns the forced "
                           "code prefix and the stop and ban strings",
    "rollout.kv_page_size": "slots per page of the paged KV cache (0: a contiguous cache of "
                            "max_prompt_tokens + max_new_tokens slots per row)",
    "rollout.kv_pool_tokens": "KV slots in the page pool shared by all rows (0: batch_size x "
                              "capacity, no row ever waits); rows wait for pages when it is "
                              "short (docs/sampling.md)",
    "rollout.temperature": "sampling temperature of the E-step rollouts",
    "rollout.top_p": "nucleus sampling (1: off)",
    "rollout.top_k": "top-k sampling (0: off)",
    "sandbox.timeout_s": "wall-clock limit per cell (seconds)",
    "sandbox.memory_mb": "memory limit of a session: all its processes together (memory cgroup) "
                         "and each one's address space (MiB)",
    "sandbox.mode": "cell state: `persistent`, `replay` (Qwen2.5-Math harness), `isolated` "
                    "(docs/sandbox.md)",
    "sandbox.allow_weak": "as a non-root user, run cells with the weaker isolation a shared uid "
                          "allows (docs/sandbox.md) instead of refusing to start",
    "grader.num_workers": "grading worker processes",
    "grader.timeout": "hard limit per comparison (seconds); a timeout grades as not equal",
    "grader.fallback": "answer of a response without `\\boxed{}` (docs/grading.md): `none` "
                       "(no answer, scores 0), `answer_is` (a \"the answer is X\" / "
                       "\"Answer: X\" / `#### X` phrase), `last_number` (that phrase, else "
                       "the response's last number); rewards and evaluation alike",
    "eval.every": "evaluate after every N EM iterations (and after the last); 0: only "
                  "warm-up and end",
    "eval.samples": "k of mean@k (0: greedy only)",
    "eval.temperature": "sampling temperature of the mean@k pass",
    "eval.selection": "run both forced modes per problem and report selection accuracy",
    "train.steps": "sft mode: total optimizer steps (autocode: unused; the warm-up uses "
                   "`warmup.steps`, the M-step its curated data)",
    "train.batch_size": "sequences per optimizer step (global); divides by `micro_batches` x "
                        "data-parallel devices",
    "train.micro_batches": "gradient accumulation: the batch is split into this many passes",
    "train.logprob_chunk": "log-probs are computed this many positions at a time, never the "
                           "full [B, T, V] logits",
    "train.logprob_remat": "recompute the chunked logits in the backward pass",
    "train.scan_layers": "scan over the stacked layers (False: unroll them; faster steps for "
                         "small, shallow models, compile time grows with depth)",
    "train.log_every": "sft mode: write metrics every N steps",
    "loss.policy": "registered policy term: `ppo_clip`, `tis`, `grpo`, `sft_nll` "
                   "(docs/training.md)",
    "loss.clip_eps_low": "epsilon below 1 of the importance-ratio clip",
    "loss.clip_eps_high": "epsilon above 1 of the importance-ratio clip",
    "loss.decision_coef": "lambda of the decision term (cross-entropy on the correct rollouts "
                          "of the chosen decision); 0: off",
    "loss.kl_coef": "KL to the reference policy, the run's starting parameters (0: off, as in "
                    "the paper; > 0 keeps a second copy of the parameters and runs one more "
                    "forward per step; never in the EM warm-up)",
    "loss.kl_tokens": "tokens the KL covers: `all` model-written ones, or `after_decision` (not "
                      "the first response token, so the anchor holds how the policy reasons and "
                      "codes but not whether it codes)",
    "loss.aggregation": "`token_mean` or `seq_mean`, for every term",
    "optim.lr": "peak learning rate",
    "optim.warmup_steps": "linear warm-up from 0",
    "optim.decay_steps": "cosine decay ends here (steps, warm-up and hold included)",
    "optim.hold_steps": "steps at the peak lr after the warm-up, before the cosine starts",
    "optim.end_lr_ratio": "final learning rate = `lr` x this (1: constant after warm-up)",
    "optim.b1": "Adam beta1",
    "optim.b2": "Adam beta2",
    "optim.eps": "Adam epsilon",
    "optim.weight_decay": "AdamW decay on matrices (never norms or biases)",
    "optim.clip_norm": "global gradient-norm clip (0: none)",
    "optim.average_decay": "sft mode: also keep an exponential moving average of the "
                           "parameters with this decay, and export it (0: none; the EM loop "
                           "refuses it: its rollouts sample the parameters; the warm-up's is "
                           "`warmup.average_decay`)",
    "optim.average_start": "the average equals the parameters up to this step, then departs",
    "checkpoint.every": "sft mode: save every N steps (the EM loop saves every iteration)",
    "checkpoint.max_to_keep": "checkpoints kept",
    "checkpoint.async_save": "write checkpoints while training continues",
    "export.every": "sft mode: export a HF directory every N steps (0: never)",
    "export.at_end": "export the final policy as a HF directory",
    "export.dtype": "dtype of exported weights (`\"\"`: `model.param_dtype`)",
    "export.dir": "export directory (`\"\"`: `<workdir>/export/step_N`)",
    "export.step": "export mode: checkpoint step to export (0: latest)",
    "dist.multihost": "`auto` (initialise `jax.distributed` when the environment is a "
                      "multi-host launch), `on`, `off`",
    "dist.coordinator": "`host:port` of process 0; set to force an explicit multi-process "
                        "start (e.g. local CPU processes)",
    "dist.num_processes": "processes in an explicit start",
    "dist.process_id": "this process's index in an explicit start",
    "dist.cpu_collectives": "collectives implementation on CPU (`gloo`)",
}

_HEADER = """\
# Configuration reference

Every key of every config file, what it means, and its value in each. Generated from the files
by `python -m aci_jax.config_reference --out docs/config.md`; `tests/test_config_reference.py`
fails when this page and the files disagree.

- `defaults`: `aci_jax.configuration.defaults()`, where every config starts; a config file
  states only what it changes. A section backed by a dataclass takes its defaults from the
  dataclass's fields: `model` (run-time fields) -> `ModelConfig` (aci_jax/model/config.py),
  `mesh` -> `MeshConfig`, `em` -> `EMConfig` (aci_jax/em/loop.py), `rollout` -> `RolloutConfig`
  + `SamplingParams`, `sandbox` -> `SandboxConfig` (its other fields keep their defaults),
  `train` -> `StepConfig` (plus the loop's keys), `loss` -> `LossConfig`, `optim` ->
  `OptimConfig`; the other keys' defaults are written in aci_jax/configuration.py.
- `configs/default.py`: the embedded default, the whole method on the toy task on a CPU.
- `configs/sft_toy.py`: the SFT warm-up alone, on the toy demonstrations (the sft mode reads
  no task, warmup, em, rollout, sandbox, grader or eval key).
- `configs/paper.py:NAME`: AutoCode on a Hugging Face checkpoint, NAME one of
  `qwen2.5-7b`, `qwen2.5-math-1.5b`, `deepseek-math-7b`; where the presets differ, the cell lists
  each. Which values are the paper's and which are ours: the comments in `configs/paper.py` and
  docs/reproducing.md.

Any key can be changed on the command line, `--config.SECTION.KEY=VALUE` (for example
`--config.em.iterations=2`); a key the config does not have is an error
(`error: unknown config key ...`), so a typo never passes silently. `-` in a cell: that config
does not have the key: the model architecture has no default, a from-scratch config states it
and `model.init="hf"` reads it from the checkpoint.
"""


class ReferenceMismatch(ValueError):
  """The config files and MEANINGS disagree; the message names the keys."""


def flatten(config, prefix: str = "") -> dict:
  """{dotted key: value} of a ConfigDict; an empty sub-dict is a key of its own."""
  out = {}
  for key, value in config.items():
    name = prefix + key
    if hasattr(value, "items") and not isinstance(value, dict):
      sub = flatten(value, name + ".")
      out.update(sub if sub else {name: value})
    else:
      out[name] = value
  return out


def load_configs(configs_dir: str) -> dict[str, dict]:
  """{column title: {preset name or "": {dotted key: value}}} for every file in COLUMNS."""
  out = {}
  for title, stem in COLUMNS:
    if stem is None:
      out[title] = {"": flatten(configuration.defaults())}
      continue
    ns = runpy.run_path(os.path.join(configs_dir, f"{stem}.py"))
    presets = list(ns["MODELS"]) if "MODELS" in ns else [""]
    out[title] = {p: flatten(ns["get_config"](p) if p else ns["get_config"]()) for p in presets}
  return out


def _fmt(value) -> str:
  if hasattr(value, "items"):
    value = dict(value)
  if isinstance(value, float) and math.isinf(value):
    text = "inf"
  elif isinstance(value, str):
    text = repr(value) if value else '""'
  else:
    text = repr(value)
  return "`" + text.replace("|", "\\|").replace("\n", "\\n") + "`"


def _cell(presets: dict[str, dict], key: str) -> str:
  values = {p: flat[key] for p, flat in presets.items() if key in flat}
  if not values:
    return "-"
  shown = {p: _fmt(v) for p, v in values.items()}
  if len(set(shown.values())) == 1 and len(values) == len(presets):
    return next(iter(shown.values()))
  return "<br>".join(f"{p}: {s}" for p, s in shown.items())


def render(configs: dict[str, dict]) -> str:
  """The Markdown page for `load_configs(...)`; raises ReferenceMismatch on missing meanings."""
  keys = sorted({k for presets in configs.values() for flat in presets.values() for k in flat})
  undocumented = [k for k in keys if k not in MEANINGS]
  stale = sorted(set(MEANINGS) - set(keys))
  if undocumented or stale:
    raise ReferenceMismatch(f"config keys without a meaning in aci_jax/config_reference.py: "
                          f"{undocumented}; meanings of keys no config has: {stale}")
  lines = [_HEADER]
  order = list(SECTIONS)
  by_section: dict[str, list[str]] = {s: [] for s in order}
  for k in MEANINGS:  # rows in the order of MEANINGS
    section = k.split(".")[0] if "." in k else ""
    if section not in by_section:
      raise ReferenceMismatch(f"key {k!r}: section {section!r} is not in SECTIONS")
    by_section[section].append(k)
  titles = [t for t, _ in COLUMNS]
  for section in order:
    if not by_section[section]:
      continue
    lines.append(f"## {SECTIONS[section]}\n")
    lines.append("| key | meaning | " + " | ".join(titles) + " |")
    lines.append("|---|---|" + "---|" * len(titles))
    for k in by_section[section]:
      cells = [_cell(configs[t], k) for t in titles]
      lines.append(f"| `{k}` | {MEANINGS[k]} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="configs", help="directory of the config files")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--out", help="write the page here (atomically) instead of stdout")
  group.add_argument("--check", metavar="PAGE", help="exit 1 if PAGE differs from the files")
  args = parser.parse_args(argv)
  try:
    page = render(load_configs(args.configs))
  except (OSError, ReferenceMismatch) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.check:
    try:
      with open(args.check, encoding="utf-8") as f:
        current = f.read()
    except OSError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    if current != page:
      print(f"error: {args.check} is out of date with {args.configs}/; regenerate it with "
            f"python -m aci_jax.config_reference --out {args.check}", file=sys.stderr)
      return 1
    return 0
  if args.out:
    with fileio.atomic_open(args.out) as f:
      f.write(page)
  else:
    sys.stdout.write(page)
  return 0


if __name__ == "__main__":
  sys.exit(main())
