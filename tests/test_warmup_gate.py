"""The warm-up's decay gate: the warmup-stable-decay schedule against a float64 formula; run_sft
holding the peak until the gate passes (or its last chance), then decaying, and resuming with
the same schedule after a kill; the toy probes' encoding and exact match against a brute-force
greedy continuation; the gate's config errors."""

import dataclasses
import json
import math
import os
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aci_jax.configuration import ConfigError, seed_for
from aci_jax.data import toy
from aci_jax.data.char_tokenizer import char_tokenizer
from aci_jax.eval import warmup_gate as G
from aci_jax.eval.teacher_forcing import greedy_next_fn, scored_exact
from aci_jax.model import ModelConfig, init_params
from aci_jax.train import modes
from aci_jax.train.losses import LossConfig
from aci_jax.train.optim import OptimConfig, make_schedule
from aci_jax.train.runner import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wsd(step, lr, warm, hold, total, end_ratio):
  """float64 reference: linear to lr over `warm`, `hold` steps at lr, cosine to lr*end_ratio."""
  if step < warm:
    return lr * step / warm
  if step < warm + hold:
    return lr
  frac = min(step - warm - hold, total - warm - hold) / (total - warm - hold)
  return lr * (end_ratio + (1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def test_hold_schedule_matches_the_formula():
  cfg = OptimConfig(lr=2.0, warmup_steps=4, hold_steps=6, decay_steps=20, end_lr_ratio=0.1)
  sched = make_schedule(cfg)
  for step in range(26):
    assert float(sched(step)) == pytest.approx(_wsd(step, 2.0, 4, 6, 20, 0.1), abs=1e-6), step
  # hold_steps 0 is the plain warm-up + cosine
  plain = make_schedule(OptimConfig(lr=2.0, warmup_steps=4, decay_steps=20, end_lr_ratio=0.1))
  for step in range(26):
    assert float(plain(step)) == pytest.approx(_wsd(step, 2.0, 4, 0, 20, 0.1), abs=1e-6)
  with pytest.raises(ValueError, match="hold_steps"):
    OptimConfig(warmup_steps=4, hold_steps=17, decay_steps=20)


def _sft_config():
  c = runpy.run_path(os.path.join(ROOT, "configs", "sft_toy.py"))["get_config"]()
  with c.unlocked():
    c.progress = False
    c.checkpoint.async_save = False
  return c


def _settings(check, *, steps=40, every=4, tail=6, checkpoint_every=100, mode="hold"):
  return modes.SFTSettings(
      data=toy.sft_records(64, seed=0), steps=steps, batch_size=8, seq_len=128,
      optim=OptimConfig(lr=3e-3, warmup_steps=2, decay_steps=steps, end_lr_ratio=0.1,
                        clip_norm=0.0),
      loss=LossConfig(policy="sft_nll", decision_coef=0.0), log_every=1,
      checkpoint_every=checkpoint_every, export_at_end=False,
      gate=check and modes.DecayGate(check=check, every=every, tail=tail, mode=mode))


class _Gate:
  """Passes from its `passes_at`-th call on; records every call's training step."""

  def __init__(self, passes_at):
    self.passes_at, self.calls = passes_at, []

  def __call__(self, params):
    self.calls.append(len(self.calls) + 1)
    return len(self.calls) >= self.passes_at, {"probe": float(len(self.calls))}


def _lrs(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  return {r["step"]: r["lr"] for r in recs if "lr" in r}


def _final(workdir):
  c = modes._trainer_config(_sft_config(), _settings(None))  # pylint: disable=protected-access
  t = Trainer(c, workdir)
  t.restore_or_init()
  out = t.step, dict(t.meta), jax.device_get(t.state.params)
  t.close()
  return out


def test_gate_holds_the_peak_then_decays(tmp_path):
  gate = _Gate(passes_at=3)  # checks at steps 4, 8, 12: passes at 12
  run = str(tmp_path / "a")
  modes.run_sft(_sft_config(), run, _settings(gate))
  step, meta, _ = _final(run)
  assert gate.calls == [1, 2, 3]
  assert (step, meta["gate_step"], meta["gate_passed"]) == (18, 12, True)  # 12 + tail 6
  lrs = _lrs(run)
  # The step logged as s ran with the lr of step s - 1 (the metric is the schedule at the
  # update's own step count).
  for s_, lr in lrs.items():
    assert lr == pytest.approx(_wsd(s_ - 1, 3e-3, 2, 10, 18, 0.1), rel=1e-5), s_


def test_gate_that_never_passes_decays_at_its_last_chance(tmp_path):
  gate = _Gate(passes_at=99)
  run = str(tmp_path / "never")
  modes.run_sft(_sft_config(), run, _settings(gate, steps=20, every=4, tail=6))
  step, meta, _ = _final(run)
  # checks at 4, 8, 12 and at 14 (= steps - tail), the last step the decay may start
  assert len(gate.calls) == 4
  assert (step, meta["gate_step"], meta["gate_passed"]) == (20, 14, False)
  for s_, lr in _lrs(run).items():
    assert lr == pytest.approx(_wsd(s_ - 1, 3e-3, 2, 12, 20, 0.1), rel=1e-5), s_


def _killed_at_15(monkeypatch, workdir, settings):
  """Runs run_sft in `workdir` until a KeyboardInterrupt at step 15 (a kill mid-run)."""
  original = Trainer.train_step

  def dies_at_15(self, batch):
    if self.step == 15:
      raise KeyboardInterrupt("killed")
    return original(self, batch)

  monkeypatch.setattr(Trainer, "train_step", dies_at_15)
  with pytest.raises(KeyboardInterrupt):
    modes.run_sft(_sft_config(), workdir, settings)
  monkeypatch.setattr(Trainer, "train_step", original)


def test_a_killed_gated_run_resumes_with_its_schedule(tmp_path, monkeypatch):
  whole = str(tmp_path / "whole")
  modes.run_sft(_sft_config(), whole, _settings(_Gate(3)))
  cut = str(tmp_path / "cut")
  _killed_at_15(monkeypatch, cut, _settings(_Gate(3)))
  again = _Gate(1)  # would pass at once: a resumed run must not ask it again
  modes.run_sft(_sft_config(), cut, _settings(again))
  assert again.calls == []
  (s1, m1, p1), (s2, m2, p2) = _final(whole), _final(cut)
  assert (s1, m1["gate_step"]) == (s2, m2["gate_step"]) == (18, 12)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(a, b)


def test_extend_trains_on_at_the_final_lr_until_the_gate_passes(tmp_path):
  gate = _Gate(passes_at=3)  # checks at 10, 14, 18 (steps 10, every 4): passes at 18
  run = str(tmp_path / "extend")
  settings = _settings(gate, steps=10, every=4, tail=12, mode="extend")
  modes.run_sft(_sft_config(), run, settings)
  step, meta, _ = _final(run)
  assert gate.calls == [1, 2, 3]
  assert (step, meta["gate_step"], meta["gate_passed"]) == (18, 18, True)
  for s_, lr in _lrs(run).items():  # the plain cosine over 10 steps, then its final value
    assert lr == pytest.approx(_wsd(s_ - 1, 3e-3, 2, 0, 10, 0.1), rel=1e-5), s_
  # A finished run called again neither trains nor asks the gate.
  again = _Gate(1)
  modes.run_sft(_sft_config(), run, dataclasses.replace(
      settings, gate=dataclasses.replace(settings.gate, check=again)))
  assert again.calls == [] and _final(run)[0] == 18


def test_extend_stops_at_its_cap_when_the_gate_never_passes(tmp_path):
  gate = _Gate(passes_at=99)
  run = str(tmp_path / "extend_never")
  modes.run_sft(_sft_config(), run, _settings(gate, steps=10, every=4, tail=8, mode="extend"))
  step, meta, _ = _final(run)
  assert len(gate.calls) == 3  # 10, 14, 18 = steps + tail
  assert (step, meta["gate_step"], meta["gate_passed"]) == (18, 18, False)


# ---------------------------------------------------------------------------- the toy probes


def test_encode_scores_exactly_what_the_model_writes():
  tok = char_tokenizer()
  p = toy.family_problems("mul", 1, split="train", seed=0)[0]
  (code_ids, code_scored), = G.encode(tok, G.gate_demos("mul", "code", [p]), None)
  (cot_ids, cot_scored), = G.encode(tok, G.gate_demos("mul", "reason", [p]), None)
  eos = tok.eos_ids[0]
  written = code_ids[1:][code_scored[:-1]]
  assert written[-1] == eos
  # the cell after the forced prefix, then (after the sandbox's output block) the boxed answer
  assert tok.decode(list(written[:-1])) == toy.cell_text(p) + toy.boxed(p["answer"])
  written = cot_ids[1:][cot_scored[:-1]]
  assert tok.decode(list(written[:-1])) == toy.cot_response(p) and written[-1] == eos
  assert not code_scored[-1] and not cot_scored[-1]


def _copy_rows(problems):
  tok = char_tokenizer()
  rows = G.encode(tok, G.gate_demos("mul", "copy", problems), None)
  return tok, [G.box_only(tok, r, toy.boxed(toy.printed_value(p))) for r, p in zip(rows, problems)]


def test_copy_probe_scores_the_boxed_copy_alone():
  problems = G.probe_problems("mul", "copy", 20, set(), seed=5)
  # only products that hold some digit twice (checked by counting, not by the helper)
  assert all(any(str(p["answer"]).count(d) > 1 for d in "0123456789") for p in problems)
  tok, rows = _copy_rows(problems)
  for (ids, scored), p in zip(rows, problems):
    assert tok.decode(list(ids[1:][scored[:-1]])) == str(p["answer"]) + "}"


def test_copy_probe_fails_a_miscopied_box_and_not_a_wrong_cell():
  """Predictions that reproduce the demo but for one token: a box digit swapped fails the copy
  probe (and the code probe); a cell digit changed fails only the code probe."""
  problems = G.probe_problems("mul", "copy", 3, set(), seed=5)
  tok, rows = _copy_rows(problems)
  code_rows = G.encode(tok, G.gate_demos("mul", "code", problems), None)
  width = max(len(t) for t, _ in rows) + 1
  tokens, _, copy_scored = G.pad(rows, width, 3)
  _, _, code_scored = G.pad(code_rows, width, 3)
  pred = np.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1).copy()  # a perfect policy
  # (a character tokenizer: one token per character of the written text)
  box = np.flatnonzero(copy_scored[1])[1]  # the position predicting the box's second digit
  assert chr(tokens[1, box + 1]).isdigit() and chr(tokens[1, box - 7]) == "\\"
  pred[1, box] = (pred[1, box] - ord("0") + 1) % 10 + ord("0")
  cell = np.flatnonzero(code_scored[2])[0] + len("print(")  # predicts the first operand digit
  assert tok.decode(list(tokens[2, cell - 5:cell + 1])) == "print("
  pred[2, cell] = (pred[2, cell] - ord("0") + 1) % 10 + ord("0")
  assert scored_exact(pred, tokens, copy_scored).tolist() == [True, False, True]
  assert scored_exact(pred, tokens, code_scored).tolist() == [True, False, False]


def test_box_only_with_a_tokenizer_that_merges_characters():
  """A token that overlaps the copy is scored, one wholly outside it is not."""

  class Pairs:  # ids are the text's 2-character pieces
    def __init__(self, pieces):
      self.pieces = pieces

    def decode(self, ids):
      return "".join(self.pieces[i] for i in ids)

  text = "ab\\boxed{4854}x"
  pieces = [text[i:i + 2] for i in range(0, len(text), 2)]  # "ab", "\\b", "ox", "ed", "{4", ...
  tok = Pairs(pieces)
  ids = np.arange(len(pieces), dtype=np.int32)
  _, scored = G.box_only(tok, (ids, np.ones(len(ids), bool)), "\\boxed{4854}")
  # position i scores token i + 1: "ed" (before the copy) and "x" (after it) are not; "{4"
  # (the opening brace and the first copied digit), "85" and "4}" are
  judged = [pieces[i + 1] for i in np.flatnonzero(scored)]
  assert judged == ["{4", "85", "4}"]


def _tiny_model():
  cfg = ModelConfig(arch="llama", vocab_size=259, hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16, qkv_bias=False,
                    tie_word_embeddings=False, max_position_embeddings=256,
                    eos_token_ids=(256,))
  return cfg, init_params(cfg, jax.random.key(3))


def test_exact_match_against_a_greedy_continuation():
  """Rows the model itself continues greedily (a full forward per token, by hand) match
  exactly; changing one scored token breaks the match, changing an unscored one does not."""
  from aci_jax.model import Decoder

  cfg, params = _tiny_model()
  model = Decoder(cfg)
  rng = np.random.default_rng(0)
  width, prompt = 32, 8
  tokens = np.zeros((4, width), np.int32)
  tokens[:, :prompt] = rng.integers(0, 256, size=(4, prompt))
  # One compiled full-width forward; causal attention keeps later (still zero) tokens out.
  fwd = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, jnp.broadcast_to(jnp.arange(width), x.shape))[0])
  for t in range(prompt, 24):
    tokens[:, t] = np.asarray(jnp.argmax(fwd(params, jnp.asarray(tokens))[:, t - 1], axis=-1))
  valid = np.zeros((4, width), bool)
  valid[:, :24] = True
  scored = np.zeros((4, width), bool)
  scored[:, prompt - 1:23] = True  # positions predicting tokens 8..23
  scored[:, 22] = False  # the last token unscored (as sandbox output is)
  tokens[1, 20] = (tokens[1, 20] + 1) % 256  # a scored token changed
  tokens[2, 23] = (tokens[2, 23] + 1) % 256  # the unscored one changed
  tokens[3, 24] = 7  # a padding position (not valid, not scored) changed
  got = scored_exact(greedy_next_fn(cfg)(params, tokens, valid), tokens, scored)
  assert got.tolist() == [True, False, True, True]


def _toy_config(**warmup):
  c = runpy.run_path(os.path.join(ROOT, "configs", "default.py"))["get_config"]()
  with c.unlocked():
    c.warmup.update(warmup)
  return c


def test_heldout_problems_avoid_the_run_s_training_problems():
  train = toy.make_problems(200, split="train", seed=0)
  exclude = {p["problem"] for p in train}
  held = G.heldout_problems("compare", 50, exclude, seed=104729)
  texts = [p["problem"] for p in held]
  assert len(set(texts)) == 50 and not set(texts) & exclude
  assert all(toy.split_of("compare", t) == "train" for t in texts)


def test_build_gate_on_an_untrained_policy(tmp_path):
  c = _toy_config(gate=("add:reason", "mul:code", "mul:copy"), gate_n=8)
  cfg, params = _tiny_model()
  train = toy.make_problems(50, split="train", seed=0)
  gate = G.build_gate(c, char_tokenizer(), cfg, train)
  passed, rates = gate.check(params)
  assert not passed and rates == {"add:reason": 0.0, "mul:code": 0.0, "mul:copy": 0.0}
  assert (gate.every, gate.tail) == (c.warmup.gate_every, c.warmup.gate_tail)
  assert G.build_gate(_toy_config(gate=()), char_tokenizer(), cfg, train) is None


@pytest.mark.parametrize("warmup,needle", [
    (dict(gate=("mul:cod",)), "family:kind"),
    (dict(gate=("digitsum:code",)), "not one of this run's families"),
    (dict(gate=("mul:code", "mul:code")), "repeated"),
    (dict(gate=("mul:code",), gate_min=0.0), "gate_min"),
    (dict(gate=("mul:code",), gate_mode="hold", gate_tail=5000), "tail"),
    (dict(gate=("mul:code",), gate_mode="wsd"), "gate_mode"),
    (dict(gate=("mul:code",), average_decay=1.0), "average_decay must be in"),
    (dict(gate=("mul:code",), average_decay=True), "average_decay must be in"),
])
def test_bad_gate_configs_are_config_errors(warmup, needle):
  from aci_jax.em.modes import validate

  with pytest.raises(ConfigError, match=needle):
    validate(_toy_config(**warmup))


def test_an_average_in_the_em_loop_s_optimizer_is_refused():
  from aci_jax.em.modes import validate

  c = _toy_config()
  validate(_toy_config(average_decay=0.995))  # the warm-up's: fine with the default's gate
  with c.unlocked():
    c.optim.average_decay = 0.99
  with pytest.raises(ConfigError, match="optim.average_decay is for the sft mode"):
    validate(c)


def test_cli_bad_input_is_one_line(tmp_path):
  with pytest.raises(SystemExit, match="cannot read") as e:
    G.main([str(tmp_path / "nowhere")])
  assert "\n" not in str(e.value)
  run = tmp_path / "run"
  (run / "warmup" / "checkpoints" / "5").mkdir(parents=True)
  (run / "warmup" / "checkpoints" / "5" / "_CHECKPOINT_METADATA").write_text("{}")
  (run / "config.json").write_text(json.dumps(_toy_config(gate=()).to_dict()))
  with pytest.raises(SystemExit, match=r"no warm-up checkpoint \[7\]"):
    G.main([str(run), "--steps", "7"])
  with pytest.raises(SystemExit, match="name the probes with --gate"):
    G.main([str(run)])
  with pytest.raises(SystemExit, match="family:kind"):
    G.main([str(run), "--gate", "mul"])


def test_the_default_gate_tail_follows_the_warmup_steps():
  # configs/default.py caps the gate's extension at 3/4 of `warmup.steps` (rounded up), so a
  # short smoke run (--config.warmup.steps=20) cannot train on for the full run's 1,500 steps;
  # an explicit gate_tail still wins.
  c = _toy_config()
  assert (c.warmup.steps, c.warmup.gate_tail) == (2000, 1500)
  c.warmup.steps = 20
  assert c.warmup.gate_tail == 15
  c.warmup.steps = 1
  assert c.warmup.gate_tail == 1
  c.warmup.gate_tail = 40
  c.warmup.steps = 300
  assert c.warmup.gate_tail == 40


def test_extend_checks_at_its_cap_off_the_grid(tmp_path):
  # steps 10, every 4, tail 6: grid checks at 10 and 14, and the cap (16) is a check too; before,
  # the run ended at 16 unchecked, with no gate outcome in its metadata.
  gate = _Gate(passes_at=99)
  run = str(tmp_path / "off_grid")
  out = modes.run_sft(_sft_config(), run,
                      _settings(gate, steps=10, every=4, tail=6, mode="extend"))
  step, meta, _ = _final(run)
  assert len(gate.calls) == 3
  assert (step, meta["gate_step"], meta["gate_passed"]) == (16, 16, False)
  assert out == modes.GateOutcome(step=16, passed=False, probes={"probe": 3.0})


class _Probe:
  """Passes from its `passes_at`-th call on; its probe value is `values[call - 1]`."""

  def __init__(self, passes_at, values):
    self.passes_at, self.values, self.calls = passes_at, values, 0

  def __call__(self, params):
    self.calls += 1
    return self.calls >= self.passes_at, {"probe": self.values[self.calls - 1]}


def _retry_config(tmp_path):
  # the retry logic alone: no tail average (its own tests below), whose beside-probe of the
  # parameters would also consume these scripted probes
  c = _toy_config(steps=6, warmup_steps=2, batch_size=8, pack_len=0, seq_len=128,
                  gate_retries=1, average_decay=0.0)
  with c.unlocked():
    c.model.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                   num_kv_heads=2, head_dim=16)
    c.checkpoint.async_save = False
    c.progress = False
    c.task.update(train_per_family=24, warmup_examples=0)  # a retry writes demos of its own
  data = str(tmp_path / "demos.jsonl")
  from aci_jax.data.sft import write_jsonl
  write_jsonl(data, toy.sft_records(32, seed=0))
  return c, data


def _weights(directory):
  with open(os.path.join(directory, "model.safetensors"), "rb") as f:
    return f.read()


@pytest.mark.parametrize("passes_at,values,chosen", [
    # attempt 0's checks (steps 6 and the cap 8) fail; attempt 1's first check passes
    (3, [0.1, 0.2, 0.95, 0.0], 1),
    # no attempt passes: the one whose weakest probe is highest (attempt 0, 0.5 > 0.25)
    (99, [0.4, 0.5, 0.3, 0.25], 0),
])
def test_gate_retries_warm_up_again_from_other_seeds(tmp_path, passes_at, values, chosen):
  from aci_jax.em import modes as em_modes

  c, data = _retry_config(tmp_path)
  work = str(tmp_path / "run")
  out = os.path.join(work, "warmup", "hf")
  check = _Probe(passes_at, values)
  gate = modes.DecayGate(check=check, every=4, tail=2, mode="extend")
  train = em_modes._problems(c)[0]  # pylint: disable=protected-access
  excluded = []  # the pool each attempt's gate was asked to hold its probes out of

  def gate_for(pool):
    excluded.append({p["problem"] for p in pool})
    return gate

  em_modes._gated_attempts(c, work, char_tokenizer(), data, gate_for, 1, out,  # pylint: disable=protected-access
                           train=train)
  with open(os.path.join(work, "warmup", "attempts.json")) as f:
    record = json.load(f)
  assert record["chosen"] == chosen
  a0, a1 = record["attempts"]
  # seed 0's roles, then each + 1,000: other problems, init and order; the held-out problems
  # (the `problem` seed) stay
  assert [a0[f"{r}_seed"] for r in ("train", "order", "init")] == [0, 0, 0]
  assert [a1[f"{r}_seed"] for r in ("train", "order", "init")] == [1000, 1000, 1000]
  assert seed_for(em_modes.reseeded(c, 1), "problem") == 0
  # Attempt 0 trains on the run's demonstrations; the retry on its own, drawn from other
  # training problems (train_seed 1000: the toy's own draw, independent of this code).
  assert a0["demos"] == data and a1["demos"] == os.path.join(work, "warmup", "retry_1",
                                                             "demos.jsonl")
  own = toy.make_problems(24, split="train", families=tuple(c.task.families), seed=1000)
  with open(a1["demos"]) as f:
    retry_prompts = [json.loads(line)["prompt"] for line in f]
  in_demos = lambda texts: {t for t in texts if any(t in q for q in retry_prompts)}
  own_texts, run_texts = {p["problem"] for p in own}, {p["problem"] for p in train}
  assert in_demos(own_texts) == own_texts and run_texts - own_texts
  assert not in_demos(run_texts - own_texts)
  # Its gate's probes avoid both pools; attempt 0's the run's alone, as without retries.
  assert excluded == [{p["problem"] for p in train},
                      {p["problem"] for p in train} | own_texts]
  assert (a0["passed"], a1["passed"]) == (False, passes_at == 3)
  assert a0["probes"] == {"probe": values[1]}
  assert check.calls == (3 if passes_at == 3 else 4)
  e0 = _weights(os.path.join(work, "warmup", "export"))
  e1 = _weights(os.path.join(work, "warmup", "retry_1", "export"))
  assert e0 != e1  # other initial weights and order: another policy
  assert _weights(out) == (e1 if chosen == 1 else e0)
  assert os.path.exists(os.path.join(out, "config.json"))
  # Re-run (a resumed job): every attempt restores finished; no probe is asked again.
  again = _Probe(1, [1.0] * 4)
  em_modes._gated_attempts(c, work, char_tokenizer(), data,  # pylint: disable=protected-access
                           lambda pool: dataclasses.replace(gate, check=again), 1, out,
                           train=train)
  assert again.calls == 0
  assert _weights(out) == (e1 if chosen == 1 else e0)


@pytest.mark.parametrize("weakest,retried", [(0.85, False), (0.8, False), (0.79, True)])
def test_a_near_miss_is_kept_and_a_clear_miss_retried(tmp_path, weakest, retried):
  # gate_retry_below 0.8: attempt 0 closes at its cap without passing; a weakest probe of 0.85
  # or exactly 0.8 keeps it (no second warm-up), 0.79 trains attempt 1.
  from aci_jax.em import modes as em_modes

  c, data = _retry_config(tmp_path)
  work = str(tmp_path / "run")
  out = os.path.join(work, "warmup", "hf")
  check = _Probe(99, [0.5, weakest, 0.1, 0.2])
  gate = modes.DecayGate(check=check, every=4, tail=2, mode="extend")
  em_modes._gated_attempts(c, work, char_tokenizer(), data, lambda pool: gate, 1, out,  # pylint: disable=protected-access
                           train=em_modes._problems(c)[0], retry_below=0.8)  # pylint: disable=protected-access
  with open(os.path.join(work, "warmup", "attempts.json")) as f:
    record = json.load(f)
  assert record["retry_below"] == 0.8
  assert [a["attempt"] for a in record["attempts"]] == ([0, 1] if retried else [0])
  assert record["chosen"] == 0  # 0.79 > 0.2: the retry's weakest probe is lower
  assert os.path.exists(os.path.join(work, "warmup", "retry_1")) == retried
  assert check.calls == (4 if retried else 2)
  assert _weights(out) == _weights(os.path.join(work, "warmup", "export"))


def test_gate_retries_must_be_a_count():
  from aci_jax.em.modes import validate

  # (ml_collections itself refuses a float or a string for the int key)
  with pytest.raises(ConfigError, match="gate_retries"):
    validate(_toy_config(gate_retries=-1))
  for bad in (0.0, 1.5):
    with pytest.raises(ConfigError, match="gate_retry_below must be in"):
      validate(_toy_config(gate_retry_below=bad))


# ------------------------------------------------------------- the tail's moving average


class _Recording(_Gate):
  """A _Gate that keeps a copy of every parameter tree it is shown."""

  def __init__(self, passes_at):
    super().__init__(passes_at)
    self.seen = []

  def __call__(self, params):
    self.seen.append(jax.tree.map(np.array, jax.device_get(params)))
    return super().__call__(params)


def _averaging(gate, steps=10, export_dir=""):
  s = _settings(gate, steps=steps, every=4, tail=8, mode="extend")
  return dataclasses.replace(
      s, optim=dataclasses.replace(s.optim, average_decay=0.9, average_start=steps),
      export_at_end=bool(export_dir), export_dir=export_dir)


def _final_state(workdir):
  c = modes._trainer_config(_sft_config(), _averaging(None))  # pylint: disable=protected-access
  t = Trainer(c, workdir)
  t.restore_or_init()
  out = t.step, jax.device_get(t.state.params), jax.device_get(t.state.opt_state.average)
  t.close()
  return out


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_the_gate_probes_and_the_warm_up_exports_the_tail_s_average(tmp_path):
  from aci_jax.model.weights import load_params
  gate = _Recording(passes_at=99)  # checks at 10, 14, 18 (the cap)
  run, out = str(tmp_path / "avg"), str(tmp_path / "export")
  modes.run_sft(_sft_config(), run, _averaging(gate, export_dir=out))
  step, params, average = _final_state(run)
  # Each check probes the average, then (logged beside) the parameters themselves.
  assert step == 18 and len(gate.seen) == 6
  policy, own = gate.seen[0::2], gate.seen[1::2]
  # At step 10 (= average_start) the average is still the parameters; the last check (18) saw
  # the average, which by then differs from the parameters.
  assert _same(policy[0], own[0])
  assert _same(policy[-1], average) and _same(own[-1], params) and not _same(average, params)
  exported = load_params(out, Trainer(modes._trainer_config(  # pylint: disable=protected-access
      _sft_config(), _averaging(None)), str(tmp_path / "cfg")).model_cfg)
  for e, a in zip(jax.tree.leaves(exported), jax.tree.leaves(average)):
    np.testing.assert_array_equal(np.asarray(e), np.asarray(a, np.asarray(e).dtype))
  with open(os.path.join(run, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  raw = [r for r in logged if "gate_raw/probe" in r]
  assert [r["step"] for r in raw] == [10, 14, 18]  # the parameters' own probes, beside


def test_a_killed_averaging_run_resumes_to_the_same_average(tmp_path, monkeypatch):
  whole = str(tmp_path / "whole")
  modes.run_sft(_sft_config(), whole, _averaging(_Gate(99)))
  cut = str(tmp_path / "cut")
  _killed_at_15(monkeypatch, cut, dataclasses.replace(_averaging(_Gate(99)), checkpoint_every=2))
  modes.run_sft(_sft_config(), cut, _averaging(_Gate(99)))
  (s1, p1, a1), (s2, p2, a2) = _final_state(whole), _final_state(cut)
  assert s1 == s2 == 18 and _same(p1, p2) and _same(a1, a2)


def test_tail_average_tool_resumes_a_copy_and_probes_each_average(tmp_path, capsys):
  from aci_jax.data.sft import write_jsonl
  from aci_jax.em import modes as em_modes
  from aci_jax.eval import tail_average

  c, _ = _retry_config(tmp_path)
  with c.unlocked():
    c.warmup.update(gate=("add:reason", "mul:code"), gate_retries=0, gate_n=4, gate_every=2,
                    gate_tail=2)
  run = tmp_path / "run"
  tok, _ = em_modes._tokenizer(c, str(run))  # pylint: disable=protected-access
  train, _ = em_modes._problems(c)  # pylint: disable=protected-access
  write_jsonl(str(run / "warmup" / "demos.jsonl"), em_modes._warmup_demos(c, train))  # pylint: disable=protected-access
  settings = dataclasses.replace(
      em_modes.warmup_settings(c, str(run / "warmup" / "demos.jsonl"), str(run / "hf")),
      gate=G.build_gate(c, tok, Trainer(c, str(tmp_path / "x")).model_cfg, train))
  modes.run_sft(c, str(run / "warmup"), settings, tokenizer=tok)  # checks at 6 and 8 (cap)
  (run / "config.json").write_text(json.dumps(c.to_dict()))
  before = sorted(os.listdir(run / "warmup" / "checkpoints"))
  assert "8" in before
  assert tail_average.main([str(run), "--start", "8", "--steps", "3", "--every", "2",
                            "--decays", "0.9,0.5", "--n", "4"]) == 0
  rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| 1") or
          l.startswith("| 8")]
  names = [r.split(" | ")[1] for r in rows]
  # the start, then at steps 10 and 11 (the last): parameters, two EMAs, the uniform average
  assert names == ["parameters"] + ["parameters", "EMA 0.9", "EMA 0.5", "uniform from 8"] * 2
  assert [r.split(" | ")[0] for r in rows] == ["| 8"] + ["| 10"] * 4 + ["| 11"] * 4
  # the start's row is what the gate's own CLI reads from the same checkpoint
  G.main([str(run), "--steps", "8", "--n", "4"])
  gate_row = capsys.readouterr().out.splitlines()[-1].split(" | ")
  assert [float(x) for x in rows[0].split(" | ")[2:4]] == [float(x) for x in gate_row[1:3]]
  assert sorted(os.listdir(run / "warmup" / "checkpoints")) == before  # RUN only read
  for bad, needle in ((["--decays", "1.5"], "decay"), (["--start", "7"], "no warm-up checkpoint")):
    with pytest.raises(SystemExit) as e:
      tail_average.main([str(run), "--start", "8", "--steps", "2", *bad])
    assert needle in str(e.value) or e.value.code == 2


def test_a_warm_up_without_a_tail_keeps_no_average():
  from aci_jax.em.modes import warmup_settings
  on = warmup_settings(_toy_config(average_decay=0.995), "d.jsonl", "")
  assert (on.optim.average_decay, on.optim.average_start) == (0.995, 2000)
  for off in (dict(gate=()), dict(gate_mode="hold")):
    s = warmup_settings(_toy_config(average_decay=0.995, **off), "d.jsonl", "")
    assert s.optim.average_decay == 0.0, off
