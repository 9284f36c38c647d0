"""Tokenizer loading from a checkpoint directory, round trips, and chat templates."""

import pytest

from aci_jax.tokenizer import Tokenizer
from tokenizer_fixtures import build_tokenizer


def test_round_trip_and_special_ids(tmp_path):
  tok = Tokenizer.from_pretrained(build_tokenizer(tmp_path / "t"))
  text = "Let x = 3.\n```python\nprint(x ** 2)\n```\nüñï"
  ids = tok.encode(text)
  assert all(isinstance(i, int) for i in ids)
  assert tok.decode(ids) == text
  end = tok.hf.convert_tokens_to_ids("<|im_end|>")
  assert tok.eos_ids == (end,)
  assert tok.pad_id == end  # no pad token in the checkpoint: EOS stands in (always masked)


def test_chat_template_rendering(tmp_path):
  tok = Tokenizer.from_pretrained(build_tokenizer(tmp_path / "t"))
  msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
  expected = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
              "<|im_start|>assistant\n")
  assert tok.chat_prompt(msgs) == expected
  assert tok.chat_prompt(msgs, add_generation_prompt=False) == expected[:-len(
      "<|im_start|>assistant\n")]
  ids = tok.chat_ids(msgs)
  # Special tokens are single ids, not spelled out byte by byte.
  start = tok.hf.convert_tokens_to_ids("<|im_start|>")
  assert ids.count(start) == 3 and ids[0] == start


def test_base_model_without_template(tmp_path):
  tok = Tokenizer.from_pretrained(build_tokenizer(tmp_path / "t", chat_template=None))
  assert not tok.has_chat_template
  assert tok.chat_prompt([{"role": "user", "content": "What is 2+2?"}]) == "What is 2+2?\n\n"


def test_missing_tokenizer_files(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="no tokenizer files"):
    Tokenizer.from_pretrained(str(tmp_path))
