"""The host rollout loop end to end: a tiny model trained (in the test) to write a code cell,
the real sandbox, masks and records; forced prefixes, bans, tool limits; batch invariance."""

import dataclasses
import random

import numpy as np
import pytest

from aci_jax.model import ModelConfig
from aci_jax.model.weights import load_params
from aci_jax.rollout import Request, RolloutConfig, RolloutEngine, read_jsonl, write_jsonl
from aci_jax.rollout.trajectory import SRC_ENV, SRC_FORCED, SRC_SAMPLED
from aci_jax.sampling import SamplingParams
from hf_fixtures import make_hf_model, save_hf_model
from scripted_model import QUESTIONS, train_scripted_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tok, cfg, params, scripts, _ = train_scripted_model(tmp_path_factory.mktemp("rollout"))
  return tok, cfg, params, scripts


@pytest.fixture(scope="module")
def sandbox():
  from aci_jax.sandbox import Sandbox

  with Sandbox(timeout_s=5.0) as sb:
    yield sb


def _engine(trained, executor, **kw):
  tok, cfg, params, _ = trained
  rc = RolloutConfig(batch_size=kw.pop("batch_size", 4), max_prompt_tokens=48,
                     max_new_tokens=kw.pop("max_new_tokens", 80),
                     sampling=kw.pop("sampling", SamplingParams(greedy=True)), **kw)
  return RolloutEngine(cfg, tok, rc, executor=executor), params


def test_end_to_end_with_real_sandbox(trained, sandbox, tmp_path):
  tok, _, _, scripts = trained
  eng, params = _engine(trained, sandbox)
  reqs = [Request(p, i) for i, (p, _, _, _) in enumerate(scripts)]
  result = eng.run(params, reqs)
  trajs = result.trajectories
  for t, (q, (code, printed, answer)), (p, resp, n_pre, n_env) in zip(trajs, QUESTIONS.items(),
                                                                      scripts):
    assert t.response_ids == resp  # the same tokens, including the trained fence variant
    assert t.stop_reason == "eos"
    assert [(c.code, c.output, c.status) for c in t.cells] == [(code, printed, "ok")]
    assert t.used_code and t.num_calls == 1
    assert t.text.endswith(f"\\boxed{{{answer}}}.<|im_end|>")
    # Masks: exactly the spliced tool-output tokens are environment tokens.
    src = np.asarray(t.source)
    assert (src[n_pre:n_pre + n_env] == SRC_ENV).all()
    assert (np.delete(src, np.s_[n_pre:n_pre + n_env]) == SRC_SAMPLED).all()
    assert t.loss_mask == [0 if s == SRC_ENV else 1 for s in t.source]
    # Behaviour log-probs: present for every token, confident where the model was trained.
    lp = np.asarray(t.logp)
    assert lp.shape == (len(resp),) and np.all(lp <= 0) and np.all(np.isfinite(lp))
    assert np.exp(lp[src == SRC_SAMPLED]).min() > 0.5
  assert result.stats.cells == 3 and result.stats.decode_calls > 0
  # Statistics are those of the call: a second run counts its own cells only.
  assert eng.run(params, reqs[:1]).stats.cells == 1
  # The record survives a JSONL round trip.
  write_jsonl(str(tmp_path / "t.jsonl"), trajs)
  back = read_jsonl(str(tmp_path / "t.jsonl"))
  assert [dataclasses.asdict(b) for b in back] == [dataclasses.asdict(t) for t in trajs]


def test_barrier_reprefill_and_sharded_rows_give_the_same_trajectories(trained, sandbox):
  """Continuous batching, barrier mode, re-prefill after each call, and rows sharded over an
  8-device mesh (params replicated) all produce the same trajectories."""
  from aci_jax.parallel import MeshConfig, make_mesh

  _, _, _, scripts = trained
  reqs = [Request(p, i) for i, (p, _, _, _) in enumerate(scripts)]
  cont, params = _engine(trained, sandbox, batch_size=2)
  ref = cont.run(params, reqs).trajectories
  for kw in (dict(barrier=True), dict(resume_mode="reprefill")):
    eng, _ = _engine(trained, sandbox, batch_size=2, **kw)
    out = eng.run(params, reqs).trajectories
    assert [t.response_ids for t in out] == [t.response_ids for t in ref], kw
    for a, b in zip(out, ref):
      np.testing.assert_allclose(a.logp, b.logp, atol=1e-4)
  mesh = make_mesh(MeshConfig(data=8))
  tok, cfg, _, _ = trained
  sharded = RolloutEngine(cfg, tok, dataclasses.replace(cont.cfg, batch_size=8), executor=sandbox,
                          mesh=mesh)
  out = sharded.run(params, reqs).trajectories
  assert [t.response_ids for t in out] == [t.response_ids for t in ref]


def test_forced_prefix_ban_and_tool_limit(trained, sandbox):
  tok, _, _, scripts = trained
  prompt, resp, _, _ = scripts[0]
  prefix = tok.encode("```python\n")
  eng, params = _engine(trained, sandbox)
  forced, banned = eng.run(params, [
      Request(prompt, 0, mode="code", prefix_ids=prefix),
      Request(prompt, 0, sample_index=1, mode="cot", ban=True)]).trajectories
  assert forced.response_ids == resp
  assert forced.source[:len(prefix)] == [SRC_FORCED] * len(prefix)
  assert forced.loss_mask[:len(prefix)] == [1] * len(prefix)
  # Banning "```python" and the fence (in any tokenisation) forces the row off its script:
  # (the trained model does try to open a cell) no cell at all.
  assert not banned.cells
  assert "```python" not in banned.text and "```output" not in banned.text
  limited, params = _engine(trained, sandbox, max_tool_calls=0, max_new_tokens=200)
  (t,) = limited.run(params, [Request(prompt, 0)]).trajectories
  # Every fence (the model may try again after the message) gets the message, never a run.
  assert t.cells and all(c.status == "limit" and c.code == "" for c in t.cells)
  assert limited.tool_format.limit_message in t.text


def test_same_seed_same_trajectories_any_batch_size_and_order(trained, tmp_path):
  """Sampling at temperature 1 from an untrained model (far from deterministic): per-row keys
  from (seed, prompt, sample) make trajectories independent of batch size and row order."""
  tok = trained[0]
  model = make_hf_model("qwen2", vocab_size=len(tok.hf), seed=5)
  d = save_hf_model(model, tmp_path / "random")
  cfg = ModelConfig.from_pretrained(d)
  params = load_params(d, cfg)
  reqs = [Request(tok.chat_ids([{"role": "user", "content": q}]), i, sample_index=s)
          for i, q in enumerate(["What is 5*5?", "Add 2 and 3.", "Compute 3**4."])
          for s in range(3)]
  base = None
  for bs in (1, 3, 8):
    order = list(range(len(reqs)))
    random.Random(bs).shuffle(order)
    rc = RolloutConfig(batch_size=bs, max_prompt_tokens=48, max_new_tokens=24,
                       sampling=SamplingParams(temperature=1.0), seed=3)
    out = RolloutEngine(cfg, tok, rc).run(params, [reqs[k] for k in order]).trajectories
    by_key = {(t.prompt_index, t.sample_index): (t.response_ids, t.logp) for t in out}
    if base is None:
      base = by_key
      # Different samples of one prompt really differ (the keys differ).
      assert len({tuple(base[(0, s)][0]) for s in range(3)}) == 3
    else:
      assert {k: v[0] for k, v in by_key.items()} == {k: v[0] for k, v in base.items()}
      for k in base:
        np.testing.assert_allclose(by_key[k][1], base[k][1], atol=1e-5)
  # The paged cache with a short pool (capacity 72 = 9 pages of 8; 12 pages for 8 rows: rows
  # wait for pages and are refilled as others finish) samples the same tokens.
  rc = RolloutConfig(batch_size=8, max_prompt_tokens=48, max_new_tokens=24,
                     sampling=SamplingParams(temperature=1.0), seed=3, kv_page_size=8,
                     kv_pool_tokens=12 * 8)
  res = RolloutEngine(cfg, tok, rc).run(params, reqs)
  assert res.stats.page_waits > 0
  for t in res.trajectories:
    want_ids, want_logp = base[(t.prompt_index, t.sample_index)]
    assert t.response_ids == want_ids
    np.testing.assert_allclose(t.logp, want_logp, atol=1e-5)
  # Sampling passed to a call is the same as sampling configured: a greedy engine asked for
  # temperature 1 reproduces the runs above.
  rc = RolloutConfig(batch_size=8, max_prompt_tokens=48, max_new_tokens=24,
                     sampling=SamplingParams(greedy=True), seed=3)
  out = RolloutEngine(cfg, tok, rc).run(params, reqs, SamplingParams(temperature=1.0))
  assert {(t.prompt_index, t.sample_index): t.response_ids for t in out.trajectories} == {
      k: v[0] for k, v in base.items()}


def test_user_stop_string_ends_the_response(trained, sandbox):
  tok, _, _, scripts = trained
  eng, params = _engine(trained, sandbox, stop_strings=("answer is",))
  (t,) = eng.run(params, [Request(scripts[1][0], 0)]).trajectories
  assert t.stop_reason == "stop"
  assert t.text.endswith("The answer is") and len(t.cells) == 1


def test_paged_cache_under_pool_pressure_gives_the_contiguous_trajectories(trained, sandbox):
  """The engine's paged KV cache with a pool of 1.5 rows' pages for 4 rows (rows wait for
  pages, prompts and splices are put off, pages come back as rows finish and are refilled)
  gives the contiguous cache's trajectories: tokens, cells, behaviour log-probs."""
  _, _, _, scripts = trained
  reqs = [Request(p, i, sample_index=s) for s in range(2)
          for i, (p, _, _, _) in enumerate(scripts)]
  contiguous, params = _engine(trained, sandbox, kv_page_size=0)
  ref = contiguous.run(params, reqs)
  assert ref.stats.page_waits == 0
  # capacity 48 + 80 = 128 slots = 16 pages of 8; 24 pages, of which 16 the oldest row's.
  paged, _ = _engine(trained, sandbox, kv_page_size=8, kv_pool_tokens=24 * 8)
  out = paged.run(params, reqs)
  assert out.stats.page_waits > 0  # the pool really was short
  assert [t.response_ids for t in out.trajectories] == [t.response_ids for t in ref.trajectories]
  assert ([[(c.code, c.output) for c in t.cells] for t in out.trajectories]
          == [[(c.code, c.output) for c in t.cells] for t in ref.trajectories])
  for a, b in zip(out.trajectories, ref.trajectories):
    np.testing.assert_allclose(a.logp, b.logp, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="kv_pool_tokens"):
    _engine(trained, sandbox, kv_page_size=8, kv_pool_tokens=15 * 8)


def test_paged_pool_is_created_sharded_over_row_groups_and_kv_heads(trained, sandbox):
  """On an 8-device mesh (data 4 x tensor 2) the page pool is born sharded: one page group per
  data shard, kv heads split over tensor, so each device holds an eighth of it (never a
  replica first); the block table follows the rows. Trajectories equal the one-device run."""
  from jax.sharding import PartitionSpec as P
  from aci_jax.parallel import MeshConfig, make_mesh
  from aci_jax.parallel.rules import ROW_AXES

  tok, cfg, _, scripts = trained
  reqs = [Request(p, i) for i, (p, _, _, _) in enumerate(scripts)]
  one, params = _engine(trained, sandbox, batch_size=8, kv_page_size=16)
  ref = one.run(params, reqs).trajectories
  eng = RolloutEngine(cfg, tok, one.cfg, executor=sandbox,
                      mesh=make_mesh(MeshConfig(data=4, tensor=2)))
  state = eng.new_state()
  pool = state.cache.k
  assert pool.shape[:2] == (4, cfg.num_kv_heads) and cfg.num_kv_heads % 2 == 0
  assert pool.sharding.spec == P(ROW_AXES, "tensor", None, None, None, None)
  shards = pool.addressable_shards
  assert len(shards) == 8 and {s.data.shape for s in shards} == {
      (1, cfg.num_kv_heads // 2) + pool.shape[2:]}
  assert state.cache.table.sharding.spec == P(ROW_AXES, None)
  out = eng.run(params, reqs).trajectories
  assert [t.response_ids for t in out] == [t.response_ids for t in ref]
