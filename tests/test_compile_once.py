"""The rollout engine compiles once per run: across three E-steps and two evaluations (in the
autocode order: evaluation, E-step, E-step, E-step, evaluation) no function is compiled after
the first evaluation and E-step. Parameters in float32 with bfloat16 compute (the paper
setting, where the engine samples from a cast copy) and new parameter arrays for every E-step,
as after an M-step; without and with a mesh (rows over 8 CPU devices)."""

import logging

import jax
import pytest

from aci_jax import tool_format
from aci_jax.data import toy
from aci_jax.data.char_tokenizer import VOCAB_SIZE, char_tokenizer
from aci_jax.em import algorithms
from aci_jax.em.loop import EMConfig
from aci_jax.eval.harness import chat_prompt, evaluate_benchmarks
from aci_jax.grading import Grader
from aci_jax.model import ModelConfig, init_params
from aci_jax.rollout import RolloutConfig, RolloutEngine
from aci_jax.sampling import SamplingParams


class _Compiles(logging.Handler):
  """Collects jax's "Compiling <name> ..." records (one per jit-cache miss that lowers)."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.names: list[str] = []

  def emit(self, record):
    if record.msg.startswith("Compiling "):
      self.names.append(str(record.args[0]))


@pytest.fixture
def compiles():
  handler = _Compiles()
  logger = logging.getLogger("jax._src.interpreters.pxla")
  previous = jax.config.jax_log_compiles
  jax.config.update("jax_log_compiles", True)
  logger.addHandler(handler)
  yield handler
  logger.removeHandler(handler)
  jax.config.update("jax_log_compiles", previous)


def _estep_requests(tok, problems, iteration, prefix):
  """The autocode E-step's requests: per query 2 native rollouts, 2 forced into reasoning
  (fences banned) and 2 into code (the format's code prefix)."""
  algorithm = algorithms.get("autocode")(EMConfig(native_samples=2, k_per_decision=2))
  return [r for q, p in enumerate(problems)
          for r in algorithm.requests(chat_prompt(tok, p["problem"]), q, iteration, prefix)]


@pytest.mark.parametrize("sharded", [False, True], ids=["one_device", "mesh"])
def test_no_compilation_after_the_first_estep_and_evaluation(compiles, sharded):
  tok = char_tokenizer()
  cfg = ModelConfig(arch="qwen2", vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                    max_position_embeddings=256, eos_token_ids=tok.eos_ids,
                    dtype="bfloat16", param_dtype="float32")
  mesh = None
  if sharded:
    from aci_jax.parallel import MeshConfig, make_mesh
    mesh = make_mesh(MeshConfig(data=8))
  engine = RolloutEngine(cfg, tok, RolloutConfig(batch_size=8, max_prompt_tokens=64,
                                                 max_new_tokens=16, decode_steps=8,
                                                 sampling=SamplingParams(temperature=0.7)),
                         mesh=mesh)
  # New float32 arrays per E-step (an M-step's output), made before counting starts.
  versions = [init_params(cfg, jax.random.key(k)) for k in range(4)]
  assert {x.dtype for x in jax.tree_util.tree_leaves(versions[0])} == {jax.numpy.dtype("float32")}
  problems = toy.make_problems(1, split="train", seed=0)
  evals = {"toy": toy.make_problems(1, split="test", seed=0)}
  prefix = tok.encode(tool_format.get().code_prefix)
  counts, results, starts = [], [], []
  with Grader(num_workers=1) as grader:

    def evaluation(params):
      return evaluate_benchmarks(engine, params, tok, evals, grader, samples=2,
                                 temperature=1.0, selection=True)

    def estep(params, iteration):
      return engine.run_local(params, _estep_requests(tok, problems, iteration, prefix))

    steps = [lambda: evaluation(versions[0]), lambda: estep(versions[1], 0),
             lambda: estep(versions[2], 1), lambda: estep(versions[3], 2),
             lambda: evaluation(versions[3])]
    for step in steps:
      before = len(compiles.names)
      starts.append(before)
      results.append(step())
      counts.append(len(compiles.names) - before)
  assert counts[0] + counts[1] > 0, "the counter saw no compilation (it could never fail)"
  assert counts[2:] == [0, 0, 0], (
      f"compilations per step {counts}; after the first evaluation and E-step: "
      f"{compiles.names[starts[2]:]}")
  # The runs did what they were asked: every request answered, every pass evaluated.
  for i, estep_result in enumerate(results[1:4]):
    assert len(estep_result.trajectories) == len(problems) * 6
    assert estep_result.stats.decode_calls > 0
  for summary in (results[0], results[4]):
    assert summary["toy"]["greedy"]["n"] == len(evals["toy"])
    assert summary["toy"]["sampled"]["n"] == 2 * len(evals["toy"])
