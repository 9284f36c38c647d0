"""The `sft` and `export` modes of `python -m aci_jax.main`."""

from __future__ import annotations

import logging
import math

import jax

from aci_jax import fileio
from aci_jax.data.sft import build_sft_data, toy_demonstrations, write_jsonl
from aci_jax.main import register_mode
from aci_jax.train.runner import ConfigError, Trainer, load_tokenizer

log = logging.getLogger(__name__)


def _progress(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
              disable=not enabled or jax.process_index() != 0)


@register_mode("sft")
def sft(config, workdir: str) -> None:
  """Warm-up SFT on JSONL demonstrations (config.data.train_path; empty = the toy set)."""
  if config.loss.policy != "sft_nll":
    raise ConfigError(f"config.loss.policy must be 'sft_nll' in mode sft, got "
                      f"{config.loss.policy!r}")
  trainer = Trainer(config, workdir)
  tokenizer = load_tokenizer(config, trainer.hf_path)
  if tokenizer.vocab_size > trainer.model_cfg.vocab_size:
    raise ConfigError(f"tokenizer has {tokenizer.vocab_size} ids but config.model.vocab_size is "
                      f"{trainer.model_cfg.vocab_size}")
  d, t = config.data, config.train
  source = d.train_path
  if not source:  # the built-in toy demonstrations (process 0 also writes them for inspection)
    source = toy_demonstrations(d.toy_examples, seed=config.seed)
    if jax.process_index() == 0:
      write_jsonl(fileio.join(workdir, "data", "toy_sft.jsonl"), source)
  pack_len = int(d.get("pack_len", 0))
  if pack_len and trainer.loss_cfg.aggregation != "token_mean":
    raise ConfigError("config.data.pack_len needs config.loss.aggregation='token_mean' (a packed "
                      "row holds several sequences)")
  # Packed rows vary in number: keep it a multiple of what the step splits them into.
  dp = trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"]
  row_multiple = math.lcm(4, t.micro_batches * dp // jax.process_count())
  try:
    data, stats = build_sft_data(source, tokenizer, batch_size=t.batch_size, seq_len=d.seq_len,
                                 seed=config.seed, system=d.system or None, pack_len=pack_len,
                                 row_multiple=row_multiple)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  log.info("SFT data: %s", stats)
  resumed = trainer.restore_or_init()
  if resumed:
    log.info("resumed at step %d", trainer.step)
  cursor = int(trainer.meta.get("data_cursor", 0))
  e, ck = config.export, config.checkpoint
  bar = _progress(t.steps, trainer.step, config.get("progress", True))
  while trainer.step < t.steps:
    batch, cursor = data.batch(cursor, process_index=jax.process_index(),
                               process_count=jax.process_count())
    metrics = trainer.train_step(batch)
    step = trainer.step
    trainer.meta["data_cursor"] = cursor
    trainer.meta["epoch"] = cursor / len(data)
    bar.update(1)
    if step % t.log_every == 0 or step == t.steps:
      trainer.log(step, metrics)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
    if step % ck.every == 0 or step == t.steps:
      trainer.save()
    if e.every and step % e.every == 0:
      trainer.export()
  bar.close()
  if e.at_end:
    trainer.export(e.dir or None)
  trainer.close()


@register_mode("export")
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
