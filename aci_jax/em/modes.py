"""The `autocode` mode: warm-up SFT -> evaluation -> EM iterations (with evaluation) -> summary.

    python -m aci_jax.main --config configs/default.py [--workdir DIR]

Workdir layout:
  warmup/            the SFT run (its own checkpoints, metrics, and the exported HF policy
                     warmup/hf); with `warmup.gate_retries`, a retried warm-up's attempts in
                     warmup/retry_<k>/, each attempt's export in <its dir>/export, and
                     warmup/attempts.json (seeds, gate outcome, the attempt copied to hf);
                     a retry of the toy task its own demonstrations, retry_<k>/demos.jsonl
  tokenizer/         the tokenizer the run uses (the toy's char tokenizer, or a copy)
  checkpoints/, metrics.jsonl, tb/   the EM run (its meta carries the evaluation history)
  eval/<point>/      trajectories + summaries of every evaluation point
  summary.json       {"warmup", "iterations", "final", "wall_seconds", ...} and plots/*.png

Every phase is resumable: re-running the same command skips what is finished and continues
the EM run from its latest checkpoint (iteration, data cursor, RNG and evaluation history).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time

import jax

from aci_jax import fileio
from aci_jax.configuration import ConfigError, dataclass_from, seed_for
from aci_jax.em import algorithms
from aci_jax.em.loop import EMConfig, EMLoop, Problem, restore_progress, save_progress
from aci_jax.train.runner import Trainer

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- data


def _barrier(name: str) -> None:
  """Waits until every host gets here: a file process 0 just wrote is then visible to all."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"aci_jax:{name}")


def _tokenizer(config, workdir):
  from aci_jax.tokenizer import load_tokenizer

  tok = load_tokenizer(config.tokenizer or config.model.path,
                       toy_dir=fileio.join(workdir, "tokenizer"))
  return tok, tok.directory


def _problems(config):
  """(train problems, {benchmark: eval problems}) from config.task."""
  t = config.task
  if t.name == "toy":
    from aci_jax.data import toy
    fams = tuple(t.families)
    try:  # a count a family cannot supply, an unknown family: the user's config, one line
      train = toy.make_problems(t.train_per_family, split="train", families=fams,
                                seed=seed_for(config, "train"),
                                caps=toy.family_caps(t.get("train_caps", ())))
      test = toy.make_problems(t.eval_per_family, split="test", families=fams,
                               seed=seed_for(config, "problem"))
    except ValueError as e:
      raise ConfigError(f"config.task: {e}".splitlines()[0]) from None
    return train, {"toy": test}
  from aci_jax.data import datasets
  if not t.train_path and int(config.em.iterations) > 0:
    raise ConfigError(f"config.task.train_path: required for EM iterations (em.iterations="
                      f"{config.em.iterations}); set it, or --config.em.iterations=0 to evaluate "
                      "only")
  try:  # an evaluation-only run (em.iterations=0) needs no training pool
    train = (datasets.load_jsonl(t.train_path, t.get("train_benchmark") or None)
             if t.train_path else [])
    evals = {name: datasets.load_jsonl(path, name)
             for name, path in dict(t.eval_paths).items() if path}  # "" = not evaluated
  except (OSError, ValueError) as e:
    raise ConfigError(f"config.task: {e}".splitlines()[0]) from None
  if not evals:
    raise ConfigError("config.task.eval_paths: no benchmark has a path; set one, e.g. "
                      "--config.task.eval_paths.math500=math500.jsonl")
  limit = int(t.get("eval_limit", 0))
  if limit:
    evals = {k: v[:limit] for k, v in evals.items()}
  return train, evals


def prompt_builder(config, tok):
  """problem text -> prompt ids, the one framing of every E-step and evaluation prompt (and,
  through `_warmup_demos`, of the warm-up's): `data.system` as the system message,
  `task.instruction` (the answer format) after the problem in the user message."""
  from aci_jax.eval.harness import chat_prompt

  system = config.data.get("system") or None
  instruction = config.task.get("instruction") or None
  return lambda text: chat_prompt(tok, text, system=system, instruction=instruction)


def _warmup_demos(config, train):
  t = config.task
  if t.name == "toy":
    from aci_jax.data import toy
    n = int(t.warmup_examples) or len(train)  # 0 = every training problem (validate: >= 0)
    demos = toy.make_demonstrations(train[:n], code_fraction=t.code_fraction,
                                    triggered_fraction=t.triggered_fraction,
                                    # () = every family
                                    triggered_families=tuple(t.get("triggered_families",
                                                                   ())) or None,
                                    balance_lengths=bool(t.get("triggered_length_balance",
                                                               False)),
                                    copy_drill=float(t.get("copy_drill", 0.0)),
                                    repeats=toy.demo_repeats(t.get("demo_repeats", ())),
                                    forced_fraction=float(t.get("forced_fraction", 0.0)),
                                    seed=seed_for(config, "train"))
  else:
    from aci_jax.data.sft import load_demonstrations
    demos = load_demonstrations(config.warmup.data_path)
  if not t.get("instruction"):
    return demos
  # The warm-up trains on the prompts the policy is asked later (prompt_builder): the SFT
  # data adds data.system itself, the instruction goes into the user message here.
  from aci_jax.eval.harness import user_message
  return [{**d, "prompt": user_message(d["prompt"], t.instruction)} for d in demos]


# ------------------------------------------------------------------------------- phases


def warmup_settings(config, data_path: str, export_dir: str):
  """The warm-up's SFTSettings: config.warmup's schedule over the EM run's optimizer and loss
  settings, plain SFT (sft_nll, no decision term, no KL), exported to `export_dir`."""
  from aci_jax.train.losses import LossConfig
  from aci_jax.train.modes import SFTSettings
  from aci_jax.train.optim import OptimConfig

  w = config.warmup
  optim = {**dict(config.optim), "lr": w.lr, "decay_steps": w.steps,
           # a short warm-up run (tests) still works
           "warmup_steps": min(w.warmup_steps, w.steps),
           **{k: w[k] for k in ("end_lr_ratio", "weight_decay", "b2", "clip_norm") if k in w},
           # the moving average departs from the parameters where the gate's tail begins; with
           # no such tail it would equal them, so none is kept (nor is the checkpoint changed)
           "average_decay": float(w.get("average_decay", 0.0)) if _extends(w) else 0.0,
           "average_start": int(w.steps)}
  return SFTSettings(
      data=data_path, steps=w.steps, batch_size=w.batch_size, seq_len=w.seq_len,
      optim=dataclass_from(OptimConfig, optim, name="warmup"),
      loss=dataclass_from(LossConfig, {**dict(config.loss), "policy": "sft_nll",
                                       "decision_coef": 0.0, "kl_coef": 0.0,
                                       "kl_tokens": "all"}, name="loss"),
      pack_len=int(w.get("pack_len", 0)), system=config.data.get("system") or None,
      log_every=max(1, min(25, w.steps // 10)),
      # The EM run checkpoints every iteration; a warm-up step is far cheaper than a save.
      checkpoint_every=max(50, w.steps // 4), export_dir=export_dir)


def _extends(w) -> bool:
  """Whether the warm-up `w` (config.warmup) may train past `steps`: a gate in mode extend."""
  return bool(tuple(w.get("gate", ()))) and w.get("gate_mode", "extend") == "extend"


def _warmup(config, workdir, tok, train) -> str | None:
  """Runs (or resumes, or skips when finished) the SFT warm-up; returns its HF export dir."""
  w = config.warmup
  if not w.steps:
    return None
  out = fileio.join(workdir, "warmup", "hf")
  if fileio.exists(fileio.join(out, "config.json")):  # written last by the export
    return fileio.stage(out)
  from aci_jax.data.sft import write_jsonl
  from aci_jax.train.modes import run_sft

  data_path = fileio.join(workdir, "warmup", "demos.jsonl")
  if jax.process_index() == 0 and not fileio.exists(data_path):
    write_jsonl(data_path, _warmup_demos(config, train))
  _barrier("warmup demos")
  from aci_jax.eval.warmup_gate import build_gate
  from aci_jax.train.runner import model_config
  mcfg = model_config(config)[0]
  gate_for = lambda pool: build_gate(config, tok, mcfg, pool)  # None without warmup.gate
  retries = int(w.get("gate_retries", 0)) if tuple(w.get("gate", ())) else 0
  if not retries:
    settings = warmup_settings(config, data_path, out)
    gate = gate_for(train)
    if gate:
      settings = dataclasses.replace(settings, gate=gate)
    run_sft(config, fileio.join(workdir, "warmup"), settings, tokenizer=tok)
  else:
    _gated_attempts(config, workdir, tok, data_path, gate_for, retries, out, train=train,
                    retry_below=float(w.get("gate_retry_below", 1.0)))
  _barrier("warmup export")  # process 0 writes the export; every host then reads it
  return fileio.stage(out)  # the EM policy loads it with the mmap'd safetensors reader


RETRY_ROLES = ("train", "order", "init")  # what a warm-up retry draws again (not `problem`)


def reseeded(config, attempt: int):
  """`config` for the warm-up's attempt `attempt` (0: itself): other training problems and
  demonstrations, data order and initial weights (each role's seed + 1,000 x attempt), the same
  held-out problems (evaluation and gate probes: the `problem` seed)."""
  if not attempt:
    return config
  c = copy.deepcopy(config)
  with c.unlocked():
    for role in RETRY_ROLES:
      c[f"{role}_seed"] = seed_for(config, role) + 1000 * attempt
  return c


def _attempt_data(cfg, adir: str, data_path: str, attempt: int):
  """(demonstrations path, its own training pool or None) of one warm-up attempt: attempt 0
  trains on the run's (None); a retry of the toy task on problems and demonstrations of its own
  (`reseeded`'s `train` seed), written once to its directory. A task whose demonstrations are a
  file (`warmup.data_path`) has nothing to draw again: its retries differ in order and weights."""
  if not attempt or cfg.task.name != "toy":
    return data_path, None
  from aci_jax.data.sft import write_jsonl

  pool = _problems(cfg)[0]
  path = fileio.join(adir, "demos.jsonl")
  if not fileio.exists(path):
    write_jsonl(path, _warmup_demos(cfg, pool))
  return path, pool


def _gated_attempts(config, workdir, tok, data_path, gate_for, retries, out, *, train=(),
                    retry_below: float = 1.0) -> None:
  """A gated warm-up whose gate may close without passing (`gate_tail` spent): up to `retries`
  more attempts, each a whole warm-up in `warmup/retry_<k>/` from other training problems and
  demonstrations, data order and initial weights (`reseeded`), until one passes or misses by
  little: an attempt whose weakest probe is at least `retry_below` is kept (a probe of 64
  problems at 0.89 against a bar of 0.9 is one problem, within its noise, and a retry costs a
  whole warm-up). Whether a seed's skills form is its optimisation path's luck (docs/em_log.md,
  "What makes a seed late", "Seed 2's miscopies"), which neither more steps nor a re-warm
  changed on the seed measured; another path did on one seed, and on the two seeds whose first
  path failed, a second path on the same problems was late too ("The copy probe, and a retry on
  it that did not help"), hence a retry draws the problems again. `gate_for(pool)` builds an
  attempt's gate, whose held-out probes avoid `pool`: attempt 0's the run's training problems
  `train`, a retry's those and its own (mostly the same probes, drawn by the `problem` seed).
  The passing attempt, else the one whose weakest probe is highest, is copied to `out`;
  `warmup/attempts.json` says which. The EM run draws its queries from the run's pool whichever
  attempt is chosen (problems of the training split either way). Resumable: a finished attempt
  re-runs as a restore and its re-export."""
  from aci_jax.train.modes import run_sft

  outcomes = []
  for attempt in range(retries + 1):
    adir = fileio.join(workdir, "warmup", *([f"retry_{attempt}"] if attempt else []))
    cfg = reseeded(config, attempt)
    demos, pool = _attempt_data(cfg, adir, data_path, attempt)
    exclude = list(train) + (pool or [])
    settings = dataclasses.replace(
        warmup_settings(cfg, demos, fileio.join(adir, "export")), gate=gate_for(exclude))
    o = run_sft(cfg, adir, settings, tokenizer=tok)
    outcomes.append({"attempt": attempt, "dir": adir, "demos": demos,
                     **{f"{r}_seed": seed_for(cfg, r) for r in RETRY_ROLES},
                     "gate_step": o.step, "passed": o.passed, "probes": o.probes})
    log.info("warm-up attempt %d: gate %s at step %d %s", attempt,
             "passed" if o.passed else "closed without passing", o.step,
             " ".join(f"{k}={v:.3f}" for k, v in o.probes.items()))
    if o.passed or _weakest(o.probes) >= retry_below:
      break
  best = max(outcomes, key=lambda r: (r["passed"], _weakest(r["probes"])))
  if jax.process_index() == 0:
    fileio.write_json(fileio.join(workdir, "warmup", "attempts.json"),
                      {"chosen": best["attempt"], "retry_below": retry_below,
                       "attempts": outcomes})
    fileio.upload_dir(fileio.stage(fileio.join(best["dir"], "export")), out,
                      last=("config.json",))


def _weakest(probes: dict) -> float:
  return min(probes.values(), default=0.0)


def _loss_for(config):
  """The M-step's LossConfig: `config.loss` with what the EM algorithm changes in it."""
  from aci_jax.train.losses import LossConfig

  em = dataclass_from(EMConfig, config.em, name="em")
  overrides = algorithms.get(em.algorithm)(em).loss_overrides()
  return dataclass_from(LossConfig, {**dict(config.loss), **overrides}, name="loss")


def _point(summary: dict) -> dict:
  """The numbers summary.json keeps per evaluation point (overall and per family/subject)."""
  out = {k: summary.get(k) for k in ("accuracy", "code_rate", "selection_accuracy",
                                     "mean_at_k", "skipped_overlong")}
  g = summary.get("greedy") or {}
  out.update(tool_error_rate=g.get("tool_error_rate"), truncation_rate=g.get("truncation_rate"),
             cells_per_answer=g.get("cells_per_answer"))
  for key in ("family", "subject"):
    if f"by_{key}" in summary:
      out[f"per_{key}"] = {name: {k: b.get(k) for k in ("accuracy", "code_rate",
                                                        "selection_accuracy")}
                           for name, b in summary[f"by_{key}"].items()}
  return out


def _rollout_config(config):
  from aci_jax.rollout import RolloutConfig
  from aci_jax.sampling import SamplingParams

  r = dict(config.rollout)
  try:
    sampling = SamplingParams(temperature=r.pop("temperature"), top_p=r.pop("top_p"),
                              top_k=r.pop("top_k"))
  except (KeyError, ValueError) as e:
    raise ConfigError(f"config.rollout: {e}") from None
  return dataclass_from(RolloutConfig, r, name="rollout", sampling=sampling, seed=config.seed)


def validate(config) -> None:
  """Every section the autocode mode turns into a dataclass, checked up front."""
  from aci_jax.sandbox import SandboxConfig
  from aci_jax.train.optim import OptimConfig

  dataclass_from(EMConfig, config.em, name="em")
  _rollout_config(config)
  dataclass_from(SandboxConfig, config.sandbox, name="sandbox")
  dataclass_from(OptimConfig, config.optim, name="optim")
  _loss_for(config)
  from aci_jax.grading import FALLBACKS
  if config.grader.get("fallback", "none") not in FALLBACKS:
    raise ConfigError(f"config.grader.fallback must be one of {FALLBACKS}, got "
                      f"{config.grader.fallback!r}")
  if config.task.name not in ("toy", "jsonl"):
    raise ConfigError(f"config.task.name must be 'toy' or 'jsonl', got {config.task.name!r}")
  # The gate belongs to a warm-up that runs (`warmup.steps` 0: none; configs/default.py's tail
  # is then 0 too).
  if tuple(config.warmup.get("gate", ())) and int(config.warmup.steps):
    from aci_jax.eval.warmup_gate import parse_entries
    if config.task.name != "toy":
      raise ConfigError("config.warmup.gate probes the toy task's demonstrations; it needs "
                        f"task.name='toy', got {config.task.name!r}")
    parse_entries(config.warmup.gate, tuple(config.task.families))
    w = config.warmup
    if int(w.gate_every) <= 0 or int(w.gate_tail) <= 0 or int(w.gate_n) <= 0:
      raise ConfigError("config.warmup.gate_every, gate_tail and gate_n must be > 0, got "
                        f"{w.gate_every}, {w.gate_tail}, {w.gate_n}")
    retries = w.get("gate_retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
      raise ConfigError(f"config.warmup.gate_retries must be an integer >= 0, got {retries!r}")
    below = w.get("gate_retry_below", 1.0)
    if isinstance(below, bool) or not isinstance(below, (int, float)) or not 0.0 < below <= 1.0:
      raise ConfigError(f"config.warmup.gate_retry_below must be in (0, 1], got {below!r}")
    if retries and jax.process_count() > 1:
      raise ConfigError("config.warmup.gate_retries runs on a single host (as the gate does)")
    if not 0.0 < float(w.gate_min) <= 1.0:
      raise ConfigError(f"config.warmup.gate_min must be in (0, 1], got {w.gate_min}")
    from aci_jax.train.modes import GATE_MODES
    if w.gate_mode not in GATE_MODES:
      raise ConfigError(f"config.warmup.gate_mode must be one of {GATE_MODES}, got "
                        f"{w.gate_mode!r}")
    if (w.gate_mode == "hold"
        and int(w.steps) - int(w.gate_tail) < min(int(w.warmup_steps), int(w.steps))):
      raise ConfigError(f"config.warmup.steps ({w.steps}) must leave the gate's tail "
                        f"({w.gate_tail}) after the lr warm-up ({w.warmup_steps})")
  if float(config.optim.get("average_decay", 0.0)):
    raise ConfigError("config.optim.average_decay is for the sft mode: the EM loop's rollouts "
                      "sample its parameters, not an average (the warm-up's average is "
                      "config.warmup.average_decay)")
  average = config.warmup.get("average_decay", 0.0)
  if isinstance(average, bool) or not isinstance(average, (int, float)) or \
      not 0.0 <= average < 1.0:
    raise ConfigError(f"config.warmup.average_decay must be in [0, 1), got {average!r}")
  # Without a gate in mode 'extend' nothing trains past warmup.steps, where the average
  # departs from the parameters: the setting is then inert (configs/default.py keeps it on for
  # --config.warmup.gate=() and its :rare_code_ungated variant alike), not an error.
  if config.task.name == "toy" and int(config.task.warmup_examples) < 0:
    # train[:n] with n < 0 would silently drop problems from the end of the set
    raise ConfigError("config.task.warmup_examples must be >= 0 (0 = every training problem), "
                      f"got {config.task.warmup_examples}")


def autocode(config, workdir: str) -> None:
  """Warm-up SFT, then EM (or a baseline, `config.em.algorithm`), evaluated along the way."""
  from aci_jax.eval.harness import evaluate_benchmarks
  from aci_jax.grading import Grader
  from aci_jax.rollout import RolloutEngine
  from aci_jax.sandbox import Sandbox, SandboxConfig

  from aci_jax.hub import HubError, resolve

  t_start = time.perf_counter()
  em_cfg = dataclass_from(EMConfig, config.em, name="em")
  if config.model.init == "hf":  # a hub id becomes a local snapshot once, before anything else
    try:
      local = resolve(config.model.path)
    except HubError as e:
      raise ConfigError(f"config.model.path: {e}") from None
    config = copy.deepcopy(config)
    with config.unlocked():
      config.model.path = local
  tok, tok_dir = _tokenizer(config, workdir)
  train, evals = _problems(config)
  rollout_cfg = _rollout_config(config)
  sandbox_cfg = dataclass_from(SandboxConfig, config.sandbox, name="sandbox")

  with Sandbox(sandbox_cfg) as sandbox, Grader(**dict(config.grader)) as grader:
    warm_dir = _warmup(config, workdir, tok, train)
    c = copy.deepcopy(config)
    with c.unlocked():
      c.tokenizer = tok_dir
      if warm_dir:
        c.model.init, c.model.path = "hf", warm_dir
    trainer = Trainer(c, workdir, loss_cfg=_loss_for(config))
    # An evaluation-only run on a fresh workdir trains nothing: its state is the parameters
    # alone (Adam's two moments would double their host memory: 1 of the 2.9 GB peak for
    # SmolLM2-135M, docs/real_model.md) and it writes no checkpoint of the unchanged model, so
    # a later EM run on this workdir starts from the same model with a full state.
    params_only = not em_cfg.iterations and trainer.ckpt.latest_step() is None
    if params_only:
      import optax
      trainer.optimizer = optax.identity()  # no optimizer state
    resumed = trainer.restore_or_init()
    restore_progress(trainer)
    log.info("%s EM run at iteration %d", "resumed" if resumed else "started",
             trainer.meta.get("em_iteration", 0))
    engine = RolloutEngine(trainer.model_cfg, tok, rollout_cfg, executor=sandbox,
                           mesh=trainer.mesh, show_progress=bool(config.get("progress", True)))
    ev = config.eval
    # The warm-up's framing (system message, answer-format instruction) of every prompt the
    # policy sees after it: E-step rollouts and evaluation alike.
    prompt_fn = prompt_builder(config, tok)
    history = trainer.meta.setdefault("summary", {"warmup": None, "iterations": []})
    history.setdefault("wall_seconds_before", 0.0)

    def run_eval(name: str) -> dict:
      t0 = time.perf_counter()
      res = evaluate_benchmarks(engine, trainer.state.params, tok, evals, grader,
                                out_dir=fileio.join(workdir, "eval", name),
                                samples=ev.samples, temperature=ev.temperature,
                                selection=ev.selection,
                                prompt_fn=lambda _, text: prompt_fn(text))
      point = {b: _point(s) for b, s in res.items()}
      flat = {f"eval/{b}/{k}": v for b, p in point.items() for k, v in p.items()
              if isinstance(v, (int, float))}
      trainer.log(trainer.step, flat)
      log.info("eval %s: %s (%.0fs)", name, json.dumps(flat), time.perf_counter() - t0)
      return point

    if history["warmup"] is None:
      history["warmup"] = run_eval("warmup")
      if not params_only:
        save_progress(trainer)

    def on_iteration(it: int, stats: dict) -> None:
      # Scalars, and the per-query native code-rate histogram (polarisation, plotted).
      entry = {"iteration": it, **{k: v for k, v in stats.items()
                                   if k.startswith(("estep/", "em/")) and
                                   (not isinstance(v, list) or
                                    k == "estep/native_code_rate_query_hist")}}
      if ev.every and (it % ev.every == 0 or it == em_cfg.iterations):
        entry["eval"] = run_eval(f"iteration_{it}")
      history["iterations"].append(entry)

    problems = [Problem(p["problem"], p["answer"], {k: v for k, v in p.items()
                                                    if k not in ("problem", "answer")})
                for p in train]
    loop = EMLoop(em_cfg, trainer, engine, grader, tok, problems, prompt_fn, seed=config.seed,
                  on_iteration=on_iteration) if problems else None  # None: evaluation only
    for _ in range(em_cfg.iterations - int(trainer.meta.get("em_iteration", 0))):
      stats = loop.run_iteration()
      log.info("EM iteration %d: %s", stats["em/iteration"],
               {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()
                if k != "trajectories" and not isinstance(v, list)})
    last = history["iterations"][-1] if history["iterations"] else None
    if last and "eval" in last:
      final = last["eval"]
    elif not em_cfg.iterations:  # evaluation only: the warm-up point is the final one
      final = history["warmup"]
    else:
      final = run_eval("final")
    summary = {
        "algorithm": em_cfg.algorithm,
        "warmup": history["warmup"],
        "iterations": history["iterations"],
        "final": final,
        "wall_seconds": history["wall_seconds_before"] + time.perf_counter() - t_start,
        "sandbox": sandbox.metrics(),
    }
    history["wall_seconds_before"] = summary["wall_seconds"]
    if not params_only:
      save_progress(trainer)
    if jax.process_index() == 0:
      from aci_jax.em.report import write_plots, write_summary
      write_summary(fileio.join(workdir, "summary.json"), summary)
      write_plots(summary, fileio.join(workdir, "plots"))
    if config.export.at_end:
      trainer.export(config.export.dir or None)
    trainer.close()
