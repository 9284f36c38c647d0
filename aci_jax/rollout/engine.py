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
import logging
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aci_jax.model import ModelConfig
from aci_jax.parallel import multihost
from aci_jax.rollout.trajectory import Cell, Trajectory
from aci_jax.sampling import sampler as S
from aci_jax.sampling.stops import ban_table, build_matcher, token_texts

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
  # Banned where a request asks (forced reasoning mode): a banned string can neither complete
  # nor begin, in any tokenisation (stops.ban_table). "```" covers every fence: a code cell of
  # any language, the output fence, a closing fence.
  ban_strings: tuple[str, ...] = ("```",)
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
  handed: bool = False  # paused, its tokens fetched; host work (read code, submit) pending


@dataclasses.dataclass
class RolloutStats:
  wall_s: float = 0.0
  device_idle_s: float = 0.0  # no compiled call in flight
  cell_wait_s: float = 0.0  # of which: blocked because every live row waits for a cell
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
    if jax.default_backend() == "cpu" and model_cfg.dtype == "bfloat16":
      logging.getLogger(__name__).warning(
          "decoding in bfloat16 on a CPU: 1.6-7.8x slower than float32 on x86 CPUs without "
          "bf16 matmul units (docs/benchmarks.md); use --config.model.dtype=float32 here")
    self.mesh = mesh
    texts = token_texts(tokenizer.hf)
    if len(texts) < model_cfg.vocab_size:  # embedding rows past the tokenizer: never a match
      texts += [""] * (model_cfg.vocab_size - len(texts))
    texts = texts[:model_cfg.vocab_size]
    stops = (FENCE,) + tuple(cfg.stop_strings)
    sm = build_matcher(stops, texts)
    bm = build_matcher(cfg.ban_strings or ("\x00never\x00",), texts)
    self.stop_matcher, self.ban_matcher = sm, bm
    # Stop on the tokenizer's end tokens (EOS, template end-of-turn) and the model config's.
    eos = list(dict.fromkeys([*tokenizer.eos_ids, *model_cfg.eos_token_ids])) or [-1]
    self.tables = S.Tables(
        stop_next=jnp.asarray(sm.next), stop_hit=jnp.asarray(sm.hit),
        stop_is_tool=jnp.asarray([False, True] + [False] * len(cfg.stop_strings)),
        ban_next=jnp.asarray(bm.next), ban_hit=jnp.asarray(ban_table(bm), jnp.int32),
        eos_ids=jnp.asarray(eos, jnp.int32))
    self._state_shardings = None
    self._rows = list(range(cfg.batch_size))  # the rows this process drives
    if mesh is not None:
      from jax.sharding import NamedSharding, PartitionSpec as P
      rep = NamedSharding(mesh, P())
      self.tables = jax.tree_util.tree_map(
          lambda a: multihost.global_from_host(np.asarray(a), rep), self.tables)
      abstract = jax.eval_shape(self._init_state)
      self._state_shardings = S.state_shardings(abstract, mesh)
      self._rows = multihost.addressable_rows(self._state_shardings.status, (cfg.batch_size,))
    self.stats = RolloutStats()
    self.show_progress = True  # tqdm over rows in long runs (run_local)
    self._bar, self._bar_t0 = None, 0.0

  def place_params(self, params):
    """Params for sampling: cast to the compute dtype when it is narrower than the stored
    weights, and on the engine's mesh placed by SAMPLING_RULES (replicated over data; heads, MLP
    and vocabulary over tensor and then fsdp).

    The cast changes no number: every layer casts its weights to the compute dtype before use
    (dense kernels and biases, norm scales, embeddings, the head), so a bf16 copy of float32
    master weights gives bit-identical logits while decode, which is bound by reading the
    weights, reads half the bytes and each data-parallel replica holds half the memory.
    """
    cast = jnp.dtype(self.model_cfg.compute_dtype)

    def wide(dtype) -> bool:
      return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits > jnp.finfo(cast).bits

    narrow = lambda x: x.astype(cast) if wide(x.dtype) else x
    needs_cast = any(wide(x.dtype) for x in jax.tree_util.tree_leaves(params))
    if self.mesh is None:
      return jax.jit(lambda p: jax.tree_util.tree_map(narrow, p))(params) if needs_cast else params
    from aci_jax.parallel import SAMPLING_RULES, param_shardings
    shardings = param_shardings(params, self.mesh, SAMPLING_RULES)
    if jax.process_count() == 1 and not needs_cast:
      return jax.device_put(params, shardings)
    # A jitted copy casts and reshards in one pass (across processes resharding is a
    # collective, which a jitted identity does).
    return jax.jit(lambda p: jax.tree_util.tree_map(narrow, p), out_shardings=shardings)(params)

  # ----------------------------------------------------------------------------- helpers

  def _init_state(self):
    c = self.cfg
    return S.SamplerState.init(self.model_cfg, c.batch_size, c.capacity, c.max_new_tokens)

  def _new_state(self):
    if self.mesh is None:
      return self._init_state()
    # Built in place on every device (never materialised on one device first).
    return jax.jit(self._init_state, out_shardings=self._state_shardings)()

  def _put(self, x: np.ndarray):
    """A per-row host array [B, ...] as a device input. Across processes each fills only its
    own rows, so the global array is assembled from every process's part."""
    if self.mesh is None or jax.process_count() == 1:
      return jnp.asarray(x)
    from jax.sharding import NamedSharding, PartitionSpec as P
    spec = P(("data", "fsdp"), *([None] * (x.ndim - 1)))
    return multihost.global_from_host(x, NamedSharding(self.mesh, spec))

  @staticmethod
  def _host(x) -> np.ndarray:
    """A state array on the host; across processes only this process's rows are filled."""
    # Wait in short sleeps, not inside XLA: a thread blocked in a C++ wait ignores Ctrl-C for a
    # whole decode call (minutes on a CPU); Python handles SIGINT between the sleeps.
    is_ready = getattr(x, "is_ready", None)
    while is_ready is not None and not is_ready():
      time.sleep(0.002)
    return multihost.host_local(x)

  def _chunk(self, seqs: dict[int, list[int]], width: int):
    """{row: ids} -> right-padded (tokens, valid) [B, width] numpy arrays."""
    b = self.cfg.batch_size
    tokens = np.zeros((b, width), np.int32)
    valid = np.zeros((b, width), bool)
    for r, s in seqs.items():
      tokens[r, :len(s)] = s
      valid[r, :len(s)] = True
    return tokens, valid

  def _width(self, seqs: dict[int, list[int]]) -> int:
    """This process's bucketed chunk width for `seqs` (0: nothing to send)."""
    return _bucket(max(len(s) for s in seqs.values()), self.cfg.min_chunk) if seqs else 0

  def _extend(self, params, state, seqs: dict[int, list[int]], src: int, record: bool,
              resume: set[int], width: int):
    tokens, valid = self._chunk(seqs, width)
    b = self.cfg.batch_size
    res = np.zeros(b, bool)
    res[list(resume)] = True
    self.stats.extend_calls += 1
    return S.extend(self.model_cfg, state, params, self.tables, self._put(tokens),
                    self._put(valid), self._put(np.full((b,), src, np.int8)), self._put(res),
                    record=record)

  def _check(self, req: Request) -> None:
    c = self.cfg
    if len(req.prompt_ids) + len(req.prefix_ids) > c.max_prompt_tokens:
      raise ValueError(f"prompt {req.prompt_index} has {len(req.prompt_ids)} + "
                       f"{len(req.prefix_ids)} tokens > max_prompt_tokens={c.max_prompt_tokens}")
    if not req.prompt_ids:
      raise ValueError(f"prompt {req.prompt_index} is empty")

  def _fill(self, params, state, rows: dict[int, _Row], widths: tuple[int, int]):
    """Resets the given rows and prefills their prompt (+ forced prefix). `widths` are the
    agreed (prompt, prefix) chunk widths; every process calls this with the same ones."""
    b, c = self.cfg.batch_size, self.cfg
    mask = np.zeros(b, bool)
    keys = np.zeros((b, 2), np.uint32)
    ban = np.zeros(b, bool)
    for r, row in rows.items():
      mask[r] = True
      ban[r] = row.req.ban
    if rows:  # one dispatch for all new rows' keys
      rs = list(rows)
      keys[rs] = np.asarray(S.row_keys(
          c.seed, np.asarray([rows[r].req.prompt_index for r in rs], np.uint32),
          np.asarray([rows[r].req.sample_index for r in rs], np.uint32)))
    state = S.reset_rows(state, self._put(mask), self._put(keys),
                         self._put(np.full((b,), c.max_new_tokens, np.int32)), self._put(ban))
    no_prefix = {r for r, row in rows.items() if not row.req.prefix_ids}
    state = self._extend(params, state, {r: row.req.prompt_ids for r, row in rows.items()},
                         S.SRC_SAMPLED, False, no_prefix, widths[0])
    if widths[1]:
      pre = {r: row.req.prefix_ids for r, row in rows.items() if row.req.prefix_ids}
      state = self._extend(params, state, pre, S.SRC_FORCED, True, set(pre), widths[1])
    return state

  def _reprefill_seqs(self, state, ok: dict, rows: dict) -> dict[int, list[int]]:
    n_out = self._host(state.n_out)
    toks = self._host(state.out_tokens)
    return {r: list(rows[r].req.prompt_ids) + [int(t) for t in toks[r, :n_out[r]]] for r in ok}

  def _reprefill(self, params, state, full: dict, width: int):
    b = self.cfg.batch_size
    mask = np.zeros(b, bool)
    mask[list(full)] = True
    state = S.clear_cache_rows(state, self._put(mask))
    return self._extend(params, state, full, S.SRC_SAMPLED, False, set(), width)

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

  def _host_work(self, item: tuple, results: dict, order: dict) -> None:
    """Host side of a row handed off by the loop: a finished row becomes its trajectory; a
    paused row's code is read from its text and sent to the sandbox (or it gets the limit /
    no-code message, or resumes if the text has no fence after all)."""
    c = self.cfg
    if item[0] == "done":
      _, row, toks, logps, srcs, why = item
      results[order.pop(id(row))] = self._finish(row, toks, logps, srcs, why)
      self.stats.tokens += len(toks)
      if self._bar is not None:  # rows done, cells run, tokens/s (evaluation and E-step)
        rate = self.stats.tokens / max(time.perf_counter() - self._bar_t0, 1e-9)
        self._bar.update(1)
        self._bar.set_postfix_str(f"cells {self.stats.cells}, {rate:.0f} tok/s", refresh=False)
      return
    _, row, toks = item
    row.handed = False
    text = self.tok.decode([int(t) for t in toks])
    fence_at = text.rfind(FENCE)
    if fence_at < 0:  # the device saw a fence the text does not have: resume the row
      row.pending_text = ""
      return
    calls = sum(1 for cell in row.cells if cell.status != "limit")
    if calls >= c.max_tool_calls:
      row.cells.append(Cell("", c.limit_message, "limit", 0.0))
      row.pending_text = self._env_text(text, c.limit_message)
      return
    m = _CODE_RE.search(text[:fence_at])
    if m is None or self.executor is None:
      row.cells.append(Cell("", c.no_code_message, "no_code", 0.0))
      row.pending_text = self._env_text(text, c.no_code_message)
      return
    row.code = m.group(1)
    row.pending_text = text
    row.future = self.executor.submit(self._session(row), row.code)

  # ---------------------------------------------------------------------------- main loop

  def run(self, params, requests: Sequence[Request]) -> list[Trajectory]:
    """Runs every request to completion; returns trajectories in request order.

    Across processes every process passes the same `requests`; each runs the prompts it owns
    (`multihost.owner_of` over prompt indices, so all samples of a prompt stay on one host) on
    its own rows and sandbox, and the trajectories are all-gathered. Loops that want to keep
    rollouts on their host (the E-step) call `run_local` instead.
    """
    if jax.process_count() == 1:
      return self.run_local(params, requests)
    for req in requests:
      self._check(req)
    owner = multihost.owner_of([r.prompt_index for r in requests])
    me = jax.process_index()
    mine = [i for i, r in enumerate(requests) if owner[r.prompt_index] == me]
    local = self.run_local(params, [requests[i] for i in mine])
    out: list[Trajectory | None] = [None] * len(requests)
    for part in multihost.allgather_objects(list(zip(mine, local))):
      for i, t in part:
        out[i] = t
    return out

  def run_local(self, params, requests: Sequence[Request]) -> list[Trajectory]:
    """Runs this process's `requests` on its rows; returns their trajectories in order.

    A collective across processes: every process calls it (with its own requests, possibly
    none) and the loop issues the same compiled calls everywhere. Before each call the
    processes agree, with one small all-gather, on what to run and at which chunk width;
    everything else (sandbox calls, stop confirmation, splicing text) stays on the host that
    owns the row.
    """
    c = self.cfg
    for req in requests:
      self._check(req)
    multi = jax.process_count() > 1
    t_start = time.perf_counter()
    # A progress bar for runs longer than a couple of batches (minutes on a CPU), process 0.
    self._bar, self._bar_t0 = None, t_start
    if self.show_progress and len(requests) > 2 * c.batch_size and jax.process_index() == 0:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=len(requests), desc="rollouts", unit="row", mininterval=5.0)
    params = self.place_params(params)
    queue = collections.deque(enumerate(requests))
    order: dict[int, int] = {}
    results: dict[int, Trajectory] = {}
    rows: dict[int, _Row] = {}
    row_pos: dict[int, int] = {}
    state = self._new_state()
    mine = self._rows
    refill = max(1, (c.refill_rows or max(1, c.batch_size // 4)) * len(mine) // c.batch_size)
    idle_since = time.perf_counter()
    idle = 0.0
    status = np.full(c.batch_size, S.EMPTY, np.int32)
    handoff: list[tuple] = []  # rows paused/finished last round, for host work this round

    def busy():  # a compiled call is about to be dispatched
      nonlocal idle_since, idle
      if idle_since is not None:
        idle += time.perf_counter() - idle_since
        idle_since = None

    while True:
      # 1. Refill empty rows (continuous), or a whole new batch (barrier). A prefill runs the
      # model over every row, so free rows are refilled together: once `refill_rows` of them
      # are free (or the queue is that short), or at once when nothing else is decoding.
      new: dict[int, _Row] = {}
      free = [r for r in mine if r not in rows]
      decoding = any(row.future is None and row.pending_text is None and not row.handed
                     for row in rows.values())
      enough = len(free) >= min(refill, len(queue))
      if queue and free and (not c.barrier or not rows) and (enough or not decoding or c.barrier):
        for r in free:
          if not queue:
            break
          k, req = queue.popleft()
          new[r] = _Row(req)
          order[id(new[r])] = k
        rows.update(new)
      # 2. Collect finished tool outputs to splice.
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
      splice: dict[int, list[int]] = {}
      if ready and (not c.barrier or not waiting):
        ids = {r: self.tok.encode(row.pending_text) for r, row in ready.items()}
        n_out = self._host(state.n_out)
        splice = {r: v for r, v in ids.items() if n_out[r] + len(v) <= c.max_new_tokens}
        for r in ready:
          ready[r].pending_text = None
        for r in set(ids) - set(splice):  # no room for the output: the response is truncated
          row_pos[r] = S.REASON_LENGTH
      full = (self._reprefill_seqs(state, splice, rows)
              if splice and c.resume_mode == "reprefill" else {})
      # Agree on the compiled calls of this round (widths are maxima over processes).
      widths = [self._width({r: row.req.prompt_ids for r, row in new.items()}),
                self._width({r: row.req.prefix_ids for r, row in new.items()
                             if row.req.prefix_ids}),
                self._width(full), self._width(splice), int(bool(queue or rows or handoff))]
      agreed = multihost.allgather_ints(widths).max(axis=0) if multi else widths
      if not agreed[4]:
        break
      if agreed[0]:
        busy()
        state = self._fill(params, state, new, (int(agreed[0]), int(agreed[1])))
      if agreed[3]:
        busy()
        if agreed[2]:
          state = self._reprefill(params, state, full, int(agreed[2]))
        state = self._extend(params, state, splice, S.SRC_ENV, True, set(splice),
                             int(agreed[3]))
      # 3. Decode while any row runs (any row of any process). Dispatch is asynchronous.
      if agreed[0] or agreed[3]:
        status = self._host(state.status).copy()
      running = [r for r in rows if status[r] == S.RUNNING]
      want = int(bool(running) and (not c.barrier or not waiting))
      decoding_now = bool(multihost.allgather_ints([want]).max() if multi else want)
      if decoding_now:
        busy()
        state, steps = S.decode(self.model_cfg, c.sampling, state, params, self.tables,
                                c.decode_steps, exit_on_pause=not c.barrier)
        self.stats.decode_calls += 1
      # 4. Host work on the rows handed off last round (read the code and submit the cell,
      # assemble finished trajectories) while the device decodes the others.
      for item in handoff:
        self._host_work(item, results, order)
      handoff = []
      if decoding_now:
        status = self._host(state.status).copy()  # waits for the decode; cells keep running
        idle_since = time.perf_counter()
        self.stats.decode_steps += int(steps)
      elif not row_pos:
        waiting = [r for r, row in rows.items() if row.future is not None]
        ready_next = any(row.future is None and row.pending_text is not None
                         for row in rows.values())
        if waiting and (c.barrier or not ready_next):
          if idle_since is None:
            idle_since = time.perf_counter()
          t_wait = time.perf_counter()
          # Across processes wait briefly and go round again: another host may need this one
          # in a collective call before this host's cells are done.
          concurrent.futures.wait([rows[r].future for r in waiting],
                                  timeout=0.002 if multi else None,
                                  return_when=(concurrent.futures.ALL_COMPLETED if c.barrier
                                               else concurrent.futures.FIRST_COMPLETED))
          self.stats.cell_wait_s += time.perf_counter() - t_wait
      # 5. Hand off rows that paused or finished: their tokens come to the host now (the next
      # call donates the state); finished rows free their slot for the next refill at once.
      paused = [r for r in rows if status[r] == S.PAUSED and rows[r].future is None
                and rows[r].pending_text is None and not rows[r].handed]
      done = [r for r in rows if (status[r] == S.DONE and not rows[r].handed) or r in row_pos]
      if not paused and not done:
        continue
      need = sorted(set(paused) | set(done))
      n_out = self._host(state.n_out)
      reason = self._host(state.reason)
      if multi:
        toks, logps, srcs = (self._host(x)[np.asarray(need)]
                             for x in (state.out_tokens, state.out_logp, state.out_src))
      else:
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
          del rows[r]
          status[r] = S.EMPTY
          handoff.append(("done", row, toks[i, :n], logps[i, :n], srcs[i, :n], why))
        else:
          row.handed = True
          handoff.append(("paused", row, toks[i, :n]))
    self.stats.wall_s += time.perf_counter() - t_start
    if idle_since is not None:
      idle += time.perf_counter() - idle_since
    self.stats.device_idle_s += idle
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    return [results[k] for k in range(len(requests))]
