"""The harness wired to the real RolloutEngine: a random tiny model on the char tokenizer, toy
held-out problems, greedy + sampled + both forced modes. Checks that the forced modes reach the
device (prefix tokens marked forced, banned strings absent), that the greedy pass is
deterministic, and that the summary agrees with a recomputation from the written JSONL."""

import json

import jax
import pytest

from aci_jax import eval as ev
from aci_jax.data import toy
from aci_jax.data.char_tokenizer import VOCAB_SIZE, char_tokenizer
from aci_jax.grading import Grader
from aci_jax.model import ModelConfig, init_params
from aci_jax.rollout import RolloutConfig, RolloutEngine, read_jsonl
from aci_jax.rollout.trajectory import SRC_FORCED
from aci_jax.sampling import SamplingParams


@pytest.fixture(scope="module")
def setup():
  tok = char_tokenizer()
  cfg = ModelConfig(arch="qwen2", vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                    max_position_embeddings=256, eos_token_ids=tok.eos_ids)
  params = init_params(cfg, jax.random.key(0))
  engine = RolloutEngine(cfg, tok, RolloutConfig(batch_size=8, max_prompt_tokens=64,
                                                 max_new_tokens=24, decode_steps=32,
                                                 sampling=SamplingParams(greedy=True)))
  return tok, engine, params


def test_random_model_through_the_engine(setup, tmp_path):
  tok, engine, params = setup
  problems = toy.make_problems(2, split="test", seed=0)  # 8 problems, 4 families
  with Grader(num_workers=1) as grader:
    s = ev.evaluate(engine, params, tok, problems, grader, samples=2, temperature=1.0,
                    name="toy", out_dir=str(tmp_path))
    ev.evaluate(engine, params, tok, problems, grader, samples=0, selection=False, name="toy",
                out_dir=str(tmp_path / "again"))
  trajs = read_jsonl(str(tmp_path / "toy.trajectories.jsonl"))
  assert len(trajs) == 8 * 3 + 8 * 2
  passes = {}
  for t in trajs:
    passes.setdefault(t.meta["pass"], []).append(t)
    assert t.reward in (0.0, 1.0)
    assert len(t.response_ids) <= 24
  prefix = tok.encode("```python\n")
  for t in passes["forced_code"]:
    assert t.mode == "code" and t.response_ids[:len(prefix)] == prefix
    assert t.source[:len(prefix)] == [SRC_FORCED] * len(prefix)
    assert t.text.startswith("```python\n")
  for t in passes["forced_cot"]:
    assert t.mode == "cot" and "```python" not in t.text and "```output" not in t.text
  # Greedy is deterministic: the second evaluation reproduces the first's greedy responses.
  again = read_jsonl(str(tmp_path / "again" / "toy.trajectories.jsonl"))
  assert [t.response_ids for t in again] == [t.response_ids for t in passes["greedy"]]
  # The summary agrees with the records on disk.
  greedy, sampled = passes["greedy"], passes["sampled"]
  assert s["greedy"]["n"] == 8 and s["sampled"]["n"] == 16
  assert s["greedy"]["truncation_rate"] == sum(t.stop_reason == "length" for t in greedy) / 8
  assert s["sampled"]["accuracy"] == sum(t.reward for t in sampled) / 16
  assert s["greedy"]["code_rate"] == sum(bool(t.cells) for t in greedy) / 8
  assert set(s["by_family"]) == set(toy.DEFAULT_FAMILIES)
  with open(tmp_path / "toy.summary.json") as f:
    assert json.load(f)["greedy"]["n"] == 8
