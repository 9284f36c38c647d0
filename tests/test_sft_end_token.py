"""Warm-up demonstrations cut at seq_len still end their turn with the end token (issue 12)."""

from aci_jax.data import sft
from aci_jax.data.char_tokenizer import char_tokenizer


def test_truncated_demo_keeps_its_end_token():
  tok = char_tokenizer()
  eos = tok.eos_ids[0]
  prompt, response = "What is 2+2?", "Two and two make four, so \\boxed{4}."
  full = sft.encode_demonstration(tok, prompt, response, max_len=1000)
  n_prompt = len(tok.chat_ids([{"role": "user", "content": prompt}]))
  assert not full.truncated and full.tokens[-1] == eos and full.loss_mask[-1] == 1.0
  cut = sft.encode_demonstration(tok, prompt, response, max_len=n_prompt + 10)
  assert cut.truncated and len(cut.tokens) == n_prompt + 10
  # The first 9 response tokens as they were, then the end token, trained.
  assert list(cut.tokens[:-1]) == list(full.tokens[:n_prompt + 9])
  assert cut.tokens[-1] == eos and cut.loss_mask[-1] == 1.0
  # A cut inside the prompt leaves nothing to end: no end token is made up there.
  inside = sft.encode_demonstration(tok, prompt, response, max_len=n_prompt - 2)
  assert inside.truncated and eos not in list(inside.tokens) and inside.loss_mask.sum() == 0
