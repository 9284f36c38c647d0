"""AutoCode at paper scale on a Hugging Face checkpoint; the argument picks the base model:

  python -m aci_jax.main --config configs/paper.py:qwen2.5-7b \
      --config.task.train_path=pool.jsonl --config.task.eval_paths.math500=math500.jsonl \
      --config.warmup.data_path=demos.jsonl --config.warmup.steps=500 --workdir gs://bucket/run

  qwen2.5-7b         Qwen/Qwen2.5-7B                     the paper's main model (Qwen2ForCausalLM)
  qwen2.5-math-1.5b  Qwen/Qwen2.5-Math-1.5B              a smaller Qwen2, one TPU host or GPU
  deepseek-math-7b   deepseek-ai/deepseek-math-7b-base   the paper's second model (Llama arch)

`--config.model.path` may be a local checkpoint directory instead of the hub id. Only what differs
from the defaults (aci_jax/configuration.py) is stated, and each value says whether it is the
paper's or ours; docs/config.md lists every key.

Data: point task.train_path at the training pool (JSONL with problem/question + answer; the
paper samples 7K queries per iteration from a 119K pool) and task.eval_paths at benchmarks, e.g.
MATH500 / GSM8K / AIME24 / AMC23 JSONL files (docs/reproducing.md). Warm-up demonstrations in
both modes (the paper's stage 0) go in warmup.data_path.
"""

from aci_jax.configuration import defaults

MODELS = {  # name: (hub id, peak learning rate of the M-step (ours))
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", 1e-6),
    "qwen2.5-math-1.5b": ("Qwen/Qwen2.5-Math-1.5B", 2e-6),
    "deepseek-math-7b": ("deepseek-ai/deepseek-math-7b-base", 1e-6),
}


QWEN_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def get_config(model: str = "qwen2.5-7b"):
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
  model_path, lr = MODELS[model]
  c = defaults()  # tokenizer "" = the tokenizer of model.path
  # Local checkpoint directory or hub id (downloaded once into the HF cache).
  c.model.update(init="hf", path=model_path, dtype="bfloat16", remat="full")
  c.mesh.update(data=1, fsdp=-1)  # ours: FSDP over all devices
  # Benchmarks evaluated during the run: set a path to evaluate it ("" = skipped), e.g.
  # --config.task.eval_paths.math500=data/math500.jsonl
  # Every problem (warm-up demonstrations, E-step, evaluation) is followed in its user message by
  # the answer-format instruction of Qwen2.5-Math's chain-of-thought evaluation: the reward
  # reads \boxed{}, and a model that is never asked for it may never write it.
  c.task.update(name="jsonl", instruction=QWEN_MATH_INSTRUCTION)
  # Stage 0 warm-up SFT on demonstrations with both modes (paper); its steps, lr, warm-up and
  # constant schedule (the defaults of warmup.*) are ours.
  c.em.update(
      iterations=4,                 # ours (the paper reports a few EM iterations)
      queries_per_iteration=7000,   # paper: 7K queries per iteration from a 119K pool
      k_per_decision=8,             # paper: K = 8 rollouts per decision
      # s* = softmax(alpha * pi_hat * Q_hat) is the paper's Eq. 5 (form="paper"); alpha and
      # pi_prior are ours. pi_hat * Q_hat lies in [0, 1], so alpha = 1 keeps s* within
      # [0.27, 0.73] whatever the estimates: curation near 50/50, the decision barely learned
      # (docs/em.md). alpha = inf is the hard argmax of pi_hat * Q_hat (ties: higher Q_hat, then
      # reasoning), decisive by construction, as the toy needed. pi_prior = 0.5 pseudo-counts
      # per decision keep pi_hat(code) > 0 for a query the policy never coded on, so a query
      # only code solves can still move to code (with 0, pi*Q = 0 for code there).
      form="paper",
      alpha=float("inf"),
      pi_prior=0.5)
  # Ours, at their defaults: native_samples=8 (native rollouts per query for pi_hat),
  # keep_per_query=8, epochs=1, adv_whiten="kept" (docs/em.md, "Advantage whitening").
  # Code mode is forced by a response prefix (paper): the tool format's (aci_jax/tool_format.py).
  # max_tool_calls stays 4, the design brief's default (Qwen2.5-Math harness).
  # Ours: KV pages for 1,024 tokens per row on average (rollouts average ~600 tokens of the
  # 4,096 slots a row may reach): a quarter of a contiguous cache (docs/tpu.md).
  c.rollout.update(batch_size=256, max_prompt_tokens=1024, max_new_tokens=3072,
                   decode_steps=128, kv_pool_tokens=256 * 1024)
  c.loss.update(
      clip_eps_low=0.2, clip_eps_high=0.2,  # paper: epsilon = 0.2
      decision_coef=0.1,                    # ours (lambda is not given in the paper)
      kl_coef=0.0)                          # paper: no KL term
  c.train.update(micro_batches=4)
  c.optim.update(lr=lr, warmup_steps=10, decay_steps=10000, end_lr_ratio=1.0)  # ours
  c.export.update(dtype="bfloat16")
  return c
