"""Tokenizer loading and chat-template rendering (host side only).

A thin layer over `transformers.AutoTokenizer` that fixes the few things the rest of aci_jax
relies on: ids are plain Python ints, the pad id always exists (Qwen and Llama checkpoints
often lack one; we fall back to EOS, which is safe because padding is masked everywhere), and a
chat prompt can be rendered with or without the generation prompt so the E-step can append a
forced response prefix after it.
"""

from __future__ import annotations

import os
from typing import Sequence


class Tokenizer:
  """Wraps a Hugging Face tokenizer loaded from a checkpoint directory (or hub id when online)."""

  def __init__(self, hf_tokenizer):
    self.hf = hf_tokenizer
    eos = hf_tokenizer.eos_token_id
    self.eos_ids: tuple[int, ...] = () if eos is None else (int(eos),)
    pad = hf_tokenizer.pad_token_id
    self.pad_id: int = int(pad) if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

  @classmethod
  def from_pretrained(cls, path: str, **kw) -> "Tokenizer":
    from transformers import AutoTokenizer  # host-only dependency, imported lazily

    if os.path.isdir(path) and not any(
        f.startswith("tokenizer") for f in os.listdir(path)):
      raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config)")
    return cls(AutoTokenizer.from_pretrained(path, **kw))

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added."""
    return [int(i) for i in self.hf.encode(text, add_special_tokens=False)]

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

  @property
  def has_chat_template(self) -> bool:
    return bool(getattr(self.hf, "chat_template", None))

  def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Renders a conversation with the checkpoint's chat template (text, not ids).

    Without a template (base models), messages are joined plainly: system text, then each
    user turn — the base-model prompting the paper uses for its zero-shot runs.
    """
    if self.has_chat_template:
      return self.hf.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    return "\n\n".join(m["content"] for m in messages) + ("\n\n" if add_generation_prompt else "")

  def chat_ids(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    return self.encode(self.chat_prompt(messages, add_generation_prompt))
