"""Random tiny Hugging Face checkpoints, saved to disk, as independent references."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

# One intra-op thread: on a 2-core machine shared with XLA's thread pool, torch's default spin-
# waiting pool is 10-100x slower for these tiny models, not faster.
torch.set_num_threads(1)

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)


def make_hf_model(arch: str, seed: int = 0, **overrides):
  """A randomly initialised Qwen2/Llama torch model in float32, weights non-trivial everywhere
  (norm scales and biases randomised too, so a transposed or skipped tensor cannot hide)."""
  kw = {**BASE, **overrides}
  cfg = Qwen2Config(**kw) if arch == "qwen2" else LlamaConfig(**kw)
  torch.manual_seed(seed)
  model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith(".bias"):
        p.copy_(0.1 * torch.randn_like(p))
      else:  # larger than the 0.02 init so logits are O(1) and differences are visible
        p.copy_(0.15 * torch.randn_like(p))
  return model


def save_hf_model(model, directory, **kw) -> str:
  model.save_pretrained(str(directory), safe_serialization=True, **kw)
  return str(directory)


def hf_logits(model, tokens: np.ndarray, valid: np.ndarray | None = None,
              positions: np.ndarray | None = None) -> np.ndarray:
  """Reference float32 logits [B, T, V] from the torch model."""
  kwargs = {}
  if valid is not None:
    kwargs["attention_mask"] = torch.tensor(valid.astype(np.int64))
  if positions is not None:
    kwargs["position_ids"] = torch.tensor(positions.astype(np.int64))
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens.astype(np.int64)), **kwargs)
  return out.logits.float().numpy()
