"""Tokenizer loading and chat-template rendering (host side only).

`load_tokenizer(name)` is the one place a run's tokenizer is made from its config: the toy
character tokenizer or a Hugging Face directory (local or gs://).

A thin layer over `transformers.AutoTokenizer` that fixes the few things the rest of aci_jax
relies on: ids are plain Python ints, the pad id always exists (Qwen and Llama checkpoints
often lack one; we fall back to EOS, which is safe because padding is masked everywhere), and a
chat prompt can be rendered with or without the generation prompt so the E-step can append a
forced response prefix after it.

End of turn. A response ends on any id in `eos_ids`: the union of the tokenizer's EOS, the
checkpoint's generation-config EOS list (generation_config.json, else config.json, in the same
directory) and the chat template's end-of-turn token (`<|im_end|>` for ChatML/Qwen,
`<|eot_id|>` for Llama 3: found by rendering an assistant turn and reading the special token
that closes it). A base checkpoint's tokenizer often names `<|endoftext|>` as EOS while its
template closes turns with `<|im_end|>`; stopping on EOS alone would run every response to the
token limit. `eos_ids[0]` is the end-of-turn token when the template has one: it is the token SFT
appends to every target (aci_jax.data.sft), so the model learns to emit the token we stop on.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable, Sequence

_MARK = "\u2063ACI_JAX_END_OF_TURN_PROBE\u2063"
# Used only when a template cannot be rendered with a plain user/assistant exchange.
_KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def _end_of_turn_id(hf) -> int | None:
  """The special token a chat template writes right after an assistant message, if any."""
  template = getattr(hf, "chat_template", None)
  if not template or not isinstance(template, str):
    return None
  special = set(int(i) for i in hf.all_special_ids)
  special |= {int(i) for i, t in getattr(hf, "added_tokens_decoder", {}).items()
              if getattr(t, "special", False)}
  try:
    text = hf.apply_chat_template(
        [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": _MARK}],
        tokenize=False, add_generation_prompt=False)
    after = text[text.index(_MARK) + len(_MARK):]
    ids = hf.encode(after, add_special_tokens=False) if after else []
    prompt = hf.apply_chat_template([{"role": "user", "content": "1+1?"}], tokenize=False,
                                    add_generation_prompt=True)
    prompt_ids = hf.encode(prompt, add_special_tokens=False)
    # A token the generation prompt ends with opens the response (the toy template closes the
    # prompt with <|im_end|> and has no assistant turn of its own): not an end of turn.
    if ids and int(ids[0]) in special and not (prompt_ids and prompt_ids[-1] == ids[0]):
      return int(ids[0])
    return None
  except Exception:  # noqa: BLE001 - templates may raise on anything; fall back to names
    pass
  for name in _KNOWN_END_OF_TURN:
    if name in template:
      i = hf.convert_tokens_to_ids(name)
      if isinstance(i, int) and i in special:
        return i
  return None


def checkpoint_eos_ids(directory: str) -> tuple[int, ...]:
  """EOS ids a checkpoint directory's generation_config.json (else config.json) lists."""
  for name in ("generation_config.json", "config.json"):
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    try:
      with open(path) as f:
        eos = json.load(f).get("eos_token_id")
    except (OSError, ValueError):
      continue
    if eos is None:
      continue
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
  return ()


class Tokenizer:
  """Wraps a Hugging Face tokenizer loaded from a checkpoint directory (or hub id when online)."""

  def __init__(self, hf_tokenizer, extra_eos_ids: Iterable[int] = (),
               directory: str | None = None):
    self.hf = hf_tokenizer
    # The local directory the tokenizer was read from (exports copy its files), or None.
    self.directory = directory
    eos = hf_tokenizer.eos_token_id
    self.end_of_turn_id: int | None = _end_of_turn_id(hf_tokenizer)
    ids: list[int] = []
    for i in (self.end_of_turn_id, eos, *extra_eos_ids):
      if i is not None and int(i) not in ids:
        ids.append(int(i))
    # Every id that ends a response; [0] is the one SFT targets end with (module docstring).
    self.eos_ids: tuple[int, ...] = tuple(ids)
    pad = hf_tokenizer.pad_token_id
    self.pad_id: int = int(pad) if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

  @classmethod
  def from_pretrained(cls, path: str, **kw) -> "Tokenizer":
    from transformers import AutoTokenizer  # host-only dependency, imported lazily

    if os.path.isdir(path) and not any(
        f.startswith("tokenizer") for f in os.listdir(path)):
      raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config)")
    local = os.path.isdir(path)
    extra = checkpoint_eos_ids(path) if local else ()
    return cls(AutoTokenizer.from_pretrained(path, **kw), extra, path if local else None)

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added."""
    return [int(i) for i in self.hf.encode(text, add_special_tokens=False)]

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def strip_special(self, text: str) -> str:
    """`text` without the tokenizer's special-token strings (e.g. a trailing `<|im_end|>`),
    for reading an answer out of a response: the grader must see "29", not "29<|im_end|>"."""
    names = set(getattr(self.hf, "all_special_tokens", ()))
    names |= {str(t) for t in getattr(self.hf, "added_tokens_decoder", {}).values()
              if getattr(t, "special", False)}
    for t in sorted(names, key=len, reverse=True):
      if t:
        text = text.replace(t, "")
    return text

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


def load_tokenizer(name: str | None, *, toy_dir: str | None = None) -> Tokenizer:
  """The run's tokenizer from a config value (`config.tokenizer`, else the model's path).

  "toy", "" or None: the toy task's character tokenizer. With `toy_dir` (local or gs://) it is
  also written there (by process 0, once) and read back from it, so that every host, the
  warm-up run and the exports use the same files (`Tokenizer.directory`). Anything else: a
  Hugging Face tokenizer directory, local or gs:// (staged to local disk first: `tokenizers`
  reads local files only). A tokenizer that cannot be loaded is a one-line ConfigError.
  """
  from aci_jax import fileio
  from aci_jax.configuration import ConfigError
  from aci_jax.data.char_tokenizer import char_tokenizer, save_char_tokenizer

  if name in (None, "", "toy"):
    if toy_dir is None:
      return char_tokenizer()
    import jax

    if jax.process_index() == 0 and not fileio.exists(fileio.join(toy_dir, "tokenizer.json")):
      if fileio.is_remote(toy_dir):
        with tempfile.TemporaryDirectory() as tmp:
          fileio.upload_dir(save_char_tokenizer(tmp), toy_dir, last=("tokenizer.json",))
      else:
        save_char_tokenizer(toy_dir)
    if jax.process_count() > 1:  # the file process 0 just wrote is then visible to all hosts
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("aci_jax:tokenizer")
    name = toy_dir
  try:
    return Tokenizer.from_pretrained(fileio.stage(name))
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.tokenizer: cannot load {name!r}: {e}".splitlines()[0]) from None
