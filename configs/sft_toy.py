"""SFT warm-up of a tiny from-scratch policy on the built-in toy demonstrations (CPU, < 1 min).

  python -m aci_jax.main --config configs/sft_toy.py [--config.train.steps=50] [--workdir DIR]

Only what differs from the defaults (aci_jax/configuration.py) is stated; docs/config.md lists
every key. The sft mode reads seed, progress, tokenizer, model, mesh, data, train, loss, optim,
checkpoint, export and dist; the other sections are there, unused.
"""

import ml_collections

from aci_jax.configuration import defaults


def get_config():
  c = defaults()
  c.mode = "sft"
  c.tokenizer = "toy"  # "toy" (built-in character tokenizer, 259 ids) or a HF tokenizer dir

  # Policy. init "scratch" builds ModelConfig from these keys; init "hf" loads config + weights
  # from `path` and takes only dtype / param_dtype / remat from here (bf16 compute:
  # dtype="bfloat16").
  c.model.update(
      arch="qwen2", vocab_size=272, hidden_size=64, intermediate_size=128, num_layers=2,
      num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True, tie_word_embeddings=True,
      max_position_embeddings=4096, eos_token_ids=(256,))

  # data.train_path: JSONL {"prompt", "response"}; empty = toy demonstrations.
  c.data.update(toy_examples=512, seq_len=128)

  steps = ml_collections.FieldReference(200)  # train.steps, and the end of the cosine decay
  c.train.steps = steps
  c.train.update(batch_size=16, log_every=10)
  c.loss.update(policy="sft_nll")
  c.optim.update(lr=3e-3, warmup_steps=20, weight_decay=0.01)  # cosine to lr/10
  c.optim.decay_steps = steps

  c.checkpoint.update(every=50, max_to_keep=3)
  # HF export: every N steps (0 = never), at the end; dtype "" = model.param_dtype.
  # Multi-host (dist): "auto" initialises jax.distributed when the launch environment is
  # multi-host; coordinator/num_processes/process_id force it (e.g. local CPU processes, gloo).
  return c
