"""The toy's character-level tokenizer: ids, round trips, special tokens, the chat template,
save/load as an HF directory, and the sampler's token_texts / stop automata on it."""

import numpy as np

from aci_jax.data import char_tokenizer as ct
from aci_jax.sampling import build_matcher, token_texts
from aci_jax.tokenizer import Tokenizer


def test_ids_are_bytes_and_specials_follow():
  tok = ct.char_tokenizer()
  assert tok.vocab_size == ct.VOCAB_SIZE == 259
  assert tok.encode("Ab 7\n") == [65, 98, 32, 55, 10]
  assert tok.encode("é") == [0xC3, 0xA9]  # non-ASCII: its UTF-8 bytes
  assert tok.encode("<|endoftext|><|im_start|><|im_end|>") == [256, 257, 258]
  assert tok.eos_ids == (256,) and tok.pad_id == 256


def test_round_trip():
  tok = ct.char_tokenizer()
  texts = ["What is 47 + 35?", "  two  spaces\tand tab\n", "```python\nprint(2**10)\n```\n",
           "```output\n1024\n```\n\\boxed{1024}", "ünïcødé ∑ 数学", "", "<|im_end|>x"]
  for t in texts:
    ids = tok.encode(t)
    assert tok.decode(ids) == t
  # Without regex splitting every ASCII character is its own token (no merges).
  s = "Ones 7+5=12, tens 4+3+1=8. \\boxed{82}"
  assert len(tok.encode(s)) == len(s)


def test_chat_template_is_tiny():
  tok = ct.char_tokenizer()
  assert tok.has_chat_template
  ids = tok.chat_ids([{"role": "user", "content": "What is 2 + 3?"}])
  assert ids == [257] + [ord(c) for c in "What is 2 + 3?"] + [258]


def test_save_and_load(tmp_path):
  d = ct.save_char_tokenizer(tmp_path / "tok")
  tok = Tokenizer.from_pretrained(d)
  ref = ct.char_tokenizer()
  s = "<|im_start|>Which is larger, 12 or 21?<|im_end|>Tens 1 vs 2"
  assert tok.encode(s) == ref.encode(s)
  assert tok.eos_ids == ref.eos_ids and tok.vocab_size == ref.vocab_size
  assert tok.chat_ids([{"role": "user", "content": "x"}]) == [257, 120, 258]


def test_token_texts_and_stop_matcher():
  tok = ct.char_tokenizer()
  texts = token_texts(tok.hf)
  assert len(texts) == 259
  assert texts[ord("`")] == "`" and texts[ord("\n")] == "\n" and texts[ord("A")] == "A"
  assert texts[256:] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  assert texts[0xC3] == "\ufffd"  # a lone UTF-8 lead byte: no ASCII pattern can match it
  m = build_matcher(("```output",), texts)
  state, hit = m.run(tok.encode("x = 1\n```\n```output"))
  assert hit == 1
  _, hit = m.run(tok.encode("```outpu"))
  assert hit == 0
  assert np.asarray(m.hit).shape == (m.num_states, 259)
