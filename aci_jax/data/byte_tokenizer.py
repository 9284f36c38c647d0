"""A byte-level tokenizer for models trained from scratch (toy configs, tests): no files, no
download, every string round-trips. Same interface as `aci_jax.tokenizer.Tokenizer`.

Ids 0-255 are the UTF-8 bytes; 256 is <|endoftext|> (EOS and padding).
"""

from __future__ import annotations

from typing import Sequence

EOS_ID = 256
VOCAB_SIZE = 257


class ByteTokenizer:
  eos_ids: tuple[int, ...] = (EOS_ID,)
  pad_id: int = EOS_ID
  vocab_size: int = VOCAB_SIZE
  has_chat_template: bool = False

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    data = bytes(i for i in ids if i < 256)
    text = data.decode("utf-8", errors="replace")
    if not skip_special_tokens:
      # Re-insert EOS markers at their positions.
      parts, cur = [], []
      for i in ids:
        if i == EOS_ID:
          parts.append(bytes(cur).decode("utf-8", errors="replace") + "<|endoftext|>")
          cur = []
        else:
          cur.append(i)
      text = "".join(parts) + bytes(cur).decode("utf-8", errors="replace")
    return text

  def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Plain prompting (no template): the contents joined by blank lines."""
    return "\n\n".join(m["content"] for m in messages) + ("\n\n" if add_generation_prompt else "")

  def chat_ids(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    return self.encode(self.chat_prompt(messages, add_generation_prompt))
