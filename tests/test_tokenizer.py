"""Tokenizer loading from a checkpoint directory, round trips, and chat templates."""

import pytest

from aci_jax.tokenizer import Tokenizer
from tokenizer_fixtures import LLAMA3, LLAMA3_SPECIALS, build_tokenizer


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


# ------------------------------------------------------------ end of turn (issue 12, item 3)


def _qwen_base(tmp_path):
  # A Qwen2.5 *base* checkpoint: EOS is <|endoftext|>, but its ChatML template closes every
  # turn with <|im_end|>, which a chat-tuned response ends with.
  return Tokenizer.from_pretrained(build_tokenizer(tmp_path / "qb", eos_token="<|endoftext|>"))


def _llama3_base(tmp_path):
  return Tokenizer.from_pretrained(build_tokenizer(
      tmp_path / "l3", chat_template=LLAMA3, specials=LLAMA3_SPECIALS,
      eos_token="<|end_of_text|>", bos_token="<|begin_of_text|>"))


@pytest.mark.parametrize("make,end,eos", [
    (_qwen_base, "<|im_end|>", "<|endoftext|>"),
    (_llama3_base, "<|eot_id|>", "<|end_of_text|>")])
def test_end_of_turn_token_stops_and_ends_sft_targets(tmp_path, make, end, eos):
  from aci_jax.data.sft import encode_demonstration

  tok = make(tmp_path)
  end_id, eos_id = (tok.hf.convert_tokens_to_ids(t) for t in (end, eos))
  assert tok.end_of_turn_id == end_id
  assert set(tok.eos_ids) == {end_id, eos_id}
  # SFT targets end with the token the sampler stops on (eos_ids[0]), trained (mask 1).
  ex = encode_demonstration(tok, "1+1?", "The answer is 2.", max_len=256)
  assert int(ex.tokens[-1]) == end_id == tok.eos_ids[0] and ex.loss_mask[-1] == 1.0
  # The template renders that token after an assistant turn, so the two agree.
  conv = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
  assert end_id in tok.chat_ids(conv, add_generation_prompt=False)


def test_rollout_engine_stops_on_every_end_token(tmp_path):
  from aci_jax.model import ModelConfig
  from aci_jax.rollout.engine import RolloutConfig, RolloutEngine

  tok = _qwen_base(tmp_path)
  cfg = ModelConfig(arch="qwen2", vocab_size=320, hidden_size=16, intermediate_size=16,
                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, qkv_bias=True,
                    eos_token_ids=(7,))  # a generation-config id the tokenizer does not know
  engine = RolloutEngine(cfg, tok, RolloutConfig(batch_size=1, max_new_tokens=4))
  stops = set(int(i) for i in engine.tables.eos_ids) - {-1}
  assert stops == {tok.hf.convert_tokens_to_ids("<|im_end|>"),
                   tok.hf.convert_tokens_to_ids("<|endoftext|>"), 7}


def test_generation_config_eos_list_is_read(tmp_path):
  import json
  d = build_tokenizer(tmp_path / "g", eos_token="<|endoftext|>")
  with open(tmp_path / "g" / "generation_config.json", "w") as f:
    json.dump({"eos_token_id": [5, 6]}, f)
  tok = Tokenizer.from_pretrained(d)
  assert {5, 6} <= set(tok.eos_ids)


def test_no_template_means_eos_only(tmp_path):
  tok = Tokenizer.from_pretrained(build_tokenizer(tmp_path / "n", chat_template=None))
  assert tok.end_of_turn_id is None
  assert tok.eos_ids == (tok.hf.convert_tokens_to_ids("<|im_end|>"),)


def test_strip_special_for_grading(tmp_path):
  tok = _qwen_base(tmp_path)
  assert tok.strip_special("so the answer is 29<|im_end|>") == "so the answer is 29"


# ------------------------------------------------------------ the run's loader (issue 13.5)


def test_load_tokenizer_toy_hf_and_errors(tmp_path):
  from aci_jax.configuration import ConfigError
  from aci_jax.data.char_tokenizer import char_tokenizer
  from aci_jax.tokenizer import load_tokenizer

  text = "<|im_start|>What is 47 + 35?<|im_end|>82"
  want = char_tokenizer().encode(text)
  for name in (None, "", "toy"):
    tok = load_tokenizer(name)
    assert tok.encode(text) == want and tok.directory is None
  # With a directory the toy tokenizer is written there once and read back from the files.
  saved = load_tokenizer("toy", toy_dir=str(tmp_path / "run" / "tokenizer"))
  assert saved.directory == str(tmp_path / "run" / "tokenizer")
  assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()
  assert saved.encode(text) == want and saved.eos_ids == char_tokenizer().eos_ids
  # A Hugging Face directory; toy_dir plays no part then.
  hf_dir = build_tokenizer(tmp_path / "hf")
  tok = load_tokenizer(hf_dir, toy_dir=str(tmp_path / "unused"))
  assert tok.directory == hf_dir and not (tmp_path / "unused").exists()
  assert tok.encode("x = 1") == Tokenizer.from_pretrained(hf_dir).encode("x = 1")
  (tmp_path / "model").mkdir()
  (tmp_path / "model" / "config.json").write_text("{}")
  with pytest.raises(ConfigError, match=r"^config.tokenizer: cannot load .*no tokenizer files"):
    load_tokenizer(str(tmp_path / "model"))
  with pytest.raises(ConfigError) as e:
    load_tokenizer(str(tmp_path / "absent"))
  assert "\n" not in str(e.value)
