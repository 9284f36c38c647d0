"""SFT warm-up of a tiny from-scratch policy on the built-in toy demonstrations (CPU, < 1 min).

  python -m aci_jax.main --config configs/sft_toy.py [--config.train.steps=50] [--workdir DIR]

Every key the training core reads is here; other configs copy this and change values.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "sft"
  c.seed = 0
  c.progress = True  # tqdm bar on process 0
  c.tokenizer = "toy"  # "toy" (built-in character tokenizer, 259 ids) or a HF tokenizer dir

  # Policy. init "scratch" builds ModelConfig from these keys; init "hf" loads config + weights
  # from `path` and takes only dtype / param_dtype / remat from here.
  c.model = ml_collections.ConfigDict(dict(
      init="scratch", path="", arch="qwen2", vocab_size=272, hidden_size=64,
      intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
      qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=4096,
      eos_token_ids=(256,),
      dtype="float32", param_dtype="float32", remat="none"))  # bf16 compute: dtype="bfloat16"

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1: remaining devices

  c.data = ml_collections.ConfigDict(dict(
      train_path="",  # JSONL {"prompt", "response"}; empty = toy demonstrations
      toy_examples=512, seq_len=128, system=""))

  steps = ml_collections.FieldReference(200)
  c.train = ml_collections.ConfigDict(dict(
      steps=steps, batch_size=16, micro_batches=1, log_every=10,
      logprob_chunk=512, logprob_remat=True))  # logits in chunks, recomputed in backward

  c.loss = ml_collections.ConfigDict(dict(policy="sft_nll", aggregation="token_mean"))
  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-3, warmup_steps=20, decay_steps=steps, end_lr_ratio=0.1, b1=0.9, b2=0.95,
      eps=1e-8, weight_decay=0.01, clip_norm=1.0))

  c.checkpoint = ml_collections.ConfigDict(dict(every=50, max_to_keep=3, async_save=True))
  # HF export: every N steps (0 = never), at the end; dtype "" = model.param_dtype.
  c.export = ml_collections.ConfigDict(dict(every=0, at_end=True, dtype="", dir="", step=0))
  # Multi-host: "auto" initialises jax.distributed when the launch environment is multi-host;
  # coordinator/num_processes/process_id force it (e.g. local CPU processes with gloo).
  c.dist = ml_collections.ConfigDict(dict(
      multihost="auto", coordinator="", num_processes=1, process_id=0, cpu_collectives="gloo"))
  return c
