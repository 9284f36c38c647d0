"""Hugging Face checkpoint directories <-> our parameter tree.

Loading builds every parameter with `jax.make_array_from_callback`: each device's shard is read
straight from the memory-mapped safetensors file (only the bytes of that shard, transposed and
cast on the host), so no device and no host ever holds a full replicated copy of a weight that
is meant to be sharded. Per-layer tensors are stacked along the leading layer axis of our
scanned parameters on the fly.

Export goes the other way, one tensor at a time, into a directory `transformers` loads.

Which Hugging Face tensor makes which leaf, transposed or not, is the parameter schema
(`aci_jax.model.schema.LEAVES`); nothing here restates it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aci_jax import fileio
from aci_jax.model.config import ModelConfig
from aci_jax.model import schema
from aci_jax.model.decoder import param_shapes
from aci_jax.model.safetensors_io import CheckpointError, SafetensorsFile, write_safetensors
from aci_jax.parallel.rules import TRAINING_RULES, Rules, param_shardings

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


class _Checkpoint:
  """Name -> file lookup over a single-file or sharded safetensors directory."""

  def __init__(self, directory: str):
    index = os.path.join(directory, INDEX_FILE)
    single = os.path.join(directory, SINGLE_FILE)
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no 'weight_map'")
      files = {}
      for fname in sorted(set(weight_map.values())):
        fpath = os.path.join(directory, fname)
        if not os.path.exists(fpath):
          raise CheckpointError(f"{index} names shard {fname}, which does not exist")
        files[fname] = SafetensorsFile(fpath)
      self.where = {}
      for name, fname in weight_map.items():
        if name not in files[fname].keys():
          raise CheckpointError(f"tensor {name} is listed in the index but missing from {fname}")
        self.where[name] = files[fname]
    elif os.path.exists(single):
      f = SafetensorsFile(single)
      self.where = {name: f for name in f.keys()}
    else:
      raise CheckpointError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")


def _check_names(cfg: ModelConfig, ckpt: _Checkpoint) -> None:
  """Missing, unexpected and wrongly-shaped tensors, all named in one error."""
  present = set(ckpt.where)
  wanted = {name: t for t in schema.leaves(cfg) for name in t.hf_names(cfg)}
  missing = sorted(set(wanted) - present)
  # A tied checkpoint may still carry lm_head.weight (a copy of the embedding); HF ignores it.
  ignorable = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
  ignorable |= {n for n in present if n.endswith("rotary_emb.inv_freq")}
  unexpected = sorted(present - set(wanted) - ignorable)
  bad_shape = []
  for name, t in wanted.items():
    if name not in present:
      continue
    want = t.hf_shape(cfg)
    got = ckpt.where[name].shape(name)
    if got != want:
      bad_shape.append(f"{name} {list(got)} (expected {list(want)})")
  problems = []
  if missing:
    problems.append(f"missing tensors: {', '.join(missing[:20])}"
                    + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else ""))
  if unexpected:
    problems.append(f"unexpected tensors: {', '.join(unexpected[:20])}"
                    + (f" (+{len(unexpected) - 20} more)" if len(unexpected) > 20 else ""))
  if bad_shape:
    problems.append(f"wrong shapes: {', '.join(bad_shape[:20])}")
  if problems:
    raise CheckpointError("checkpoint does not match config: " + "; ".join(problems))


def _reader(cfg: ModelConfig, ckpt: _Checkpoint, t: schema.Leaf, dtype) -> Callable:
  """index (tuple of slices into our leaf) -> numpy shard in `dtype`."""

  def one(name, idx):
    src = ckpt.where[name].get(name)
    if t.transpose:  # our [in, out][i, o] is HF [out, in][o, i]
      return np.asarray(src[idx[1], idx[0]]).T
    return np.asarray(src[idx])

  def read(index):
    if t.stacked:
      layers = range(cfg.num_layers)[index[0]]
      parts = [one(t.hf_name(i), index[1:]) for i in layers]
      return np.stack(parts).astype(dtype)
    return one(t.hf_name(), index).astype(dtype)

  return read


def load_params(directory: str, cfg: ModelConfig, mesh: Mesh | None = None,
                rules: Rules = TRAINING_RULES, shardings=None) -> dict:
  """Reads a Hugging Face checkpoint directory into our parameter tree.

  Args:
    directory: holds `model.safetensors` or `model.safetensors.index.json` + shards.
    cfg: the model config (its `param_dtype` is the dtype of the returned arrays).
    mesh: where to place the parameters; with `rules`, gives each leaf a `NamedSharding`. When
      neither `mesh` nor `shardings` is given, everything goes to the first local device.
    shardings: an explicit tree of shardings (overrides `mesh`/`rules`).
  Raises:
    CheckpointError naming every missing, unexpected or wrongly-shaped tensor.
  """
  ckpt = _Checkpoint(directory)
  shapes = param_shapes(cfg)
  flat_shapes = {tuple(getattr(k, "key", k) for k in path): leaf
                 for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
  _check_names(cfg, ckpt)
  if shardings is None:
    if mesh is None:
      dev = jax.local_devices()[0]
      shardings = jax.tree_util.tree_map(
          lambda _: jax.sharding.SingleDeviceSharding(dev), shapes)
    else:
      shardings = param_shardings(shapes, mesh, rules)
  out: dict = {}
  for t in schema.leaves(cfg):
    leaf = flat_shapes[t.path]
    sharding = _get(shardings, t.path)
    arr = jax.make_array_from_callback(leaf.shape, sharding,
                                       _reader(cfg, ckpt, t, leaf.dtype))
    _set(out, t.path, arr)
  return out


# ------------------------------------------------------------------------------------ export


def _host_value(x: jax.Array) -> np.ndarray:
  """A full host copy of one (possibly sharded, possibly multi-host) array."""
  if not isinstance(x, jax.Array):  # host params (e.g. deserialised with flax) export as is
    return np.asarray(x)
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  # Multi-host: re-shard to fully replicated, then every host reads its local copy.
  mesh = x.sharding.mesh
  replicated = jax.jit(lambda a: a, out_shardings=NamedSharding(mesh, P()))(x)
  return np.asarray(replicated.addressable_data(0))


EXPORT_STEP_PREFIX = "step_"


def export_path(workdir: str, step: int) -> str:
  """Where a run exports its policy at `step` by default: <workdir>/export/step_<step>."""
  return fileio.join(workdir, "export", f"{EXPORT_STEP_PREFIX}{step}")


def resolve_export(directory: str) -> str:
  """`directory` if it is a checkpoint (has config.json), else its newest complete export: a run's
  export root (<workdir>/export) or workdir holds step_<N>/ directories, and config.json is
  written last, so a step without one is skipped as unfinished. Raises FileNotFoundError
  naming what it looked for."""
  if fileio.exists(fileio.join(directory, "config.json")):
    return directory
  for root in (directory, fileio.join(directory, "export")):
    steps = []
    for name in fileio.listdir(root):
      n = name[len(EXPORT_STEP_PREFIX):]
      if name.startswith(EXPORT_STEP_PREFIX) and n.isdigit() and fileio.exists(
          fileio.join(root, name, "config.json")):
        steps.append(int(n))
    if steps:
      return fileio.join(root, f"{EXPORT_STEP_PREFIX}{max(steps)}")
  raise FileNotFoundError(f"no config.json at {directory} and no finished export under it "
                          f"({EXPORT_STEP_PREFIX}N/config.json)")


def export_params(params: dict, cfg: ModelConfig, directory: str, *,
                  dtype: str | None = None, max_shard_bytes: int = 4 * 2**30,
                  tokenizer_dir: str | None = None) -> None:
  """Writes `params` as a Hugging Face checkpoint directory (config.json + safetensors).

  The directory appears atomically: everything is written into a temporary sibling which is
  then renamed, so a crash never leaves a half-written export under `directory`. A gs://
  `directory` is written locally and uploaded with config.json last: a crash leaves no
  config.json, which every reader (and `from_pretrained`) treats as no checkpoint. Tensors are
  streamed one at a time; files are split at `max_shard_bytes` with an index. On multi-host
  runs every process must call this (the gather is collective); only process 0 writes.
  """
  out_dtype = np.dtype(jax.numpy.dtype(dtype or cfg.param_dtype))
  entries: list[tuple[str, schema.Leaf, int | None]] = []
  for t in schema.leaves(cfg):
    if tuple(_get(params, t.path).shape) != t.shape(cfg):
      raise ValueError(f"{'/'.join(t.path)} has shape {tuple(_get(params, t.path).shape)}; "
                       f"the config gives {t.shape(cfg)}")
    if t.stacked:
      entries += [(t.hf_name(i), t, i) for i in range(cfg.num_layers)]
    else:
      entries.append((t.hf_name(), t, None))

  shapes = {name: (t.hf_shape(cfg), out_dtype) for name, t, _ in entries}
  # Group into shard files by size, keeping the natural order.
  groups: list[list[str]] = [[]]
  size = 0
  for name, _, _ in entries:
    nbytes = int(np.prod(shapes[name][0])) * out_dtype.itemsize
    if groups[-1] and size + nbytes > max_shard_bytes:
      groups.append([])
      size = 0
    groups[-1].append(name)
    size += nbytes
  by_name = {name: (t, i) for name, t, i in entries}
  host_cache: dict = {}

  def produce(names) -> Iterator[tuple[str, np.ndarray]]:
    for name in names:
      t, i = by_name[name]
      if t.path not in host_cache:  # one gather per leaf (all layers), dropped when done
        host_cache.clear()
        host_cache[t.path] = _host_value(_get(params, t.path))
      arr = host_cache[t.path]
      arr = arr[i] if i is not None else arr
      arr = arr.T if t.transpose else arr
      yield name, arr.astype(out_dtype)

  writer = jax.process_index() == 0
  remote = fileio.is_remote(directory)
  # Written into a temporary directory next to the target and renamed into place; for gs://,
  # written locally and uploaded with config.json last (readers take it as "complete").
  parent = tempfile.gettempdir() if remote else os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".export-", dir=parent) if writer else None
  try:
    files = ([SINGLE_FILE] if len(groups) == 1 else
             [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))])
    for fname, names in zip(files, groups):
      gen = produce(names)
      if writer:
        write_safetensors(os.path.join(tmp, fname), gen, {n: shapes[n] for n in names})
      else:
        for _ in gen:  # non-writers still take part in every collective gather
          pass
    if not writer:
      return
    if len(groups) > 1:
      total = sum(int(np.prod(s)) * out_dtype.itemsize for s, _ in shapes.values())
      index = {"metadata": {"total_size": total},
               "weight_map": {n: f for f, names in zip(files, groups) for n in names}}
      with open(os.path.join(tmp, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2)
    hf_cfg = cfg.to_hf_dict()
    hf_cfg["torch_dtype"] = str(np.dtype(out_dtype).name)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_cfg, f, indent=2)
    if tokenizer_dir is not None:
      for fname in os.listdir(tokenizer_dir):
        # chat_template.jinja: transformers >= 4.43 saves the template there, not in
        # tokenizer_config.json; without it an exported model renders prompts template-less.
        if fname.startswith(("tokenizer", "special_tokens_map", "vocab.", "merges.",
                             "generation_config", "chat_template", "added_tokens")):
          shutil.copy2(os.path.join(tokenizer_dir, fname), tmp)
    if remote:
      fileio.upload_dir(tmp, directory, last=("config.json",))
      return  # `finally` removes the local copy
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix=".old-", dir=parent)
      os.replace(directory, os.path.join(old, "x"))
      os.replace(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, directory)
    tmp = None
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
