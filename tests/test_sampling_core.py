"""The compiled sampler: HF-equal greedy decoding, splice consistency, sampling distributions,
and stop strings under every tokenisation."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aci_jax import tool_format
from aci_jax.model import Decoder, KVCache, ModelConfig, init_params, positions_from_valid
from aci_jax.model.decoder import LAYERS, unstack_layers
from aci_jax.model.weights import load_params
from aci_jax.rollout import Request, RolloutConfig, RolloutEngine
from aci_jax.sampling import SamplingParams, build_matcher, sample_tokens, token_texts
from aci_jax.sampling import sampler as S
from aci_jax.tokenizer import Tokenizer
from hf_fixtures import make_hf_model, save_hf_model
from tokenizer_fixtures import build_tokenizer

FENCE = tool_format.get().pause_string  # the output fence that pauses a row


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return Tokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("tok")))


# ------------------------------------------------------------------ greedy == HF generate


@pytest.mark.parametrize("arch, overrides", [
    ("qwen2", dict(tie_word_embeddings=True)),
    ("qwen2", dict(num_attention_heads=8, num_key_value_heads=2, rope_theta=1e6)),
    ("llama", dict(head_dim=12, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 16})),
])
def test_greedy_equals_transformers_generate(tmp_path, tok, arch, overrides):
  model = make_hf_model(arch, vocab_size=len(tok.hf), **overrides)
  d = save_hf_model(model, tmp_path / "m")
  cfg = ModelConfig.from_pretrained(d)
  params = load_params(d, cfg)
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(0, len(tok.hf), n)) for n in (7, 3, 12, 5)]
  n_new = 24
  eng = RolloutEngine(cfg, tok, RolloutConfig(
      batch_size=4, max_prompt_tokens=16, max_new_tokens=n_new,
      sampling=SamplingParams(greedy=True)))
  trajs = eng.run(params, [Request([int(t) for t in p], i)
                            for i, p in enumerate(prompts)]).trajectories
  # Reference: HF generate on the left-padded batch (greedy, no EOS stop).
  width = max(map(len, prompts))
  ids = np.zeros((4, width), np.int64)
  mask = np.zeros((4, width), np.int64)
  for r, p in enumerate(prompts):
    ids[r, width - len(p):] = p
    mask[r, width - len(p):] = 1
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         max_new_tokens=n_new, do_sample=False, eos_token_id=None,
                         pad_token_id=0).numpy()[:, width:]
  for r, t in enumerate(trajs):
    n = len(t.response_ids)
    assert n == n_new or t.stop_reason in ("eos", "stop")
    assert t.response_ids == [int(x) for x in out[r, :n]], r


# ------------------------------------------------------- splices keep the cache consistent


def test_pause_extend_mixed_rows_equals_full_forward(tmp_path, tok):
  model = make_hf_model("qwen2", vocab_size=len(tok.hf), num_attention_heads=8,
                        num_key_value_heads=2)
  d = save_hf_model(model, tmp_path / "m")
  cfg = ModelConfig.from_pretrained(d)
  params = load_params(d, cfg)
  v = cfg.vocab_size
  b, temp = 4, 0.8
  sp = SamplingParams(temperature=temp)
  never = build_matcher(("\x01never\x01",), [""] * v)
  tables = S.Tables(stop_next=jnp.asarray(never.next), stop_hit=jnp.asarray(never.hit),
                    stop_is_tool=jnp.asarray([False, True]), ban_next=jnp.asarray(never.next),
                    ban_hit=jnp.asarray(never.hit > 0), eos_ids=jnp.asarray([-1], jnp.int32))
  state = S.SamplerState.init(cfg, b, 96, 64)
  keys = np.stack([np.asarray(S.row_key(0, i, 0)) for i in range(b)])
  state = S.reset_rows(state, jnp.ones(b, bool), jnp.asarray(keys), jnp.full(b, 64),
                       jnp.zeros(b, bool))
  rng = np.random.default_rng(1)
  prompts = [list(rng.integers(0, v, n)) for n in (5, 9, 3, 7)]
  width = 16
  tokens = np.zeros((b, width), np.int32)
  valid = np.zeros((b, width), bool)
  for r, p in enumerate(prompts):
    tokens[r, :len(p)] = p
    valid[r, :len(p)] = True
  resume = jnp.ones(b, bool)
  state = S.extend(cfg, state, params, tables, jnp.asarray(tokens), jnp.asarray(valid),
                   jnp.zeros(b, jnp.int8), resume, record=False)
  state, _ = S.decode(cfg, sp, state, params, tables, 5, exit_on_pause=False)
  # Pause rows 0 and 2 by hand (as a tool call would), splice different lengths into them
  # while rows 1 and 3 keep running, then decode everyone again; twice.
  for lengths in ([3, 0, 11, 0], [0, 6, 1, 0]):
    paused = np.asarray(lengths) > 0
    state = state.replace(status=jnp.where(jnp.asarray(paused), S.PAUSED, state.status))
    state, _ = S.decode(cfg, sp, state, params, tables, 4, exit_on_pause=False)
    chunk = np.zeros((b, 16), np.int32)
    cvalid = np.zeros((b, 16), bool)
    for r, n in enumerate(lengths):
      chunk[r, :n] = rng.integers(0, v, n)
      cvalid[r, :n] = True
    state = S.extend(cfg, state, params, tables, jnp.asarray(chunk), jnp.asarray(cvalid),
                     jnp.full(b, S.SRC_ENV, jnp.int8), jnp.asarray(paused), record=True)
    state, _ = S.decode(cfg, sp, state, params, tables, 3, exit_on_pause=False)
  n_out = np.asarray(state.n_out)
  out_tokens, out_logp = np.asarray(state.out_tokens), np.asarray(state.out_logp)
  src = np.asarray(state.out_src)
  assert (src == S.SRC_ENV).sum() == 3 + 11 + 6 + 1
  for r in range(b):
    seq = prompts[r] + list(out_tokens[r, :n_out[r]])
    full = Decoder(cfg).apply({"params": params}, jnp.asarray([seq], jnp.int32),
                              jnp.arange(len(seq))[None])[0][0]
    full = np.asarray(full)
    # Next-token logits of the live cache == full forward at the last position.
    np.testing.assert_allclose(np.asarray(state.logits)[r], full[-1], atol=1e-4, rtol=0)
    # Every recorded log-prob (sampled and spliced) == the full forward's at T = 1 (what the
    # trainer scores), although the tokens were sampled at T = 0.8.
    ref = jax.nn.log_softmax(full, axis=-1)
    p = len(prompts[r])
    want = np.asarray([ref[p - 1 + j, seq[p + j]] for j in range(n_out[r])])
    np.testing.assert_allclose(out_logp[r, :n_out[r]], want, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- sampling distributions


def _chi2(counts, probs):
  from scipy.stats import chisquare

  n = counts.sum()
  return chisquare(counts, probs * n).pvalue


@pytest.mark.parametrize("sp, expected", [
    (SamplingParams(temperature=1.0), None),
    (SamplingParams(temperature=0.5), None),
    (SamplingParams(temperature=1.3, top_k=3), "top_k"),
    (SamplingParams(temperature=1.0, top_p=0.7), "top_p"),
    (SamplingParams(temperature=0.9, top_k=4, top_p=0.8), "both"),
])
def test_sampling_frequencies_match_distribution(sp, expected):
  logits = np.log(np.asarray([0.30, 0.22, 0.16, 0.12, 0.09, 0.06, 0.05]))
  probs = np.exp(logits / sp.temperature)
  probs /= probs.sum()
  keep = np.ones(len(probs), bool)
  if sp.top_k:
    keep &= np.arange(len(probs)) < sp.top_k  # logits are sorted descending
  if sp.top_p < 1:
    p = probs * keep / (probs * keep).sum()
    before = np.cumsum(p) - p
    keep &= before < sp.top_p
  target = probs * keep / (probs * keep).sum()
  n = 200_000  # a 2% relative error on a 0.3 probability is a 21-sigma effect at this size
  keys = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(jax.random.key(7), i)))(
      jnp.arange(n))
  toks, logp = jax.jit(lambda k, l: sample_tokens(k, l, sp))(
      keys, jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits))))
  counts = np.bincount(np.asarray(toks), minlength=len(logits))
  assert counts[~keep].sum() == 0
  assert _chi2(counts[keep], target[keep]) > 1e-3
  # The test has the power to see a 2% error: a distribution off by 2% is rejected.
  wrong = target.copy()
  wrong[0] *= 1.02
  wrong[keep.nonzero()[0][-1]] -= target[0] * 0.02
  assert _chi2(counts[keep], wrong[keep] / wrong[keep].sum()) < 1e-3
  # Behaviour log-probs are the policy's own (T = 1, untruncated): the trainer's quantity.
  np.testing.assert_allclose(np.asarray(logp), logits[np.asarray(toks)], atol=1e-5)


# ------------------------------------------------------------ stop strings, every tokenisation


def _segmentations(text, vocab_texts, limit=10_000):
  """Every way to write `text` as a sequence of whole tokens (by their texts)."""
  by_text = collections.defaultdict(list)
  for i, t in enumerate(vocab_texts):
    if t:
      by_text[t].append(i)
  out = []

  def rec(pos, acc):
    if len(out) >= limit:
      return
    if pos == len(text):
      out.append(list(acc))
      return
    for end in range(pos + 1, len(text) + 1):
      for i in by_text.get(text[pos:end], ()):
        rec(end, acc + [i])

  rec(0, [])
  return out


def test_fence_caught_under_every_tokenisation(tok):
  texts = token_texts(tok.hf)
  m = build_matcher((FENCE, "STOP"), texts)
  segs = _segmentations(FENCE, texts)
  assert len(segs) >= 8  # the test tokenizer has many ways to spell the fence
  for prefix in ("", "x = 1\n", "``"):  # preceding text, incl. backticks that are not a fence
    pre = tok.encode(prefix) if prefix else []
    for seg in segs:
      state, hit = m.run(pre + seg)
      assert hit == 1, (prefix, seg)
  # A token that runs past the fence still completes it (match inside a token).
  for i, t in enumerate(texts):
    if FENCE in t:
      assert m.run([i])[1] == 1
  # Near misses never match.
  for miss in ("```outpu", "``output", "``` output", "```Output"):
    for seg in _segmentations(miss, texts, limit=200):
      assert m.run(seg)[1] == 0, miss


def test_device_tables_match_host_walk(tok):
  """The device gathers (as in the decode step) follow the same automaton as the host."""
  texts = token_texts(tok.hf)
  m = build_matcher((FENCE,), texts)
  seqs = _segmentations("a```output", texts, limit=300)
  nxt, hit = jnp.asarray(m.next), jnp.asarray(m.hit)

  @jax.jit
  def walk(seq):
    def f(carry, t):
      st, first = carry
      h = hit[st, t]
      return (nxt[st, t], jnp.where(first > 0, first, h)), None
    return jax.lax.scan(f, (jnp.int32(0), jnp.int32(0)), seq)[0]

  for seq in seqs:
    st, first = walk(jnp.asarray(seq, jnp.int32))
    assert (int(st), int(first)) == m.run(seq)
    assert int(first) == 1


def test_row_keys_batched_equal_one_at_a_time():
  """The engine derives keys for all new rows in one dispatch; they must be the per-row keys
  (large sample indices included: the E-step offsets them by iteration * 1e6)."""
  pairs = [(0, 0), (3, 7), (12, 1_000_000), (5, 2_300_017), (2**20, 41)]
  for seed in (0, 17):
    batched = np.asarray(S.row_keys(seed, np.asarray([p for p, _ in pairs], np.uint32),
                                    np.asarray([s for _, s in pairs], np.uint32)))
    single = np.stack([np.asarray(S.row_key(seed, p, s)) for p, s in pairs])
    np.testing.assert_array_equal(batched, single)
    assert len({tuple(k) for k in single}) == len(pairs)


@pytest.mark.parametrize("tied", [True, False])
def test_sampling_copy_in_compute_dtype_changes_no_logit(tmp_path, tok, tied):
  """float32 master weights with bf16 compute: the engine samples from a bf16 copy (half the
  bytes per decode step); every layer casts to bf16 before use anyway, so logits, sampled
  tokens and recorded log-probs must be bit-identical to sampling from the float32 weights."""
  model = make_hf_model("qwen2", vocab_size=len(tok.hf), tie_word_embeddings=tied)
  d = save_hf_model(model, tmp_path / "m")
  cfg = ModelConfig.from_pretrained(d, dtype="bfloat16")
  params = load_params(d, cfg)
  eng = RolloutEngine(cfg, tok, RolloutConfig(batch_size=4, max_prompt_tokens=16,
                                              max_new_tokens=20,
                                              sampling=SamplingParams(temperature=1.0)))
  placed = eng.place_params(params)
  assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree_util.tree_leaves(placed)} == {jnp.dtype(jnp.bfloat16)}
  seq = jnp.asarray([list(range(3, 19))], jnp.int32)
  pos = jnp.arange(16, dtype=jnp.int32)[None]
  # On a CPU the copy also splits the stacked layers (place_params): compare it with the
  # float32 weights in the same form, so only the cast differs.
  same_form = unstack_layers(params) if LAYERS not in placed else params
  ref, got = (np.asarray(Decoder.for_params(cfg, p).apply({"params": p}, seq, pos)[0],
                         np.float32) for p in (same_form, placed))
  np.testing.assert_array_equal(got, ref)
  # The whole sampler, from the float32 weights (no engine cast) and through the engine.
  prompts = [[5, 9, 2], [7] * 9, [11, 4, 4, 8, 1], [3]]
  reqs = [Request(p, i) for i, p in enumerate(prompts)]
  via_engine = eng.run(params, reqs).trajectories
  eng.place_params = lambda p: same_form  # sample from the float32 weights themselves
  direct = eng.run(params, reqs).trajectories
  for a, b in zip(via_engine, direct):
    assert a.response_ids == b.response_ids and a.logp == b.logp


def test_unstacked_layers_give_the_stacked_models_logits_and_cache():
  """Decoder(unstacked=True) over `unstack_layers(params)` (what the engine samples from on a
  CPU) is the same model as the scanned one: float32 logits and written K/V within 1e-5 of it
  (summation order may differ between the two compiled programs), over a cache with history."""
  cfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                    num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=False,
                    tie_word_embeddings=False, max_position_embeddings=64, rope_theta=1e4,
                    dtype="float32")
  params = init_params(cfg, jax.random.key(0))
  flat = unstack_layers(params)
  assert LAYERS not in flat and set(flat) >= {"layers_0", "layers_1", "layers_2"}
  np.testing.assert_array_equal(flat["layers_1"]["attn"]["q_proj"]["kernel"],
                                params[LAYERS]["attn"]["q_proj"]["kernel"][1])
  tok = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 5)), jnp.int32)
  outs = []
  for p in (params, flat):
    model = Decoder.for_params(cfg, p)
    assert model.unstacked == (p is flat)
    cache = KVCache.init(cfg, 2, 16)
    pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
    _, cache = model.apply({"params": p}, tok, pos, cache)
    logits, cache = model.apply({"params": p}, tok[:, :1], pos[:, :1] + 5, cache)
    outs.append((np.asarray(logits), np.asarray(cache.k), np.asarray(cache.v)))
  for a, b in zip(*outs):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
