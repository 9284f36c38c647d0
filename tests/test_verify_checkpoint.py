"""verify_checkpoint: its float64 reference is float64, correct models pass, broken ones fail.

The reference for the reference is a NumPy float64 Llama/Qwen2 forward written here from the
architecture's definition (not from either implementation under test).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from aci_jax import verify_checkpoint as V  # noqa: E402
from aci_jax.model.weights import load_params  # noqa: E402
from hf_fixtures import make_hf_model, save_hf_model  # noqa: E402


def _numpy_forward(model, tokens, valid, positions) -> np.ndarray:
  """Float64 logits [B, T, V] of a HF Llama/Qwen2 model's weights, from first principles."""
  cfg = model.config
  w = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
  h, kv = cfg.num_attention_heads, cfg.num_key_value_heads
  dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // h
  theta = (cfg.rope_parameters or {}).get("rope_theta", 10000.0)
  inv = 1.0 / theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh)
  ang = positions[..., None].astype(np.float64) * inv  # [B, T, Dh/2]
  cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]

  def norm(x, scale):
    return scale * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.rms_norm_eps)

  def lin(x, name):
    y = x @ w[name + ".weight"].T
    return y + w[name + ".bias"] if name + ".bias" in w else y

  def rope(x):  # [B, T, N, Dh], "rotate half" layout
    a, b = x[..., :dh // 2], x[..., dh // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

  bsz, t = tokens.shape
  x = w["model.embed_tokens.weight"][tokens]
  allowed = np.tril(np.ones((t, t), bool))[None] & valid[:, None, :]  # [B, Tq, Tk]
  for i in range(cfg.num_hidden_layers):
    p = f"model.layers.{i}."
    y = norm(x, w[p + "input_layernorm.weight"])
    q = rope(lin(y, p + "self_attn.q_proj").reshape(bsz, t, h, dh))
    k = rope(lin(y, p + "self_attn.k_proj").reshape(bsz, t, kv, dh))
    v = lin(y, p + "self_attn.v_proj").reshape(bsz, t, kv, dh)
    k, v = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)
    s = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(dh)
    s = np.where(allowed[:, None], s, -1e300)  # finite: fully masked (padding) rows give no NaN
    s = np.exp(s - s.max(-1, keepdims=True))
    s = s / s.sum(-1, keepdims=True)
    x = x + lin(np.einsum("bnqk,bknd->bqnd", s, v).reshape(bsz, t, h * dh),
                p + "self_attn.o_proj")
    y = norm(x, w[p + "post_attention_layernorm.weight"])
    g = lin(y, p + "mlp.gate_proj")
    x = x + lin(g / (1 + np.exp(-g)) * lin(y, p + "mlp.up_proj"), p + "mlp.down_proj")
  x = norm(x, w["model.norm.weight"])
  head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
  return x @ head.T


def _batch(vocab, b=2, t=12, pad=3, seed=0):
  from aci_jax.model import positions_from_valid

  tokens = np.random.default_rng(seed).integers(0, vocab, (b, t)).astype(np.int32)
  valid = np.ones((b, t), bool)
  valid[1, :pad] = False
  return tokens, valid, np.asarray(positions_from_valid(valid))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float64_reference_is_float64(tmp_path, arch):
  model = make_hf_model(arch)
  d = save_hf_model(model, tmp_path / "m")
  tokens, valid, pos = _batch(96)
  ref = _numpy_forward(model, tokens, valid, pos)
  ours64 = V.torch_logits(V.load_torch(d, "float64"), tokens, valid, pos)
  err64 = np.max(np.abs(ours64 - ref)[valid])
  # HF's model loaded in float64 as is keeps its float32 casts: a float32-sized error.
  plain = V.torch_logits(_plain_float64(d), tokens, valid, pos)
  err_plain = np.max(np.abs(plain - ref)[valid])
  assert err64 < 1e-11, err64
  assert err_plain > 1e-8, err_plain  # so the casts exist and the test can tell


def _plain_float64(d):
  from transformers import AutoModelForCausalLM

  return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64,
                                              attn_implementation="eager").eval()


def _scaled_norm(directory, cfg):
  params = load_params(directory, cfg)
  s = params["layers"]["mlp_norm"]["scale"]
  params["layers"]["mlp_norm"]["scale"] = s.at[1].multiply(1.01)
  return params


def _transposed_q(directory, cfg):
  params = load_params(directory, cfg)
  k = params["layers"]["attn"]["q_proj"]["kernel"]  # [L, D, H*Dh], square here
  params["layers"]["attn"]["q_proj"]["kernel"] = k.at[0].set(k[0].T)
  return params


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_correct_passes_broken_fails(tmp_path, capsys, arch):
  d = save_hf_model(make_hf_model(arch, tie_word_embeddings=(arch == "qwen2")), tmp_path / "m")
  assert V.main([d]) == 0
  out = capsys.readouterr().out
  assert "criterion: rms <= 4 x and max <= 6 x transformers' own float32 error" in out
  assert V.main([d, "--dtype", "bfloat16"]) == 0
  assert "KL <= 2 x transformers' bf16 KL" in capsys.readouterr().out
  # A loader bug our check must catch: 1% on one norm, one transposed projection.
  assert V.main([d], load=_scaled_norm) == 1
  assert V.main([d], load=_transposed_q) == 1
  assert V.main([d, "--dtype", "bfloat16"], load=_transposed_q) == 1
  assert "FAIL" in capsys.readouterr().out


def test_float32_criterion_is_relative_to_the_references_own_error():
  rng = np.random.default_rng(0)
  ref = rng.normal(size=(2, 8, 50)) * 10
  valid = np.ones((2, 8), bool)
  noise = rng.normal(size=ref.shape) * 1e-4
  hf32 = ref + noise
  # Same-sized rounding error as transformers': OK, even though far above a 1e-5 atol.
  assert V.float32_verdict(ref + rng.normal(size=ref.shape) * 1.5e-4, hf32, ref, valid)[0]
  # Ten times the reference's own float32 error: FAIL.
  assert not V.float32_verdict(ref + rng.normal(size=ref.shape) * 1e-3, hf32, ref, valid)[0]


def test_a_runs_export_root_resolves_to_its_newest_finished_export(tmp_path, capsys):
  """`verify_checkpoint <workdir>/export` (what docs/real_model.md tells users to run) checks the
  newest step_N that has a config.json; an unfinished one (no config.json yet) is skipped."""
  from aci_jax.model.weights import resolve_export

  d = save_hf_model(make_hf_model("llama"), tmp_path / "run" / "export" / "step_2")
  (tmp_path / "run" / "export" / "step_10").mkdir()  # an export still being written
  (tmp_path / "run" / "export" / "step_1").mkdir()
  (tmp_path / "run" / "export" / "step_1" / "config.json").write_text("{}")
  assert resolve_export(str(tmp_path / "run" / "export")) == d
  assert resolve_export(str(tmp_path / "run")) == d  # the workdir itself
  assert resolve_export(d) == d
  with pytest.raises(FileNotFoundError, match="no finished export"):
    resolve_export(str(tmp_path / "run" / "export" / "step_10"))
  assert V.main([str(tmp_path / "run" / "export")]) == 0
  assert f"checking its newest export, {d}" in capsys.readouterr().out
  assert V.main([str(tmp_path / "run" / "export" / "step_10")]) == 2
