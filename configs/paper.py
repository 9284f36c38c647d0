"""AutoCode at paper scale on a Hugging Face checkpoint; the argument picks the base model:

  python -m aci_jax.main --config configs/paper.py:qwen2.5-7b \
      --config.task.train_path=pool.jsonl --config.task.eval_paths.math500=math500.jsonl \
      --config.warmup.data_path=demos.jsonl --config.warmup.steps=500 --workdir gs://bucket/run

  qwen2.5-7b         Qwen/Qwen2.5-7B                     the paper's main model (Qwen2ForCausalLM)
  qwen2.5-math-1.5b  Qwen/Qwen2.5-Math-1.5B              a smaller Qwen2, one TPU host or GPU
  deepseek-math-7b   deepseek-ai/deepseek-math-7b-base   the paper's second model (Llama arch)

`--config.model.path` may be a local checkpoint directory instead of the hub id. Each value below
says whether it is the paper's or ours.

Data: point task.train_path at the training pool (JSONL with problem/question + answer; the
paper samples 7K queries per iteration from a 119K pool) and task.eval_paths at benchmarks, e.g.
MATH500 / GSM8K / AIME24 / AMC23 JSONL files (docs/reproducing.md). Warm-up demonstrations in
both modes (the paper's stage 0) go in warmup.data_path.
"""


import ml_collections




MODELS = {  # name: (hub id, peak learning rate of the M-step (ours))
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", 1e-6),
    "qwen2.5-math-1.5b": ("Qwen/Qwen2.5-Math-1.5B", 2e-6),
    "deepseek-math-7b": ("deepseek-ai/deepseek-math-7b-base", 1e-6),
}


def get_config(model: str = "qwen2.5-7b"):
  if model not in MODELS:
    raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
  model_path, lr = MODELS[model]
  c = ml_collections.ConfigDict()
  c.mode = "autocode"
  c.seed = 0
  c.progress = True
  c.tokenizer = ""  # "" = the tokenizer of model.path
  # Local checkpoint directory or hub id (downloaded once into the HF cache).
  c.model = ml_collections.ConfigDict(dict(
      init="hf", path=model_path, dtype="bfloat16", param_dtype="float32", remat="full"))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # ours: FSDP over all
  c.task = ml_collections.ConfigDict(dict(
      name="jsonl", train_path="", train_benchmark="",
      # Benchmarks evaluated during the run: set a path to evaluate it ("" = skipped), e.g.
      # --config.task.eval_paths.math500=data/math500.jsonl
      eval_paths=ml_collections.ConfigDict(dict(math500="", gsm8k="", aime24="", amc23="")),
      eval_limit=0))
  # Stage 0 warm-up SFT on demonstrations with both modes (paper); steps/lr are ours.
  c.warmup = ml_collections.ConfigDict(dict(
      steps=0, batch_size=64, lr=1e-5, warmup_steps=20, seq_len=2048, data_path=""))
  c.data = ml_collections.ConfigDict(dict(train_path="", toy_examples=0, seq_len=2048,
                                          system=""))
  c.em = ml_collections.ConfigDict(dict(
      algorithm="autocode",
      iterations=4,                 # ours (the paper reports a few EM iterations)
      queries_per_iteration=7000,   # paper: 7K queries per iteration from a 119K pool
      native_samples=8,             # ours: native rollouts per query for pi_hat
      k_per_decision=8,             # paper: K = 8 rollouts per decision
      keep_per_query=8,             # ours
      # s* = softmax(alpha * pi_hat * Q_hat) is the paper's Eq. 5 (form="paper"); alpha and
      # pi_prior are ours. pi_hat * Q_hat lies in [0, 1], so alpha = 1 keeps s* within
      # [0.27, 0.73] whatever the estimates: curation near 50/50, the decision barely learned
      # (docs/em.md). alpha = inf is the hard argmax of pi_hat * Q_hat (ties: higher Q_hat, then
      # reasoning), decisive by construction, as the toy needed. pi_prior = 0.5 pseudo-counts
      # per decision keep pi_hat(code) > 0 for a query the policy never coded on, so a query
      # only code solves can still move to code (with 0, pi*Q = 0 for code there).
      alpha=float("inf"),
      form="paper",
      pi_prior=0.5,
      adv_whiten="kept",            # ours (docs/em.md, "Advantage whitening")
      epochs=1,                     # ours
      code_prefix="```python\n",    # code mode forced by a response prefix (paper)
      batch_length=0))
  c.rollout = ml_collections.ConfigDict(dict(
      batch_size=256, max_prompt_tokens=1024, max_new_tokens=3072,
      max_tool_calls=4,             # design brief default (Qwen2.5-Math harness)
      decode_steps=128, temperature=1.0, top_p=1.0, top_k=0))
  # allow_weak: run cells without the root-only isolation (shared uid; docs/sandbox.md).
  c.sandbox = ml_collections.ConfigDict(dict(timeout_s=5.0, memory_mb=4096, mode="persistent",
                                             allow_weak=False))
  c.grader = ml_collections.ConfigDict(dict(num_workers=8, timeout=5.0))
  c.eval = ml_collections.ConfigDict(dict(every=1, samples=4, temperature=0.6, selection=True))
  c.train = ml_collections.ConfigDict(dict(
      steps=0, batch_size=128, micro_batches=4, logprob_chunk=512, log_every=1))
  c.loss = ml_collections.ConfigDict(dict(
      policy="ppo_clip",
      clip_eps_low=0.2, clip_eps_high=0.2,  # paper: epsilon = 0.2
      decision_coef=0.1,                    # ours (lambda is not given in the paper)
      kl_coef=0.0,                          # paper: no KL term
      aggregation="token_mean"))
  c.optim = ml_collections.ConfigDict(dict(
      lr=lr, warmup_steps=10, decay_steps=10000, end_lr_ratio=1.0, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.0, clip_norm=1.0))     # ours
  c.checkpoint = ml_collections.ConfigDict(dict(every=1, max_to_keep=2, async_save=True))
  c.export = ml_collections.ConfigDict(dict(every=0, at_end=True, dtype="bfloat16", dir="",
                                            step=0))
  c.dist = ml_collections.ConfigDict(dict(
      multihost="auto", coordinator="", num_processes=1, process_id=0, cpu_collectives="gloo"))
  return c
