"""Forced modes of the E-step (issue 12): the reasoning ban and the behaviour log-probs.

- Forced reasoning cannot open a code fence of any language in any tokenisation (the toy's
  character tokenizer and a BPE tokenizer with multi-backtick tokens), checked on the decoded
  text of random token walks that only use what the ban allows.
- A policy that opens a code cell ~95% of the time natively still gives well-formed prose
  answers in forced-reasoning mode, right exactly where its prose reasoning is right.
- At theta = theta_old every recorded token (sampled, forced prefix; with bans active; at
  T = 0.6 and 1.0) has ratio 1 against the trainer's own log-probs.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from aci_jax.data.char_tokenizer import char_tokenizer
from aci_jax.em.batches import build_batch
from aci_jax.model import Decoder, ModelConfig
from aci_jax.model.weights import load_params
from aci_jax.rollout import Request, RolloutConfig, RolloutEngine
from aci_jax.rollout.trajectory import SRC_FORCED, SRC_SAMPLED
from aci_jax.sampling import SamplingParams, token_texts
from aci_jax.sampling import sampler as S
from aci_jax.tokenizer import Tokenizer
from aci_jax.train.logprobs import token_logprobs
from hf_fixtures import make_hf_model, save_hf_model
from tokenizer_fixtures import build_tokenizer

TICKS = "```"


def _cfg(vocab: int) -> ModelConfig:
  return ModelConfig(arch="qwen2", vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=1,
                     num_heads=2, num_kv_heads=1, head_dim=16)


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
  return Tokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("bpe")))


@pytest.mark.parametrize("which", ["char", "bpe"])
def test_reasoning_ban_admits_no_fence_in_any_tokenisation(which, bpe_tok):
  tok = char_tokenizer() if which == "char" else bpe_tok
  texts = token_texts(tok.hf)
  eng = RolloutEngine(_cfg(len(texts)), tok, RolloutConfig())
  block = np.asarray(eng.tables.ban_hit) > 0
  nxt = np.asarray(eng.tables.ban_next)
  specials = {int(i) for i in tok.hf.all_special_ids}
  ticky = np.asarray([i for i, t in enumerate(texts) if "`" in t and i not in specials])
  if which == "bpe":  # the vocabulary really has multi-backtick tokens to try
    assert any(texts[i].count("`") >= 2 for i in ticky)
  rng = np.random.default_rng(0)
  for _ in range(300):
    s, ids = 0, []
    for _ in range(24):
      allowed = np.flatnonzero(~block[s])
      allowed = allowed[~np.isin(allowed, list(specials))]
      assert len(allowed) > 0
      # Half the draws from backtick tokens whenever the ban lets one through (the attack).
      near = np.intersect1d(allowed, ticky)
      pool = near if len(near) and rng.random() < 0.5 else allowed
      t = int(rng.choice(pool))
      ids.append(t)
      s = int(nxt[s, t])
    text = tok.decode(ids)  # the tokenizer's own decoding, not the ban's token table
    assert TICKS not in text, text


def test_a_row_is_never_left_without_an_allowed_token(bpe_tok):
  """Where a ban would mask the whole vocabulary it is lifted for that token: the row samples
  from the policy (greedy: its argmax) instead of from an all-masked row."""
  cfg = _cfg(len(bpe_tok.hf))
  params = Decoder(cfg).init(jax.random.key(3), jnp.zeros((1, 4), jnp.int32),
                             jnp.arange(4)[None])["params"]
  eng = RolloutEngine(cfg, bpe_tok, RolloutConfig(batch_size=2, max_prompt_tokens=8,
                                                  max_new_tokens=6,
                                                  sampling=SamplingParams(greedy=True)))
  ref = eng.run(params, [Request([5, 6, 7], 0)]).trajectories[0]
  eng.tables = eng.tables.replace(ban_hit=jnp.ones_like(eng.tables.ban_hit))
  banned = eng.run(params, [Request([5, 6, 7], 0, mode="cot", ban=True)]).trajectories[0]
  assert banned.response_ids == ref.response_ids


# --------------------------------------------------------------- a code-preferring policy

# question, gold, the prose answer the policy was taught (wrong on the last one), code
QA = [("What is 6*7?", "42", "42", "print(6*7)"),
      ("What is 9+5?", "14", "14", "print(9+5)"),
      ("What is 8*3?", "24", "25", "print(8*3)")]
P_CODE = 0.95


def _boxed(text):
  m = re.findall(r"\\boxed\{([^{}]*)\}", text)
  return m[-1] if m else None


@pytest.fixture(scope="module")
def coder(tmp_path_factory):
  """A tiny Qwen2 (torch-trained here) that opens a python cell with probability ~P_CODE and
  otherwise reasons in prose, on the toy's character tokenizer."""
  tok = char_tokenizer()
  eos = tok.eos_ids[0]
  seqs, weights = [], []
  for q, _, prose, code in QA:
    prompt = tok.chat_ids([{"role": "user", "content": q}])
    for resp, w in ((f"```python\n{code}\n```\n```output\n", P_CODE),
                    (f"{q[8:-1]} = {prose}, so \\boxed{{{prose}}}.", 1 - P_CODE)):
      r = tok.encode(resp) + [eos]
      seqs.append((prompt, r))
      # The first response token carries the mixture; every later token is learned fully.
      weights.append([w] + [1.0] * (len(r) - 1))
  model = make_hf_model("qwen2", vocab_size=len(tok.hf), hidden_size=64, intermediate_size=128,
                        num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, seed=0)
  with torch.no_grad():
    for p in model.parameters():
      p.mul_(0.3)
  width = max(len(p) + len(r) for p, r in seqs)
  ids = torch.zeros((len(seqs), width), dtype=torch.long)
  wts = torch.zeros((len(seqs), width))
  for i, ((p, r), w) in enumerate(zip(seqs, weights)):
    ids[i, :len(p) + len(r)] = torch.tensor(p + r)
    wts[i, len(p):len(p) + len(r)] = torch.tensor(w)
  opt = torch.optim.Adam(model.parameters(), lr=3e-3)
  model.train()
  for _ in range(600):
    logits = model(input_ids=ids).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    loss = (nll * wts[:, 1:]).sum() / wts[:, 1:].sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
  model.eval()
  d = save_hf_model(model, tmp_path_factory.mktemp("coder") / "m")
  cfg = ModelConfig.from_pretrained(d)
  return tok, cfg, load_params(d, cfg)


def _engine(coder, temperature=1.0, greedy=False, batch=16):
  tok, cfg, _ = coder
  sp = SamplingParams(greedy=True) if greedy else SamplingParams(temperature=temperature)
  return RolloutEngine(cfg, tok, RolloutConfig(batch_size=batch, max_prompt_tokens=32,
                                               max_new_tokens=48, sampling=sp, seed=1))


def test_code_preferring_policy_reasons_in_forced_reasoning_mode(coder):
  tok, cfg, params = coder
  prompts = [tok.chat_ids([{"role": "user", "content": q}]) for q, *_ in QA]
  n = 32
  eng = _engine(coder)
  native = eng.run(params, [Request(p, i, s) for i, p in enumerate(prompts)
                            for s in range(n)]).trajectories
  code_rate = np.mean([t.text.startswith("```python") for t in native])
  assert code_rate >= 0.85, code_rate  # the policy does prefer code
  cot = eng.run(params, [Request(p, i, 100 + s, mode="cot", ban=True)
                         for i, p in enumerate(prompts) for s in range(n)]).trajectories
  greedy = _engine(coder, greedy=True).run(
      params, [Request(p, i, mode="cot", ban=True) for i, p in enumerate(prompts)]).trajectories
  for t in cot + greedy:
    assert TICKS not in t.text and not t.cells, t.text
    assert t.stop_reason == "eos", t.text  # a finished answer, not a derailed one
  # Greedy forced reasoning is the policy's prose answer, well-formed: right exactly where its
  # reasoning is right (1, 1, 0), not dragged down by its taste for code.
  assert [_boxed(t.text) for t in greedy] == [prose for _, _, prose, _ in QA]
  # Sampled: the accuracy per question is the policy's reasoning ability, the probability
  # (full forward, no sampler) of starting its prose answer once code is ruled out.
  block = np.asarray(eng.tables.ban_hit[0]) > 0
  for i, (q, gold, prose, _) in enumerate(QA):
    p = prompts[i]
    lg = Decoder(cfg).apply({"params": params}, jnp.asarray([p]), jnp.arange(len(p))[None])[0]
    probs = np.asarray(jax.nn.softmax(lg[0, -1]), np.float64)
    ability = probs[tok.encode(q[8])[0]] / probs[~block].sum() if prose == gold else 0.0
    acc = np.mean([_boxed(t.text) == gold for t in cot if t.prompt_index == i])
    assert abs(acc - ability) <= 4 * np.sqrt(ability * (1 - ability) / n) + 1 / n, (i, acc,
                                                                                      ability)


@pytest.mark.parametrize("temperature", [0.6, 1.0])
def test_behaviour_logp_is_the_trainers_at_theta_old(coder, temperature):
  """rho = pi_theta / mu = 1 at theta = theta_old for every token with loss mask 1: sampled
  ones (including positions where the ban masked ~95% of the mass) and the forced prefix."""
  tok, cfg, params = coder
  prompts = [tok.chat_ids([{"role": "user", "content": q}]) for q, *_ in QA]
  prefix = tok.encode("```python\n")
  reqs = []
  for i, p in enumerate(prompts):
    reqs += [Request(p, i, s, mode="native") for s in range(2)]
    reqs += [Request(p, i, 10 + s, mode="cot", ban=True) for s in range(2)]
    reqs += [Request(p, i, 20 + s, mode="code", prefix_ids=prefix) for s in range(2)]
  trajs = _engine(coder, temperature=temperature).run(params, reqs).trajectories
  srcs = {s for t in trajs for s in t.source}
  assert {SRC_SAMPLED, SRC_FORCED} <= srcs
  batch = build_batch(trajs)
  logp, _ = token_logprobs(params, cfg, jnp.asarray(batch["tokens"]),
                           jnp.asarray(batch["positions"]), jnp.asarray(batch["valid"]))
  # Index t of logp is token t + 1; compare on every token the loss covers.
  mask = batch["loss_mask"][:, 1:] > 0
  log_ratio = np.asarray(logp) - batch["behaviour_logp"][:, 1:]
  assert mask.sum() > 100
  np.testing.assert_array_less(np.abs(log_ratio[mask]), 1e-5)
  # The ban was active where it mattered: the first forced-reasoning token was drawn from a
  # distribution whose unbanned mass on a backtick is large.
  first = [t.logp[0] for t in trajs if t.mode == "cot"]
  assert max(first) < np.log(0.5)
