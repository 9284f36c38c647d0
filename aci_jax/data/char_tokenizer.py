"""A character-level tokenizer for the embedded toy task, built offline in-process.

It is a real Hugging Face fast tokenizer (byte-level BPE with the 256 byte symbols and no
merges, plus special tokens), wrapped in `transformers.PreTrainedTokenizerFast`, so every code
path that takes an HF tokenizer -- `aci_jax.tokenizer.Tokenizer`, the sampler's stop/ban tables
(`aci_jax.sampling.stops.token_texts`), chat templates, `save_pretrained` -- works on it
unchanged. For ASCII text (all of the toy task) one character is one token.

Ids: 0-255 are the UTF-8 bytes (id == byte value); then the special tokens:

    256 <|endoftext|>   end of a response (EOS) and padding
    257 <|im_start|>    opens a prompt
    258 <|im_end|>      closes a prompt; the response starts right after it

The chat template is deliberately tiny (two tokens around the problem text) so toy prompts stay
short: `<|im_start|>What is 47 + 35?<|im_end|>`.
"""

from __future__ import annotations

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN, "<|im_start|>", "<|im_end|>")
EOS_ID = 256
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

# Every message is wrapped the same way (roles are not spelled out: the toy has one user turn
# and an optional system text). The generation prompt adds nothing: <|im_end|> already marks
# where the response begins.
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>"
                 "{% endfor %}")


def _gpt2_byte_table() -> list[str]:
  """GPT-2's reversible byte -> printable-character table (byte value -> character)."""
  keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
          list(range(ord("®"), ord("ÿ") + 1)))
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return [table[b] for b in range(256)]


def build_char_tokenizer():
  """A fresh `transformers.PreTrainedTokenizerFast` (see module docstring); no files, no network."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {sym: b for b, sym in enumerate(_gpt2_byte_table())}
  core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  # No regex split and no prefix space: the text is mapped byte by byte, nothing else.
  core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  core.decoder = decoders.ByteLevel()
  core.add_special_tokens(list(SPECIAL_TOKENS))
  fast = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                 bos_token=None, unk_token=None)
  fast.chat_template = CHAT_TEMPLATE
  ids = fast.convert_tokens_to_ids(list(SPECIAL_TOKENS))
  if ids != list(range(256, VOCAB_SIZE)) or len(fast) != VOCAB_SIZE:
    raise RuntimeError(f"char tokenizer: unexpected special ids {ids} / size {len(fast)}")
  return fast


def char_tokenizer():
  """The toy tokenizer as an `aci_jax.tokenizer.Tokenizer` (what the engine and trainer take)."""
  from aci_jax.tokenizer import Tokenizer

  return Tokenizer(build_char_tokenizer())


def save_char_tokenizer(directory: str) -> str:
  """Writes the tokenizer as an HF directory (loadable with `Tokenizer.from_pretrained`)."""
  build_char_tokenizer().save_pretrained(str(directory))
  return str(directory)
