"""The host rollout loop: compiled sampler + sandbox + tokenizer -> trajectories.

    engine = RolloutEngine(model_cfg, tokenizer, RolloutConfig(...), executor=sandbox)
    trajectories = engine.run(params, requests)

Continuous batching: the device holds `batch_size` rows. A row whose model opened an output
fence pauses; its code cell goes to the sandbox at once and runs while the other rows keep
decoding; when the result is back it is tokenised and spliced into that row's live KV cache
(`extend`) and the row resumes. Finished rows are refilled from the queue of waiting prompts.
`barrier=True` gives the classic scheme for comparison: fixed batches, every row waits until
all cells of the batch have run.

Token-in/token-out: sampled ids are never decoded and re-encoded; the host decodes them only
to confirm a stop and read the code, and tokenises only the text it appends.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aci_jax.model import ModelConfig
from aci_jax.rollout.trajectory import Cell, Trajectory
from aci_jax.sampling import sampler as S
from aci_jax.sampling.stops import build_matcher, token_texts

FENCE = "```output"
_CODE_RE = re.compile(r"```python\s*\n(.*?)```\s*$", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  batch_size: int = 8  # rows on the device
  max_prompt_tokens: int = 512  # prompt + forced prefix
  max_new_tokens: int = 1024  # response tokens, tool output included
  max_tool_calls: int = 4
  decode_steps: int = 64  # decode steps per device call before the host looks again
  sampling: S.SamplingParams = S.SamplingParams()
  seed: int = 0
  stop_strings: tuple[str, ...] = ()  # user stop strings (end the response)
  # Banned where a request asks (forced reasoning mode): no code cell can open and no output
  # fence can be requested, in any tokenisation.
  ban_strings: tuple[str, ...] = ("```python", FENCE)
  limit_message: str = "Reached the maximum number of code executions; no more code is run."
  no_code_message: str = "Error: no ```python code block precedes this output block."
  barrier: bool = False
  # "extend": splice tool output into the live KV cache. "reprefill": forget the row's cache
  # and re-run prompt + response after every call (what engines without per-row extend do);
  # kept as the baseline for benchmarks, same trajectories.
  resume_mode: str = "extend"
  refill_rows: int = 0  # continuous batching: refill when this many rows are free; 0 = B / 4
  min_chunk: int = 16  # extend chunks are padded to powers of two from here (few compiles)

  @property
  def capacity(self) -> int:
    return self.max_prompt_tokens + self.max_new_tokens


@dataclasses.dataclass
class Request:
  prompt_ids: list[int]
  prompt_index: int
  sample_index: int = 0
  mode: str = "native"  # native | code | cot
  prefix_ids: list[int] = dataclasses.field(default_factory=list)  # forced response prefix
  ban: bool = False  # apply ban_strings (force pure reasoning)
  meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Row:
  req: Request
  cells: list = dataclasses.field(default_factory=list)
  future: Any = None  # Future[CellResult] while a cell runs
  code: str = ""
  pending_text: str | None = None  # env text ready to splice


@dataclasses.dataclass
class RolloutStats:
  wall_s: float = 0.0
  device_idle_s: float = 0.0  # no compiled call in flight
  decode_calls: int = 0
  decode_steps: int = 0
  extend_calls: int = 0
  cells: int = 0
  tokens: int = 0

  @property
  def idle_fraction(self) -> float:
    return self.device_idle_s / self.wall_s if self.wall_s else 0.0


def _bucket(n: int, lo: int) -> int:
  b = lo
  while b < n:
    b *= 2
  return b


class RolloutEngine:
  """Owns the compiled sampler's tables and runs the host loop (see module docstring)."""

  def __init__(self, model_cfg: ModelConfig, tokenizer, cfg: RolloutConfig, executor=None,
               mesh=None):
    self.model_cfg, self.tok, self.cfg, self.executor = model_cfg, tokenizer, cfg, executor
    self.mesh = mesh
    texts = token_texts(tokenizer.hf)
    if len(texts) < model_cfg.vocab_size:  # embedding rows past the tokenizer: never a match
      texts += [""] * (model_cfg.vocab_size - len(texts))
    texts = texts[:model_cfg.vocab_size]
    stops = (FENCE,) + tuple(cfg.stop_strings)
    sm = build_matcher(stops, texts)
    bm = build_matcher(cfg.ban_strings or ("\x00never\x00",), texts)
    self.stop_matcher, self.ban_matcher = sm, bm
    eos = list(tokenizer.eos_ids) or [-1]
    self.tables = S.Tables(
        stop_next=jnp.asarray(sm.next), stop_hit=jnp.asarray(sm.hit),
        stop_is_tool=jnp.asarray([False, True] + [False] * len(cfg.stop_strings)),
        ban_next=jnp.asarray(bm.next), ban_hit=jnp.asarray(bm.hit),
        eos_ids=jnp.asarray(eos, jnp.int32))
    if mesh is not None:
      from jax.sharding import NamedSharding, PartitionSpec as P
      self.tables = jax.device_put(self.tables, NamedSharding(mesh, P()))
    self.stats = RolloutStats()

  def place_params(self, params):
    """Params for sampling on the engine's mesh: SAMPLING_RULES (replicated over the data axes,
    split over `tensor`). A no-op for arrays already placed that way."""
    if self.mesh is None:
      return params
    from aci_jax.parallel import SAMPLING_RULES, param_shardings
    return jax.device_put(params, param_shardings(params, self.mesh, SAMPLING_RULES))

  # ----------------------------------------------------------------------------- helpers

  def _new_state(self):
    c = self.cfg
    state = S.SamplerState.init(self.model_cfg, c.batch_size, c.capacity, c.max_new_tokens)
    if self.mesh is not None:
      state = jax.device_put(state, S.state_shardings(state, self.mesh))
    return state

  def _chunk(self, seqs: dict[int, list[int]]):
    """{row: ids} -> right-padded (tokens, valid) [B, bucket] numpy arrays."""
    width = _bucket(max(len(s) for s in seqs.values()), self.cfg.min_chunk)
    b = self.cfg.batch_size
    tokens = np.zeros((b, width), np.int32)
    valid = np.zeros((b, width), bool)
    for r, s in seqs.items():
      tokens[r, :len(s)] = s
      valid[r, :len(s)] = True
    return tokens, valid

  def _extend(self, params, state, seqs: dict[int, list[int]], src: int, record: bool,
              resume: set[int]):
    tokens, valid = self._chunk(seqs)
    b = self.cfg.batch_size
    res = np.zeros(b, bool)
    res[list(resume)] = True
    temp = 1.0 if self.cfg.sampling.greedy else self.cfg.sampling.temperature
    self.stats.extend_calls += 1
    return S.extend(self.model_cfg, state, params, self.tables, jnp.asarray(tokens),
                    jnp.asarray(valid), jnp.full((b,), src, jnp.int8), jnp.asarray(res),
                    record=record, temperature=temp)

  def _fill(self, params, state, rows: dict[int, _Row]):
    """Resets the given rows and prefills their prompt (+ forced prefix)."""
    b, c = self.cfg.batch_size, self.cfg
    mask = np.zeros(b, bool)
    keys = np.zeros((b, 2), np.uint32)
    ban = np.zeros(b, bool)
    for r, row in rows.items():
      req = row.req
      if len(req.prompt_ids) + len(req.prefix_ids) > c.max_prompt_tokens:
        raise ValueError(f"prompt {req.prompt_index} has {len(req.prompt_ids)} + "
                         f"{len(req.prefix_ids)} tokens > max_prompt_tokens={c.max_prompt_tokens}")
      if not req.prompt_ids:
        raise ValueError(f"prompt {req.prompt_index} is empty")
      mask[r] = True
      keys[r] = np.asarray(S.row_key(c.seed, req.prompt_index, req.sample_index))
      ban[r] = req.ban
    state = S.reset_rows(state, jnp.asarray(mask), jnp.asarray(keys),
                         jnp.full((b,), c.max_new_tokens, jnp.int32), jnp.asarray(ban))
    no_prefix = {r for r, row in rows.items() if not row.req.prefix_ids}
    state = self._extend(params, state, {r: row.req.prompt_ids for r, row in rows.items()},
                         S.SRC_SAMPLED, False, no_prefix)
    pre = {r: row.req.prefix_ids for r, row in rows.items() if row.req.prefix_ids}
    if pre:
      state = self._extend(params, state, pre, S.SRC_FORCED, True, set(pre))
    return state

  def _reprefill(self, params, state, ok: dict, rows: dict):
    b = self.cfg.batch_size
    mask = np.zeros(b, bool)
    mask[list(ok)] = True
    n_out = np.asarray(state.n_out)
    toks = np.asarray(state.out_tokens)
    state = S.clear_cache_rows(state, jnp.asarray(mask))
    full = {r: list(rows[r].req.prompt_ids) + [int(t) for t in toks[r, :n_out[r]]] for r in ok}
    return self._extend(params, state, full, S.SRC_SAMPLED, False, set())

  def _env_text(self, response_text: str, output: str) -> str:
    lead = "" if response_text.endswith("\n") else "\n"
    return f"{lead}{output}\n```\n"

  def _finish(self, row: _Row, tokens, logp, src, reason: int) -> Trajectory:
    ids = [int(t) for t in tokens]
    text = self.tok.decode(ids)
    stop = S.REASON_NAMES[reason]
    if self.executor is not None and row.cells:
      self.executor.close_session(self._session(row))
    return Trajectory(
        prompt_index=row.req.prompt_index, sample_index=row.req.sample_index,
        mode=row.req.mode, prompt_ids=list(row.req.prompt_ids), response_ids=ids,
        logp=[float(x) for x in logp], source=[int(s) for s in src], cells=row.cells,
        stop_reason=stop, text=text, meta=dict(row.req.meta))

  @staticmethod
  def _session(row: _Row):
    return (row.req.prompt_index, row.req.sample_index, row.req.mode, id(row))

  # ---------------------------------------------------------------------------- main loop

  def run(self, params, requests: Sequence[Request]) -> list[Trajectory]:
    """Runs every request to completion; returns trajectories in request order."""
    c = self.cfg
    t_start = time.perf_counter()
    params = self.place_params(params)
    queue = collections.deque(enumerate(requests))
    order: dict[int, int] = {}
    results: dict[int, Trajectory] = {}
    rows: dict[int, _Row] = {}
    row_pos: dict[int, int] = {}
    state = self._new_state()
    idle_since = time.perf_counter()
    idle = 0.0

    def busy():  # a compiled call is about to be dispatched
      nonlocal idle_since, idle
      if idle_since is not None:
        idle += time.perf_counter() - idle_since
        idle_since = None

    while queue or rows:
      # 1. Refill empty rows (continuous), or a whole new batch (barrier). A prefill runs the
      # model over every row, so free rows are refilled together: once `refill_rows` of them
      # are free (or the queue is that short), or at once when nothing else is decoding.
      free = [r for r in range(c.batch_size) if r not in rows]
      decoding = any(row.future is None and row.pending_text is None for row in rows.values())
      enough = len(free) >= min(c.refill_rows or max(1, c.batch_size // 4), len(queue))
      if queue and free and (not c.barrier or not rows) and (enough or not decoding or c.barrier):
        new = {}
        for r in free:
          if not queue:
            break
          k, req = queue.popleft()
          new[r] = _Row(req)
          order[id(new[r])] = k
        rows.update(new)
        busy()
        state = self._fill(params, state, new)
      # 2. Splice finished tool outputs.
      ready = {}
      for r, row in rows.items():
        if row.future is not None and row.future.done():
          res = row.future.result()
          row.future = None
          row.cells.append(Cell(row.code, res.output, str(getattr(res.status, "value",
                                                                       res.status)),
                                float(res.seconds)))
          self.stats.cells += 1
          row.pending_text = self._env_text(row.pending_text or "", res.output)
        if row.pending_text is not None and row.future is None:
          ready[r] = row
      waiting = [r for r, row in rows.items() if row.future is not None]
      if ready and (not c.barrier or not waiting):
        ids = {r: self.tok.encode(row.pending_text) for r, row in ready.items()}
        n_out = np.asarray(state.n_out)
        ok = {r: v for r, v in ids.items() if n_out[r] + len(v) <= c.max_new_tokens}
        for r in ready:
          ready[r].pending_text = None
        for r in set(ids) - set(ok):  # no room for the output: the response is truncated
          row_pos[r] = S.REASON_LENGTH
        if ok:
          busy()
          if c.resume_mode == "reprefill":
            state = self._reprefill(params, state, ok, rows)
          state = self._extend(params, state, ok, S.SRC_ENV, True, set(ok))
      # 3. Decode while any row runs.
      status = np.asarray(state.status)
      running = [r for r in rows if status[r] == S.RUNNING]
      if running and (not c.barrier or not waiting):
        busy()
        state, steps = S.decode(self.model_cfg, c.sampling, state, params, self.tables,
                                c.decode_steps, exit_on_pause=not c.barrier)
        self.stats.decode_calls += 1
        status = np.asarray(state.status)  # waits for the decode; cells keep running meanwhile
        idle_since = time.perf_counter()
        self.stats.decode_steps += int(steps)
      elif waiting and not ready:
        if idle_since is None:
          idle_since = time.perf_counter()
        concurrent.futures.wait([rows[r].future for r in waiting],
                                return_when=(concurrent.futures.ALL_COMPLETED if c.barrier
                                             else concurrent.futures.FIRST_COMPLETED))
      # 4. Act on rows that paused or finished.
      paused = [r for r in rows if status[r] == S.PAUSED and rows[r].future is None
                and rows[r].pending_text is None]
      done = [r for r in rows if status[r] == S.DONE or r in row_pos]
      if not paused and not done:
        continue
      need = sorted(set(paused) | set(done))
      n_out = np.asarray(state.n_out)
      reason = np.asarray(state.reason)
      toks, logps, srcs = jax.device_get((state.out_tokens[np.asarray(need)],
                                          state.out_logp[np.asarray(need)],
                                          state.out_src[np.asarray(need)]))
      for i, r in enumerate(need):
        row, n = rows[r], int(n_out[r])
        if r in done:
          why = row_pos.pop(r, int(reason[r]))
          if why == S.REASON_STOP and not any(
              x in self.tok.decode([int(t) for t in toks[i, :n]]) for x in c.stop_strings):
            row.pending_text = ""  # a device stop the text does not confirm: resume the row
            continue
          traj = self._finish(row, toks[i, :n], logps[i, :n], srcs[i, :n], why)
          results[order.pop(id(row))] = traj
          self.stats.tokens += n
          del rows[r]
          continue
        text = self.tok.decode([int(t) for t in toks[i, :n]])
        fence_at = text.rfind(FENCE)
        if fence_at < 0:  # device saw a fence the text does not have: resume the row
          row.pending_text = ""
          continue
        calls = sum(1 for cell in row.cells if cell.status != "limit")
        if calls >= c.max_tool_calls:
          row.cells.append(Cell("", c.limit_message, "limit", 0.0))
          row.pending_text = self._env_text(text, c.limit_message)
          continue
        m = _CODE_RE.search(text[:fence_at])
        if m is None or self.executor is None:
          row.cells.append(Cell("", c.no_code_message, "no_code", 0.0))
          row.pending_text = self._env_text(text, c.no_code_message)
          continue
        row.code = m.group(1)
        row.pending_text = text
        row.future = self.executor.submit(self._session(row), row.code)
    self.stats.wall_s += time.perf_counter() - t_start
    if idle_since is not None:
      idle += time.perf_counter() - idle_since
    self.stats.device_idle_s += idle
    return [results[k] for k in range(len(requests))]
