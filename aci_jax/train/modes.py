"""The `sft` and `export` modes of `python -m aci_jax.main`, and `run_sft`, the SFT run both the
`sft` mode and the EM warm-up (aci_jax/em/modes.py) call with their settings."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Any, Callable, Sequence

import jax

from aci_jax import fileio
from aci_jax.configuration import ConfigError, dataclass_from, seed_for
from aci_jax.data.sft import build_sft_data, write_jsonl
from aci_jax.data.toy import sft_records
from aci_jax.parallel.rules import data_parallel_size
from aci_jax.train.losses import LossConfig
from aci_jax.train.optim import OptimConfig, policy_params
from aci_jax.train.runner import Trainer, load_tokenizer

log = logging.getLogger(__name__)


def _progress(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
              disable=not enabled or jax.process_index() != 0)


GATE_MODES = ("hold", "extend")


@dataclasses.dataclass(frozen=True)
class DecayGate:
  """A warm-up that trains until probes of its skills pass. Every `every` steps (on its grid)
  `check(params)` says whether the skills it probes have formed; the gate step (the first pass,
  or the last grid point) is kept in the checkpoint's metadata, so a resumed run keeps its
  schedule and the checks are those an uninterrupted run makes. Two schedules:

  - "hold" (warmup-stable-decay): after the linear warm-up the learning rate holds at its peak;
    checks from the end of the warm-up on; at the gate step (at the latest `steps - tail`) the
    cosine to lr x end_lr_ratio starts, over `tail` steps.
  - "extend": the plain cosine over `steps`; checks from `steps` on, training on at the final
    learning rate until they pass, at most `tail` more steps. A seed whose skills formed in
    time trains exactly as without the gate.

  Why (issue 16): the warm-up's skills form late on some seeds and the fixed schedule's decay
  ends before they do."""

  check: Callable[[Any], tuple[bool, dict[str, float]]]  # params -> (passed, {probe: value})
  every: int
  tail: int
  mode: str = "hold"

  def __post_init__(self):
    if self.every <= 0 or self.tail <= 0:
      raise ValueError(f"gate every and tail must be > 0, got {self.every}, {self.tail}")
    if self.mode not in GATE_MODES:
      raise ValueError(f"gate mode must be one of {GATE_MODES}, got {self.mode!r}")

  def due(self, step: int, steps: int, warmup_steps: int) -> bool:
    """Is `step` a check of a run of `steps` (see the class doc)?"""
    if self.mode == "hold":
      return step >= warmup_steps and (step % self.every == 0 or step == steps - self.tail)
    # The cap is always a check, on the grid or not (tail 1,875 with every 250 ends off it).
    return step >= steps and ((step - steps) % self.every == 0 or step == steps + self.tail)

  def last(self, steps: int) -> int:
    """The last check: the gate closes there whether its probes pass or not."""
    return steps - self.tail if self.mode == "hold" else steps + self.tail


@dataclasses.dataclass(frozen=True)
class SFTSettings:
  """What one SFT run trains on, and how: the `sft` mode reads them from its config
  (`sft_settings`), the EM warm-up from `config.warmup`. The model, mesh, micro-batches, seed,
  checkpoint retention and export dtype are the run config's (`run_sft`)."""

  data: str | Sequence[dict]  # a JSONL path of {"prompt", "response"} records, or the records
  steps: int
  batch_size: int
  seq_len: int
  optim: OptimConfig
  loss: LossConfig  # the policy term is sft_nll
  pack_len: int = 0  # > 0: demonstrations packed into rows of this many tokens
  system: str | None = None  # the system message of every prompt
  log_every: int = 10
  checkpoint_every: int = 50
  export_every: int = 0  # 0 = no periodic export
  export_at_end: bool = True
  export_dir: str = ""  # "" = <workdir>/export/step_N
  # None: optim's schedule over `steps`. Set: see DecayGate (`steps` is the most a "hold" run
  # takes, where an "extend" run's cosine ends).
  gate: DecayGate | None = None


def _gated_optim(s: SFTSettings, gate_step: int | None) -> OptimConfig:
  """The schedule of a gated run: hold at the peak until `gate_step` (None: not yet passed,
  the latest the decay may start), then `tail` steps of cosine."""
  o = s.optim
  start = s.steps - s.gate.tail if gate_step is None else gate_step
  return dataclasses.replace(o, hold_steps=start - o.warmup_steps,
                             decay_steps=start + s.gate.tail)


def sft_settings(config) -> SFTSettings:
  """The `sft` mode's settings: config.data, .train, .optim, .loss, .checkpoint, .export."""
  if config.loss.policy != "sft_nll":
    raise ConfigError(f"config.loss.policy must be 'sft_nll' in mode sft, got "
                      f"{config.loss.policy!r}")
  d, t, e = config.data, config.train, config.export
  return SFTSettings(
      data=d.train_path, steps=t.steps, batch_size=t.batch_size, seq_len=d.seq_len,
      optim=dataclass_from(OptimConfig, config.optim, name="optim"),
      loss=dataclass_from(LossConfig, config.loss, name="loss"),
      pack_len=int(d.get("pack_len", 0)), system=d.system or None, log_every=t.log_every,
      checkpoint_every=config.checkpoint.every, export_every=e.every, export_at_end=e.at_end,
      export_dir=e.dir)


def sft(config, workdir: str) -> None:
  """Warm-up SFT on JSONL demonstrations (config.data.train_path; empty = the toy set)."""
  s = sft_settings(config)
  if not s.data:  # the built-in toy demonstrations (process 0 also writes them for inspection)
    records = sft_records(config.data.toy_examples, seed=seed_for(config, "train"))
    s = dataclasses.replace(s, data=records)
    if jax.process_index() == 0:
      write_jsonl(fileio.join(workdir, "data", "toy_sft.jsonl"), s.data)
  run_sft(config, workdir, s)


def _trainer_config(config, s: SFTSettings):
  """`config` with this run's optimizer and batch size: the Trainer builds its optimizer and
  checks the batch size from its config (and records that config in every checkpoint)."""
  import ml_collections

  c = copy.deepcopy(config)
  with c.unlocked():
    c.optim = ml_collections.ConfigDict(dataclasses.asdict(s.optim))
    c.train.batch_size = s.batch_size
  return c


@dataclasses.dataclass(frozen=True)
class GateOutcome:
  """How a gated run's gate closed: the step, whether its probes passed, their values then."""
  step: int
  passed: bool
  probes: dict[str, float]


def run_sft(config, workdir: str, s: SFTSettings, tokenizer=None) -> GateOutcome | None:
  """Runs (or resumes) SFT with settings `s` in `workdir`. `config` gives the model, mesh,
  micro-batches, seed, checkpoint retention and export dtype; `tokenizer` defaults to
  config.tokenizer (or the model's). Returns the gate's outcome (None without a gate)."""
  gate = s.gate
  hold = bool(gate) and gate.mode == "hold"
  if hold and s.steps - gate.tail < s.optim.warmup_steps:
    raise ConfigError(f"a gated warm-up needs steps ({s.steps}) >= warmup_steps "
                      f"({s.optim.warmup_steps}) + the gate's tail ({gate.tail})")
  if hold:
    s = dataclasses.replace(s, optim=_gated_optim(s, None))
  trainer = Trainer(_trainer_config(config, s), workdir, loss_cfg=s.loss)
  if tokenizer is None:
    tokenizer = load_tokenizer(config, trainer.hf_path)
  if tokenizer.vocab_size > trainer.model_cfg.vocab_size:
    raise ConfigError(f"tokenizer has {tokenizer.vocab_size} ids but config.model.vocab_size is "
                      f"{trainer.model_cfg.vocab_size}")
  if s.pack_len and s.loss.aggregation != "token_mean":
    raise ConfigError("config.data.pack_len needs config.loss.aggregation='token_mean' (a packed "
                      "row holds several sequences)")
  # Packed rows vary in number: keep it a multiple of what the step splits them into.
  dp = data_parallel_size(trainer.mesh)
  row_multiple = math.lcm(4, trainer.step_cfg.micro_batches * dp // jax.process_count())
  try:
    data, stats = build_sft_data(s.data, tokenizer, batch_size=s.batch_size, seq_len=s.seq_len,
                                 seed=seed_for(config, "order"), system=s.system,
                                 pack_len=s.pack_len,
                                 row_multiple=row_multiple)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  log.info("SFT data: %s", stats)
  resumed = trainer.restore_or_init()
  if resumed:
    log.info("resumed at step %d", trainer.step)
  cursor = int(trainer.meta.get("data_cursor", 0))
  end = s.steps
  if gate and trainer.meta.get("gate_step") is not None:
    end = trainer.meta["gate_step"]
    if hold:
      trainer.set_optim(_gated_optim(s, end))
      end += gate.tail
  elif gate and not hold:
    end = gate.last(s.steps)  # the cosine's end value holds past s.steps (optax clamps)
  bar = _progress(end, trainer.step, config.get("progress", True))
  while trainer.step < end:
    batch, cursor = data.batch(cursor, process_index=jax.process_index(),
                               process_count=jax.process_count())
    metrics = trainer.train_step(batch)
    step = trainer.step
    trainer.meta["data_cursor"] = cursor
    trainer.meta["epoch"] = cursor / len(data)
    bar.update(1)
    if step % s.log_every == 0 or step == end:
      trainer.log(step, metrics)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
    gated = False
    if (gate and trainer.meta.get("gate_step") is None
        and gate.due(step, s.steps, s.optim.warmup_steps)):
      policy = policy_params(trainer.state)
      passed, probes = gate.check(policy)
      trainer.log(step, {f"gate/{k}": v for k, v in probes.items()})
      if policy is not trainer.state.params:  # averaging: the parameters' own probes, to compare
        trainer.log(step, {f"gate_raw/{k}": v
                           for k, v in gate.check(trainer.state.params)[1].items()})
      log.info("warm-up gate at step %d: %s %s", step, "passed" if passed else "not yet",
               " ".join(f"{k}={v:.3f}" for k, v in probes.items()))
      if passed or step >= gate.last(s.steps):
        trainer.meta["gate_step"], trainer.meta["gate_passed"] = step, bool(passed)
        trainer.meta["gate_probes"] = {k: float(v) for k, v in probes.items()}
        end = step
        if hold:
          trainer.set_optim(_gated_optim(s, step))
          end += gate.tail
        bar.total = end
        gated = True
    if step % s.checkpoint_every == 0 or step == end or gated:
      trainer.save()
    if s.export_every and step % s.export_every == 0:
      trainer.export()
  bar.close()
  if s.export_at_end:
    trainer.export(s.export_dir or None)
  outcome = None
  if gate:
    outcome = GateOutcome(step=int(trainer.meta.get("gate_step", trainer.step)),
                          passed=bool(trainer.meta.get("gate_passed", False)),
                          probes=dict(trainer.meta.get("gate_probes", {})))
  trainer.close()
  return outcome


def export(config, workdir: str) -> None:
  """Writes a checkpoint of `workdir` (config.export.step; 0 = latest) as a Hugging Face
  directory (config.export.dir; default <workdir>/export/step_N)."""
  trainer = Trainer(config, workdir)
  step = int(config.export.get("step", 0)) or None
  available = trainer.ckpt.all_steps()
  if not available:
    raise ConfigError(f"no checkpoint under {trainer.ckpt.directory}")
  if step is not None and step not in available:
    raise ConfigError(f"config.export.step={step} not in the checkpoints {available}")
  from aci_jax.train.step import abstract_train_state
  abstract, trainer.shardings = abstract_train_state(trainer.model_cfg, trainer.optimizer,
                                                     trainer.mesh)
  trainer.state, trainer.meta = trainer.ckpt.restore(abstract, step)
  out = trainer.export(config.export.dir or None)
  print(out)
  trainer.close()
