"""One rollout call's host loop: rows in the device's slots, rounds of compiled calls, host work
overlapped with decoding. What is fixed per engine (tables, compiled state init and parameter
cast, row placement, tool format) is `rollout/engine.py`; the row phases and hand-offs are
`rollout/rows.py`.

Each round:
1. refill free slots from the queue (continuous batching), or a whole batch (barrier);
2. collect the cells that finished and plan the splices of rows whose text is ready;
3. agree with the other processes on the round's calls (`RoundPlan`), prefill new rows and
   splice tool output;
4. dispatch a decode if any row runs, and while it runs do the host work of the rows handed
   off last round (read and submit cells, build trajectories); with nothing to decode, wait
   for a cell;
5. collect the rows the device paused or finished: their tokens come to the host now (the next
   call donates the state) and finished rows free their slots at once.

With the paged KV cache (`RolloutConfig.kv_page_size`) the loop also assigns pages
(`rollout.pages.PagePool`): a new row is admitted only when its group has pages for its prompt,
a splice waits for pages for its text, and before each decode call every live row gets pages
for the call's steps, as far as the pool has them; a row that reaches its last page waits
(`sampler.WAITING`) until a finished row's pages come back. Finished rows give their pages back
when they are collected. When nothing can move (every live row waits for pages that only
those rows hold), the call stops with a one-line error naming `rollout.kv_pool_tokens`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import time
from typing import TYPE_CHECKING, Sequence

import jax
import numpy as np

from aci_jax.model.attention import kernel_mesh
from aci_jax.parallel import multihost
from aci_jax.rollout.rows import (Finished, Paused, Phase, RolloutResult, RolloutStats,
                                  RoundPlan, Row)
from aci_jax.rollout.trajectory import Cell, Trajectory
from aci_jax.sampling import sampler as S

if TYPE_CHECKING:
  from aci_jax.rollout.engine import Request, RolloutEngine


def _prompt_len(req: Request) -> int:
  """Cache slots a new row's prompt and forced prefix take."""
  return len(req.prompt_ids) + len(req.prefix_ids)


def _bucket(n: int, lo: int) -> int:
  b = lo
  while b < n:
    b *= 2
  return b


class Scheduler:
  """Runs one call's requests on an engine's rows (`RolloutEngine.run_local`)."""

  def __init__(self, engine: RolloutEngine, params, requests: Sequence[Request],
               sampling: S.SamplingParams):
    self.engine, self.cfg, self.tok, self.fmt = engine, engine.cfg, engine.tok, engine.tool_format
    self.params, self.sampling, self.n = params, sampling, len(requests)
    self.queue = collections.deque(enumerate(requests))
    self.slots: dict[int, Row] = {}  # device row -> the rollout in it
    self.results: dict[int, Trajectory] = {}
    self.handoff: list[Paused | Finished] = []  # collected last round, host work this round
    self.status = np.full(self.cfg.batch_size, S.EMPTY, np.int32)  # host copy of the device's
    self.stats = RolloutStats()
    self.multi = jax.process_count() > 1
    c, mine = self.cfg, engine.rows
    self.refill_at = max(1, (c.refill_rows or max(1, c.batch_size // 4)) * len(mine)
                         // c.batch_size)
    self.state = None
    self.pages = engine.new_pages()  # None: the contiguous cache
    self._no_pages: set[int] = set()  # rows whose splice waits for pages (this round)
    self._idle_since: float | None = None  # no compiled call in flight since then
    self._bar, self._t0 = None, 0.0

  def run(self) -> RolloutResult:
    c = self.cfg
    self._t0 = time.perf_counter()
    # A progress bar for runs longer than a couple of batches (minutes on a CPU), process 0.
    if self.engine.show_progress and self.n > 2 * c.batch_size and jax.process_index() == 0:
      from tqdm.auto import tqdm
      self._bar = tqdm(total=self.n, desc="rollouts", unit="row", mininterval=5.0)
    self.params = self.engine.place_params(self.params)
    self.state = self.engine.new_state()
    self._idle_since = time.perf_counter()
    while self._round():
      pass
    self.stats.wall_s = time.perf_counter() - self._t0
    self._busy()  # closes the last idle stretch
    if self._bar is not None:
      self._bar.close()
    return RolloutResult([self.results[k] for k in range(self.n)], self.stats)

  # ----------------------------------------------------------------------------- a round

  def _round(self) -> bool:
    """One round (module docstring); False once no process has anything left."""
    c = self.cfg
    new = self._refill()
    self._collect_cells()
    waiting = self._in(Phase.IN_SANDBOX)
    splice = self._plan_splices() if not c.barrier or not waiting else {}
    full = self._reprefill_seqs(splice) if splice and c.resume_mode == "reprefill" else {}
    plan = RoundPlan(
        prompt=self._width({r: row.req.prompt_ids for r, row in new.items()}),
        prefix=self._width({r: row.req.prefix_ids for r, row in new.items()
                            if row.req.prefix_ids}),
        reprefill=self._width(full), splice=self._width(splice),
        busy=bool(self.queue or self.slots or self.handoff)).agreed()
    if not plan.busy:
      return False
    if plan.prompt:
      self._busy()
      self._fill(new, plan)
    if plan.splice:
      self._busy()
      if plan.reprefill:
        self._reprefill(full, plan.reprefill)
      self._extend(splice, S.SRC_ENV, True, set(splice), plan.splice)
    if plan.prompt or plan.splice:
      self.status = self.engine.host(self.state.status).copy()
    if self.pages is not None:
      self._pages_for_decode()
    running = any(self.status[r] == S.RUNNING for r in self.slots)
    want = int(running and (not c.barrier or not waiting))
    decoding = bool(multihost.allgather_ints([want]).max() if self.multi else want)
    if decoding:  # dispatch is asynchronous: the host work below overlaps it
      self._busy()
      # Traced over the engine's mesh: on a TPU slice the paged decode attention is a Pallas
      # kernel in a shard_map over it (`model/kernels/paged.py`).
      with contextlib.nullcontext() if self.engine.mesh is None else kernel_mesh(
          self.engine.mesh):
        self.state, steps = S.decode(self.engine.model_cfg, self.sampling, self.state,
                                     self.params, self.engine.tables, c.decode_steps,
                                     exit_on_pause=not c.barrier)
      self.stats.decode_calls += 1
    handoff, self.handoff = self.handoff, []
    for item in handoff:
      self._host_work(item)
    if decoding:
      self.status = self.engine.host(self.state.status).copy()  # waits; cells keep running
      self.stats.page_waits += int(np.sum(self.status == S.WAITING))
      self._idle_since = time.perf_counter()
      self.stats.decode_steps += int(steps)
    elif not self._in(Phase.DONE):
      self._wait_for_cells()
    self._collect_rows()
    moving = (decoding or plan.prompt or plan.splice or self.handoff
              or any(row.phase in (Phase.IN_SANDBOX, Phase.HANDED, Phase.DONE)
                     or (row.phase is Phase.SPLICE_READY and r not in self._no_pages)
                     for r, row in self.slots.items()))
    if not moving and (self.queue or self.slots):
      raise RuntimeError(
          f"KV page pool exhausted: {len(self.slots)} rows wait for pages only they hold "
          f"({len(self.queue)} prompts queued); raise rollout.kv_pool_tokens "
          f"(now {self.cfg.kv_pool_tokens}) or lower rollout.batch_size")
    return True

  def _in(self, phase: Phase) -> list[int]:
    return [r for r, row in self.slots.items() if row.phase is phase]

  def _busy(self) -> None:
    """A compiled call is about to be dispatched: the device's idle stretch ends."""
    if self._idle_since is not None:
      self.stats.device_idle_s += time.perf_counter() - self._idle_since
      self._idle_since = None

  def _refill(self) -> dict[int, Row]:
    """New rows for free slots. A prefill runs the model over every row, so free rows are
    refilled together: once `refill_rows` of them are free (or the queue is that short), or at
    once when nothing else is decoding; in barrier mode only when all slots are free."""
    c = self.cfg
    free = [r for r in self.engine.rows if r not in self.slots]
    enough = len(free) >= min(self.refill_at, len(self.queue))
    decoding = bool(self._in(Phase.DECODING))
    new: dict[int, Row] = {}
    if (self.queue and free and (not c.barrier or not self.slots)
        and (enough or not decoding or c.barrier)):
      for r in free:
        if not self.queue:
          break
        k, req = self.queue[0]
        # Paged cache: a row starts only when its group has pages for its prompt, and takes
        # them now (another free row of the group must not count on them too); other free
        # rows may sit in groups with room.
        if self.pages is not None:
          if not self.pages.can_grow(r, _prompt_len(req)):
            self.stats.page_waits += 1
            continue
          self.pages.grow(r, _prompt_len(req))
        self.queue.popleft()
        new[r] = Row(req, k)
      self.slots.update(new)
    return new

  def _width(self, seqs: dict[int, list[int]]) -> int:
    """This process's bucketed chunk width for `seqs` (0: nothing to send)."""
    return _bucket(max(len(s) for s in seqs.values()), self.cfg.min_chunk) if seqs else 0

  # ---------------------------------------------------------------------- device calls

  def _push_pages(self) -> None:
    """Sends the host's block table to the device if it changed (before any call that reads
    or writes the cache); rows that waited for a page and now have one run again."""
    if self.pages is None or not self.pages.dirty:
      return
    self.state = S.set_pages(self.state, self.engine.put(self.pages.table))
    self.pages.dirty = False

  def _pages_for_decode(self) -> None:
    """Every row on the device that runs or waits gets pages for the next call's steps, as
    far as its group has free pages; the status is re-read if a waiting row may run again."""
    c, pages = self.cfg, self.pages
    live = [r for r in self._in(Phase.DECODING)
            if self.status[r] in (S.RUNNING, S.WAITING)]
    if not live:
      return
    cursor = self.engine.host(self.state.cache.cursor)
    for r in live:
      pages.grow(r, min(int(cursor[r]) + c.decode_steps, c.capacity))
    waiting = any(self.status[r] == S.WAITING for r in live)
    self._push_pages()
    if waiting:
      self.status = self.engine.host(self.state.status).copy()

  def _extend(self, seqs: dict[int, list[int]], src: int, record: bool, resume: set[int],
              width: int) -> None:
    """Appends each row's ids in `seqs` (right-padded to `width`) at its cursor."""
    e, b = self.engine, self.cfg.batch_size
    tokens = np.zeros((b, width), np.int32)
    valid = np.zeros((b, width), bool)
    for r, s in seqs.items():
      tokens[r, :len(s)] = s
      valid[r, :len(s)] = True
    res = np.zeros(b, bool)
    res[list(resume)] = True
    self._push_pages()
    self.stats.extend_calls += 1
    self.state = S.extend(e.model_cfg, self.state, self.params, e.tables, e.put(tokens),
                          e.put(valid), e.put(np.full((b,), src, np.int8)), e.put(res),
                          record=record)

  def _fill(self, new: dict[int, Row], plan: RoundPlan) -> None:
    """Resets the new rows and prefills their prompt (+ forced prefix) at the plan's widths
    (every process calls this with the same ones)."""
    c, e, b = self.cfg, self.engine, self.cfg.batch_size
    mask, ban = np.zeros(b, bool), np.zeros(b, bool)
    prompt_index, sample_index = np.zeros(b, np.uint32), np.zeros(b, np.uint32)
    for r, row in new.items():
      mask[r], ban[r] = True, row.req.ban
      prompt_index[r], sample_index[r] = row.req.prompt_index, row.req.sample_index
    # One dispatch for all new rows' keys, over every slot: one shape, one compile (reset_rows
    # takes the keys of the masked rows only).
    keys = (np.asarray(S.row_keys(c.seed, prompt_index, sample_index)) if new
            else np.zeros((b, 2), np.uint32))
    self.state = S.reset_rows(self.state, e.put(mask), e.put(keys),
                              e.put(np.full((b,), c.max_new_tokens, np.int32)), e.put(ban))
    if self.pages is not None:  # `_refill` took their pages; a write past them would be lost
      short = [r for r, row in new.items() if self.pages.held(r) < _prompt_len(row.req)]
      if short:
        raise AssertionError(f"rows {short} have no KV pages for their prompts")
    no_prefix = {r for r, row in new.items() if not row.req.prefix_ids}
    self._extend({r: row.req.prompt_ids for r, row in new.items()}, S.SRC_SAMPLED, False,
                 no_prefix, plan.prompt)
    if plan.prefix:
      pre = {r: row.req.prefix_ids for r, row in new.items() if row.req.prefix_ids}
      self._extend(pre, S.SRC_FORCED, True, set(pre), plan.prefix)

  def _reprefill_seqs(self, splice: dict[int, list[int]]) -> dict[int, list[int]]:
    n_out = self.engine.host(self.state.n_out)
    toks = self.engine.host(self.state.out_tokens)
    return {r: list(self.slots[r].req.prompt_ids) + [int(t) for t in toks[r, :n_out[r]]]
            for r in splice}

  def _reprefill(self, full: dict[int, list[int]], width: int) -> None:
    mask = np.zeros(self.cfg.batch_size, bool)
    mask[list(full)] = True
    self.state = S.clear_cache_rows(self.state, self.engine.put(mask))
    self._extend(full, S.SRC_SAMPLED, False, set(), width)

  # ------------------------------------------------------------------------- host side

  def _collect_cells(self) -> None:
    """Rows whose cell finished: the cell is recorded and its output rendered for the splice."""
    for row in self.slots.values():
      if row.phase is Phase.IN_SANDBOX and row.future.done():
        res = row.future.result()
        status = str(getattr(res.status, "value", res.status))
        row.cells.append(Cell(row.code, res.output, status, float(res.seconds)))
        self.stats.cells += 1
        row.phase, row.future = Phase.SPLICE_READY, None
        row.splice = self.fmt.render_output(row.text, res.output)

  def _plan_splices(self) -> dict[int, list[int]]:
    """{row: ids} of the ready rows' texts that fit their response budget; a row without room
    for its text ends with stop reason "length"."""
    ready = self._in(Phase.SPLICE_READY)
    self._no_pages = set()
    if not ready:
      return {}
    ids = {r: self.tok.encode(self.slots[r].splice) for r in ready}
    n_out = self.engine.host(self.state.n_out)
    cursor = self.engine.host(self.state.cache.cursor) if self.pages is not None else None
    splice = {}
    for r, v in ids.items():
      row = self.slots[r]
      if n_out[r] + len(v) > self.cfg.max_new_tokens:
        row.splice = ""
        row.phase, row.end_reason = Phase.DONE, S.REASON_LENGTH
      elif cursor is not None and self.pages.grow(r, int(cursor[r]) + len(v)) < (
          int(cursor[r]) + len(v)):
        self._no_pages.add(r)  # no pages for the text yet: it stays ready, tried next round
        self.stats.page_waits += 1
        continue
      else:
        row.splice = ""
        splice[r], row.phase = v, Phase.DECODING
    return splice

  def _wait_for_cells(self) -> None:
    """Nothing to decode: block until a cell finishes (barrier: all of them) unless a row is
    ready to splice. Across processes wait briefly and go round again: another host may need
    this one in a collective call before this host's cells are done."""
    c = self.cfg
    waiting = self._in(Phase.IN_SANDBOX)
    if not waiting or (not c.barrier and self._in(Phase.SPLICE_READY)):
      return
    if self._idle_since is None:
      self._idle_since = time.perf_counter()
    t_wait = time.perf_counter()
    concurrent.futures.wait([self.slots[r].future for r in waiting],
                            timeout=0.002 if self.multi else None,
                            return_when=(concurrent.futures.ALL_COMPLETED if c.barrier
                                         else concurrent.futures.FIRST_COMPLETED))
    self.stats.cell_wait_s += time.perf_counter() - t_wait

  def _collect_rows(self) -> None:
    """Hands off the rows the device paused or finished (and those the host ended)."""
    e = self.engine
    paused = [r for r in self._in(Phase.DECODING) if self.status[r] == S.PAUSED]
    done = ([r for r in self._in(Phase.DECODING) if self.status[r] == S.DONE]
            + self._in(Phase.DONE))
    if not paused and not done:
      return
    need = np.asarray(sorted(paused + done))
    n_out, reason = e.host(self.state.n_out), e.host(self.state.reason)
    # Copies of the needed rows (fancy indexing), taken before the next call donates the state.
    toks, logps, srcs = (e.host(x)[need] for x in (self.state.out_tokens, self.state.out_logp,
                                                   self.state.out_src))
    done = set(done)
    for i, r in enumerate(need.tolist()):
      row, n = self.slots[r], int(n_out[r])
      if r not in done:
        row.phase = Phase.HANDED
        self.handoff.append(Paused(row, toks[i, :n]))
        continue
      why = int(reason[r]) if row.end_reason is None else row.end_reason
      if why == S.REASON_STOP and not any(
          x in self.tok.decode([int(t) for t in toks[i, :n]]) for x in self.cfg.stop_strings):
        row.phase, row.splice = Phase.SPLICE_READY, ""  # a stop the text does not confirm
        continue
      del self.slots[r]
      self.status[r] = S.EMPTY
      if self.pages is not None:
        self.pages.release(r)
      row.phase = Phase.DONE
      self.handoff.append(Finished(row, toks[i, :n], logps[i, :n], srcs[i, :n], why))

  def _host_work(self, item: Paused | Finished) -> None:
    """A finished row becomes its trajectory; a paused row's cell is read from its text and
    sent to the sandbox (or it gets the limit / no-code message, or resumes if the text has no
    pause string after all)."""
    if isinstance(item, Finished):
      self._finish(item)
      return
    row, c, fmt = item.row, self.cfg, self.fmt
    text = self.tok.decode([int(t) for t in item.tokens])
    if fmt.pause_string not in text:  # the device saw a pause the text does not have
      row.phase, row.splice = Phase.SPLICE_READY, ""
      return
    if sum(1 for cell in row.cells if cell.status != "limit") >= c.max_tool_calls:
      self._answer(row, text, fmt.limit_message, "limit")
      return
    code = fmt.parse_cell(text)
    if code is None or self.engine.executor is None:
      self._answer(row, text, fmt.no_code_message, "no_code")
      return
    row.phase, row.text, row.code = Phase.IN_SANDBOX, text, code
    row.future = self.engine.executor.submit(row.session, code)

  def _answer(self, row: Row, text: str, message: str, status: str) -> None:
    """The environment answers a call with `message` instead of running code."""
    row.cells.append(Cell("", message, status, 0.0))
    row.phase, row.splice = Phase.SPLICE_READY, self.fmt.render_output(text, message)

  def _finish(self, item: Finished) -> None:
    row, req = item.row, item.row.req
    ids = [int(t) for t in item.tokens]
    if self.engine.executor is not None and row.cells:
      self.engine.executor.close_session(row.session)
    self.results[row.index] = Trajectory(
        prompt_index=req.prompt_index, sample_index=req.sample_index, mode=req.mode,
        prompt_ids=list(req.prompt_ids), response_ids=ids, logp=[float(x) for x in item.logp],
        source=[int(s) for s in item.source], cells=row.cells,
        stop_reason=S.REASON_NAMES[item.reason], text=self.tok.decode(ids),
        meta=dict(req.meta))
    self.stats.tokens += len(ids)
    if self._bar is not None:  # rows done, cells run, tokens/s (evaluation and E-step)
      rate = self.stats.tokens / max(time.perf_counter() - self._t0, 1e-9)
      self._bar.update(1)
      self._bar.set_postfix_str(f"cells {self.stats.cells}, {rate:.0f} tok/s", refresh=False)
