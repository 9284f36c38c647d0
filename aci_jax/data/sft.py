"""SFT warm-up data: JSONL demonstrations -> token ids with a loss mask -> fixed-shape batches.

A demonstration is one JSON object per line, {"prompt": str, "response": str}. The response is
tool-integrated text in the format the rollout produces (`aci_jax.tool_format`, by default
```python cells answered by ```output blocks).

Who writes what (the same split as `aci_jax.rollout`): the model writes everything up to and
including the format's pause string ("```output" -- its stop marker, so it must be trained on)
and the environment appends the rest of the block (`ToolFormat.env_segments`). Environment
text gets loss mask 0, as do the prompt tokens; the model's text and a final EOS get 1.

Segments are tokenised one at a time and concatenated, never as one string: that is exactly the
token sequence the sampler produces (the model's ids, then the tokenised tool output appended),
so SFT trains on the tokenisation the policy will see at rollout time.

An optional "forced_prefix" (a string the response starts with) is context, not a target: it
is tokenised on its own and gets loss mask 0, as the E-step's forced code prefix is appended to
the prompt by the environment. A demo with the tool format's code prefix as its forced prefix
teaches writing a cell *once code is chosen* without teaching the choice (the first token of
the response, the decision, is never a target); see `toy.make_demonstrations(forced_fraction)`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from aci_jax import fileio, tool_format


DataError = fileio.DataError  # a malformed data file; the message names the file and line


@dataclasses.dataclass(frozen=True)
class Example:
  tokens: np.ndarray  # [n] int32
  loss_mask: np.ndarray  # [n] float32, 1 on model-written tokens
  truncated: bool = False


def load_demonstrations(path: str, fmt: tool_format.ToolFormat | None = None) -> list[dict]:
  """Reads and checks a JSONL file of {"prompt": str, "response": str} records (responses in
  the tool format `fmt`, default: the default format)."""
  out = []
  for lineno, rec in fileio.iter_jsonl(path):
    for key in ("prompt", "response"):
      if not isinstance(rec.get(key), str):
        raise DataError(f"{path}:{lineno}: field {key!r} must be a string")
    if not rec["response"]:
      raise DataError(f"{path}:{lineno}: empty response")
    try:
      split_response(rec["response"], fmt)
      _check_forced_prefix(rec, fmt)
    except DataError as e:
      raise DataError(f"{path}:{lineno}: {e}") from None
    out.append(rec)
  if not out:
    raise DataError(f"{path}: no demonstrations")
  return out


def _check_forced_prefix(rec: dict, fmt: tool_format.ToolFormat | None = None) -> str:
  """The record's "forced_prefix" ("" when absent), checked as `encode_demonstration` uses it,
  so that a bad one is reported with its file and line before any tokenisation."""
  prefix = rec.get("forced_prefix", "")
  if not isinstance(prefix, str):
    raise DataError("field 'forced_prefix' must be a string")
  _after_forced_prefix(split_response(rec["response"], fmt), prefix)
  return prefix


def _after_forced_prefix(segments: list[tuple[str, bool]], prefix: str
                         ) -> list[tuple[str, bool]]:
  """`segments` less `prefix`, which must start the model's first segment and leave something
  after it to learn."""
  if not prefix:
    return segments
  text, by_model = segments[0]
  if not (by_model and text.startswith(prefix)) or (text == prefix and len(segments) == 1):
    raise DataError(f"the response must start with its forced_prefix {prefix!r} (within "
                    "the model's first segment) and go on after it")
  return [(text[len(prefix):], True)] + segments[1:]


def split_response(response: str, fmt: tool_format.ToolFormat | None = None
                   ) -> list[tuple[str, bool]]:
  """[(text, written_by_model)] segments of a response in `fmt` (default: the default format)."""
  return (fmt or tool_format.get()).env_segments(response)


def encode_demonstration(tokenizer, prompt: str, response: str, *, max_len: int,
                         system: str | None = None, add_eos: bool = True,
                         fmt: tool_format.ToolFormat | None = None,
                         forced_prefix: str = "") -> Example:
  """Token ids and loss mask for one demonstration (prompt masked, tool output masked, and
  `forced_prefix`, the start of the response given as context, masked)."""
  messages = ([{"role": "system", "content": system}] if system else []) + [
      {"role": "user", "content": prompt}]
  ids = list(tokenizer.chat_ids(messages, add_generation_prompt=True))
  segments = _after_forced_prefix(split_response(response, fmt), forced_prefix)
  if forced_prefix:
    # Tokenised on its own, as the rollout appends the encoded prefix to the prompt ids.
    ids += tokenizer.encode(forced_prefix)
  prompt_len = len(ids)
  mask = [0.0] * len(ids)
  for text, by_model in segments:
    if not text:
      continue
    seg = tokenizer.encode(text)
    ids += seg
    mask += [1.0 if by_model else 0.0] * len(seg)
  eos = add_eos and bool(tokenizer.eos_ids)
  if eos:
    ids.append(tokenizer.eos_ids[0])
    mask.append(1.0)
  truncated = len(ids) > max_len
  ids, mask = ids[:max_len], mask[:max_len]
  if truncated and eos and prompt_len < max_len - 1:
    # A cut demonstration still ends its turn: its last position becomes the end token (trained),
    # so the policy does not learn that a response runs on to the context limit. (A cut that
    # leaves no response token keeps no end token either: nothing of the answer to end.)
    ids[-1], mask[-1] = tokenizer.eos_ids[0], 1.0
  return Example(np.asarray(ids, np.int32), np.asarray(mask, np.float32), truncated)


class SFTData:
  """Deterministic, resumable batches of demonstrations.

  Batch `i` of the run covers examples `cursor .. cursor + batch_size` of an endless stream that
  visits the data in a fresh permutation each epoch (permutation of epoch e seeded by
  (seed, e)). The cursor (an int) is the whole iterator state, so it checkpoints trivially and a
  resumed run sees exactly the batches an uninterrupted run would.

  Packing (`pack_len` > 0): the same `batch_size` examples are packed first-fit-decreasing into
  rows of `pack_len` tokens instead of one padded row each, with `segment_ids` (1, 2, ... per
  row, 0 on padding) so attention stays within an example and positions restarting at 0 in each.
  The trained tokens, and hence a token-mean loss and its gradient, are those of the unpacked
  batch; only the padding goes. The row count varies with the examples' lengths and is rounded
  up to a multiple of `row_multiple` (few distinct shapes, an even split over devices and
  micro-batches). Short examples (the toy's ~60 of 96 tokens) make this ~1.4x fewer tokens.
  """

  def __init__(self, examples: Sequence[Example], *, batch_size: int, seq_len: int,
               pad_id: int, seed: int = 0, shuffle: bool = True, pack_len: int = 0,
               row_multiple: int = 1):
    if not examples:
      raise DataError("no examples")
    if pack_len and pack_len < seq_len:
      raise ValueError(f"pack_len ({pack_len}) must be 0 or >= seq_len ({seq_len})")
    if row_multiple < 1:
      raise ValueError(f"row_multiple must be >= 1, got {row_multiple}")
    self.examples = list(examples)
    self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
    self.seed, self.shuffle = seed, shuffle
    self.pack_len, self.row_multiple = pack_len, row_multiple
    self._perm_cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self.examples)

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perm_cache:
      n = len(self.examples)
      perm = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
              else np.arange(n))
      self._perm_cache = {epoch: perm}
    return self._perm_cache[epoch]

  def indices(self, cursor: int, count: int) -> list[int]:
    n = len(self.examples)
    return [int(self._perm((cursor + j) // n)[(cursor + j) % n]) for j in range(count)]

  def batch(self, cursor: int, *, process_index: int = 0, process_count: int = 1
            ) -> tuple[dict[str, np.ndarray], int]:
    """(this process's rows of the global batch at `cursor`, the next cursor).

    Arrays: tokens, positions [rows, T] int32; valid [rows, T] bool; loss_mask [rows, T] float32.
    Right-padded with `pad_id` (valid False, mask 0). Packed (`pack_len`): T = pack_len, a
    variable row count, and segment_ids [rows, T] int32 as well.
    """
    b, t = self.batch_size, self.seq_len
    if b % process_count:
      raise ValueError(f"batch_size {b} does not divide over {process_count} processes")
    rows = b // process_count
    if self.pack_len:
      every = self.indices(cursor, b)
      return self._packed([every[p * rows:(p + 1) * rows] for p in range(process_count)],
                          process_index), cursor + b
    idx = self.indices(cursor, b)[process_index * rows:(process_index + 1) * rows]
    tokens = np.full((rows, t), self.pad_id, np.int32)
    mask = np.zeros((rows, t), np.float32)
    valid = np.zeros((rows, t), bool)
    for r, i in enumerate(idx):
      ex = self.examples[i]
      n = min(len(ex.tokens), t)
      tokens[r, :n] = ex.tokens[:n]
      mask[r, :n] = ex.loss_mask[:n]
      valid[r, :n] = True
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (rows, t)).copy()
    return dict(tokens=tokens, positions=positions, valid=valid, loss_mask=mask), cursor + b

  def _pack_rows(self, idx: Sequence[int]) -> list[list[int]]:
    """First-fit decreasing: example indices per row of `pack_len` tokens (deterministic)."""
    order = sorted(range(len(idx)), key=lambda j: (-len(self.examples[idx[j]].tokens), j))
    rows: list[list[int]] = []
    free: list[int] = []
    for j in order:
      n = min(len(self.examples[idx[j]].tokens), self.seq_len)
      for r, room in enumerate(free):
        if n <= room:
          rows[r].append(idx[j])
          free[r] -= n
          break
      else:
        rows.append([idx[j]])
        free.append(self.pack_len - n)
    return rows

  def _packed(self, per_process: Sequence[Sequence[int]], process_index: int) -> dict:
    """This process's packed rows; every process gets the same (largest) row count."""
    packs = [self._pack_rows(idx) for idx in per_process]
    m = self.row_multiple
    n_rows = -(-max(len(p) for p in packs) // m) * m
    t = self.pack_len
    tokens = np.full((n_rows, t), self.pad_id, np.int32)
    positions = np.zeros((n_rows, t), np.int32)
    segments = np.zeros((n_rows, t), np.int32)
    mask = np.zeros((n_rows, t), np.float32)
    for r, members in enumerate(packs[process_index]):
      at = 0
      for s, i in enumerate(members):
        ex = self.examples[i]
        n = min(len(ex.tokens), self.seq_len)
        tokens[r, at:at + n] = ex.tokens[:n]
        positions[r, at:at + n] = np.arange(n)
        segments[r, at:at + n] = s + 1
        mask[r, at:at + n] = ex.loss_mask[:n]
        mask[r, at] = 0.0  # never a target across the boundary (it is a prompt token anyway)
        at += n
    return dict(tokens=tokens, positions=positions, valid=segments > 0, loss_mask=mask,
                segment_ids=segments)


def build_sft_data(source: str | Sequence[dict], tokenizer, *, batch_size: int, seq_len: int,
                   seed: int = 0, system: str | None = None, pack_len: int = 0,
                   row_multiple: int = 1, fmt: tool_format.ToolFormat | None = None
                   ) -> tuple[SFTData, dict]:
  """Loads (from a JSONL path) or takes (a list of records), checks and tokenises
  demonstrations. Returns (data, stats)."""
  if isinstance(source, str):
    recs, path = load_demonstrations(source, fmt), source
  else:
    recs, path = list(source), "<records>"
    for i, r in enumerate(recs):
      if not (isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str)):
        raise DataError(f"record {i}: needs string fields 'prompt' and 'response'")
      try:
        split_response(r["response"], fmt)
        _check_forced_prefix(r, fmt)
      except DataError as e:
        raise DataError(f"record {i}: {e}") from None
  examples = [encode_demonstration(tokenizer, r["prompt"], r["response"], max_len=seq_len,
                                   system=system, fmt=fmt,
                                   forced_prefix=r.get("forced_prefix", ""))
              for r in recs]
  examples = [e for e in examples if e.loss_mask.sum() > 0]  # nothing to learn otherwise
  if not examples:
    raise DataError(f"{path}: every demonstration is empty after truncation to {seq_len} tokens")
  stats = {
      "examples": len(examples),
      "truncated": sum(e.truncated for e in examples),
      "tokens": int(sum(len(e.tokens) for e in examples)),
      "trained_tokens": int(sum(e.loss_mask.sum() for e in examples)),
  }
  return SFTData(examples, batch_size=batch_size, seq_len=seq_len, pad_id=tokenizer.pad_id,
                 seed=seed, pack_len=pack_len, row_multiple=row_multiple), stats


def write_jsonl(path: str, records: Iterable[dict]) -> str:
  """Writes records atomically (temp file + rename)."""
  return fileio.write_jsonl(path, records)
