"""The host rollout loop: compiled sampler + sandbox + tokenizer -> trajectories.

    engine = RolloutEngine(model_cfg, tokenizer, RolloutConfig(...), executor=sandbox)
    result = engine.run(params, requests)              # the config's sampling
    result = engine.run(params, requests, SamplingParams(greedy=True))
    result.trajectories, result.stats                  # stats of this call

Continuous batching: the device holds `batch_size` rows. A row whose model opened an output
block (the tool format's pause string) pauses; its code cell goes to the sandbox at once and
runs while the other rows keep decoding; when the result is back it is tokenised and spliced
into that row's live KV cache (`extend`) and the row resumes. Finished rows are refilled from
the queue of waiting prompts. `barrier=True` gives the classic scheme for comparison: fixed
batches, every row waits until all cells of the batch have run. The loop itself, one call's
rows and rounds, is `rollout.scheduler`; this module holds what is fixed per engine.

Compiled once per engine: the automata tables, the state initialiser (with its shardings) and
the parameter cast; the sampler's functions are jitted at module level with static shapes, so
a run compiles `decode` once per sampling setting and `extend` once per chunk-width bucket, and
later runs (E-steps, evaluations) compile nothing (tests/test_compile_once.py).

Token-in/token-out: sampled ids are never decoded and re-encoded; the host decodes them only
to confirm a stop and read the code, and tokenises only the text it appends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aci_jax import tool_format as tool_formats
from aci_jax.model import ModelConfig
from aci_jax.model import fused
from aci_jax.model.decoder import LAYERS, unstack_layers
from aci_jax.model.cache import pages_per_row
from aci_jax.parallel import multihost
from aci_jax.parallel.rules import ROW_AXES
from aci_jax.rollout.pages import PagePool
from aci_jax.rollout.rows import RolloutResult
from aci_jax.rollout.trajectory import Trajectory
from aci_jax.sampling import sampler as S
from aci_jax.sampling.stops import ban_table, build_matcher, token_texts

@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  batch_size: int = 8  # rows on the device
  max_prompt_tokens: int = 512  # prompt + forced prefix
  max_new_tokens: int = 1024  # response tokens, tool output included
  max_tool_calls: int = 4
  decode_steps: int = 64  # decode steps per device call before the host looks again
  sampling: S.SamplingParams = S.SamplingParams()  # default of a call that passes none
  seed: int = 0
  stop_strings: tuple[str, ...] = ()  # user stop strings (end the response)
  # How a response calls the interpreter (aci_jax/tool_format.py): its pause string, the
  # strings banned in forced-reasoning rows, the limit / no-code messages.
  tool_format: str = tool_formats.DEFAULT
  barrier: bool = False
  # "extend": splice tool output into the live KV cache. "reprefill": forget the row's cache
  # and re-run prompt + response after every call (what engines without per-row extend do);
  # kept as the baseline for benchmarks, same trajectories.
  resume_mode: str = "extend"
  refill_rows: int = 0  # continuous batching: refill when this many rows are free; 0 = B / 4
  min_chunk: int = 16  # extend chunks are padded to powers of two from here (few compiles)
  # The KV cache: pages of `kv_page_size` slots from a pool of `kv_pool_tokens` slots shared by
  # all rows (rollout/pages.py), so memory follows live tokens; 0 pool tokens = batch_size x
  # capacity (no row ever waits for a page). kv_page_size 0: the contiguous cache (capacity
  # slots per row).
  kv_page_size: int = 128
  kv_pool_tokens: int = 0

  def __post_init__(self):
    tool_formats.get(self.tool_format)  # an unknown name is a ValueError here, not mid-run
    if self.kv_page_size < 0 or self.kv_pool_tokens < 0:
      raise ValueError(f"kv_page_size ({self.kv_page_size}) and kv_pool_tokens "
                       f"({self.kv_pool_tokens}) must be >= 0")

  @property
  def capacity(self) -> int:
    return self.max_prompt_tokens + self.max_new_tokens

  def pool_pages(self, groups: int) -> int:
    """Pages per page group of the paged cache (0: contiguous cache)."""
    if not self.kv_page_size:
      return 0
    per_row = pages_per_row(self.capacity, self.kv_page_size)
    tokens = self.kv_pool_tokens or self.batch_size * per_row * self.kv_page_size
    pages = -(-tokens // self.kv_page_size) // groups
    if pages < per_row:
      raise ValueError(
          f"rollout.kv_pool_tokens={self.kv_pool_tokens} gives each of the {groups} page "
          f"groups {pages} pages of {self.kv_page_size} slots; one row may need {per_row} "
          f"(capacity {self.capacity}): raise kv_pool_tokens")
    return pages


@dataclasses.dataclass
class Request:
  prompt_ids: list[int]
  prompt_index: int
  sample_index: int = 0
  mode: str = "native"  # native | code | cot
  prefix_ids: list[int] = dataclasses.field(default_factory=list)  # forced response prefix
  ban: bool = False  # ban the tool format's ban_strings (force pure reasoning)
  meta: dict = dataclasses.field(default_factory=dict)


class RolloutEngine:
  """Owns the compiled sampler's tables and functions; `run` / `run_local` drive one call's
  loop (`rollout.scheduler`, module docstring)."""

  def __init__(self, model_cfg: ModelConfig, tokenizer, cfg: RolloutConfig, executor=None,
               mesh=None, show_progress: bool = True):
    self.model_cfg, self.tok, self.cfg, self.executor = model_cfg, tokenizer, cfg, executor
    if jax.default_backend() == "cpu" and model_cfg.dtype == "bfloat16":
      logging.getLogger(__name__).warning(
          "decoding in bfloat16 on a CPU: 1.3-7.8x slower than float32 on x86 CPUs without "
          "bf16 matmul units (docs/benchmarks.md); use --config.model.dtype=float32 here")
    self.mesh = mesh
    cfg.pool_pages(S.page_groups(mesh))  # a pool too small for one row fails here, not mid-run
    self.tool_format = fmt = tool_formats.get(cfg.tool_format)
    texts = token_texts(tokenizer.hf)
    if len(texts) < model_cfg.vocab_size:  # embedding rows past the tokenizer: never a match
      texts += [""] * (model_cfg.vocab_size - len(texts))
    texts = texts[:model_cfg.vocab_size]
    sm = build_matcher((fmt.pause_string,) + tuple(cfg.stop_strings), texts)
    bm = build_matcher(fmt.ban_strings or ("\x00never\x00",), texts)
    # Stop on the tokenizer's end tokens (EOS, template end-of-turn) and the model config's.
    eos = list(dict.fromkeys([*tokenizer.eos_ids, *model_cfg.eos_token_ids])) or [-1]
    self.tables = S.Tables(
        stop_next=jnp.asarray(sm.next), stop_hit=jnp.asarray(sm.hit),
        stop_is_tool=jnp.asarray([False, True] + [False] * len(cfg.stop_strings)),
        ban_next=jnp.asarray(bm.next), ban_hit=jnp.asarray(ban_table(bm) > 0),
        eos_ids=jnp.asarray(eos, jnp.int32))
    self.rows = list(range(cfg.batch_size))  # the rows this process drives
    if mesh is None:
      self._init = jax.jit(self._init_state)
    else:
      from jax.sharding import NamedSharding, PartitionSpec as P
      rep = NamedSharding(mesh, P())
      self.tables = jax.tree_util.tree_map(
          lambda a: multihost.global_from_host(np.asarray(a), rep), self.tables)
      shardings = S.state_shardings(jax.eval_shape(self._init_state), mesh)
      # Built in place on every device (never materialised on one device first).
      self._init = jax.jit(self._init_state, out_shardings=shardings)
      self.rows = multihost.addressable_rows(shardings.status, (cfg.batch_size,))
    self._placers: dict = {}  # params' (tree, shapes, dtypes) -> jitted cast / reshard
    self.show_progress = show_progress  # tqdm over rows in long runs (run_local)

  def _init_state(self):
    c = self.cfg
    groups = S.page_groups(self.mesh)
    return S.SamplerState.init(self.model_cfg, c.batch_size, c.capacity, c.max_new_tokens,
                               page_size=c.kv_page_size, pages_per_group=c.pool_pages(groups),
                               groups=groups)

  def new_state(self) -> S.SamplerState:
    """An empty sampler state (every row EMPTY), placed on the engine's mesh."""
    return self._init()

  def new_pages(self) -> PagePool | None:
    """The host's allocator for a new state's page pool (None: contiguous cache)."""
    c = self.cfg
    if not c.kv_page_size:
      return None
    groups = S.page_groups(self.mesh)
    return PagePool(c.batch_size, groups, c.pool_pages(groups), c.kv_page_size,
                    pages_per_row(c.capacity, c.kv_page_size))

  def place_params(self, params):
    """Params for sampling: cast to the compute dtype when it is narrower than the stored
    weights, and on the engine's mesh placed by SAMPLING_RULES (replicated over data; heads, MLP
    and vocabulary over tensor and then fsdp), with q/k/v and gate/up fused off the CPU.

    The cast changes no number: every layer casts its weights to the compute dtype before use
    (dense kernels and biases, norm scales, embeddings, the head), so a bf16 copy of float32
    master weights gives bit-identical logits while decode, which is bound by reading the
    weights, reads half the bytes and each data-parallel replica holds half the memory. The
    jitted copy is built once per parameter layout, so a new set of weights (after an M-step)
    of the same layout compiles nothing.
    """
    cast = jnp.dtype(self.model_cfg.compute_dtype)

    def wide(dtype) -> bool:
      return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits > jnp.finfo(cast).bits

    leaves, tree = jax.tree_util.tree_flatten(params)
    needs_cast = any(wide(x.dtype) for x in leaves)
    # On one CPU device the copy also splits the stacked layers (`unstack_layers`): XLA's CPU
    # dots copy a scanned layer's weights out of the stack every decode step, which tripled
    # the bytes a SmolLM2 step moved (docs/benchmarks.md). Same numbers, one more copy of the
    # weights in host memory.
    unstack = self.mesh is None and jax.default_backend() == "cpu" and LAYERS in params
    # Off the CPU the copy fuses q/k/v and gate/up into one grouped matmul each
    # (`aci_jax.model.fused`): a decode step then reads each layer's input twice instead of
    # five times. (On the CPU, where decode of these models is bound by the weights, the
    # measured per-layer copy above is what is kept.)
    groups = 0 if (jax.default_backend() == "cpu" and self.mesh is None
                   or fused.groups_of(params)) else fused.sampling_groups(self.model_cfg,
                                                                          self.mesh)
    if self.mesh is None and not needs_cast and not unstack and not groups:
      return params
    if self.mesh is not None and jax.process_count() == 1:
      # Onto the mesh first: the jitted copy below cannot take arrays committed elsewhere.
      from aci_jax.parallel import SAMPLING_RULES, param_shardings
      params = jax.device_put(params, param_shardings(params, self.mesh, SAMPLING_RULES))
      if not needs_cast and not groups:
        return params
    key = (tree, tuple((x.shape, jnp.dtype(x.dtype)) for x in leaves))
    if key not in self._placers:
      def narrow(p):
        p = jax.tree_util.tree_map(lambda x: x.astype(cast) if wide(x.dtype) else x, p)
        return fused.fuse(p, groups) if groups else p
      if self.mesh is None:
        self._placers[key] = jax.jit(
            (lambda p: unstack_layers(narrow(p))) if unstack else narrow)
      else:
        # Casts, fuses and reshards in one pass (across processes resharding is a collective,
        # which a jitted identity does).
        from aci_jax.parallel import SAMPLING_RULES, param_shardings
        out = param_shardings(jax.eval_shape(narrow, params), self.mesh, SAMPLING_RULES)
        self._placers[key] = jax.jit(narrow, out_shardings=out)
    return self._placers[key](params)

  # ------------------------------------------------------------------ host <-> device rows

  def put(self, x: np.ndarray):
    """A per-row host array [B, ...] as a device input. Across processes each fills only its
    own rows, so the global array is assembled from every process's part."""
    if self.mesh is None or jax.process_count() == 1:
      return jnp.asarray(x)
    from jax.sharding import NamedSharding, PartitionSpec as P
    spec = P(ROW_AXES, *([None] * (x.ndim - 1)))
    return multihost.global_from_host(x, NamedSharding(self.mesh, spec))

  @staticmethod
  def host(x) -> np.ndarray:
    """A state array on the host; across processes only this process's rows are filled."""
    # Wait in short sleeps, not inside XLA: a thread blocked in a C++ wait ignores Ctrl-C for a
    # whole decode call (minutes on a CPU); Python handles SIGINT between the sleeps.
    is_ready = getattr(x, "is_ready", None)
    while is_ready is not None and not is_ready():
      time.sleep(0.002)
    return multihost.host_local(x)

  # ---------------------------------------------------------------------------- running

  def _check(self, req: Request) -> None:
    c = self.cfg
    if len(req.prompt_ids) + len(req.prefix_ids) > c.max_prompt_tokens:
      raise ValueError(f"prompt {req.prompt_index} has {len(req.prompt_ids)} + "
                       f"{len(req.prefix_ids)} tokens > max_prompt_tokens={c.max_prompt_tokens}")
    if not req.prompt_ids:
      raise ValueError(f"prompt {req.prompt_index} is empty")

  def run(self, params, requests: Sequence[Request],
          sampling: S.SamplingParams | None = None) -> RolloutResult:
    """Runs every request to completion with `sampling` (default: the config's); the result
    holds the trajectories in request order and this process's statistics of the call.

    Across processes every process passes the same `requests`; each runs the prompts it owns
    (`multihost.owner_of` over prompt indices, so all samples of a prompt stay on one host) on
    its own rows and sandbox, and the trajectories are all-gathered. Loops that want to keep
    rollouts on their host (the E-step) call `run_local` instead.
    """
    if jax.process_count() == 1:
      return self.run_local(params, requests, sampling)
    for req in requests:
      self._check(req)
    owner = multihost.owner_of([r.prompt_index for r in requests])
    me = jax.process_index()
    mine = [i for i, r in enumerate(requests) if owner[r.prompt_index] == me]
    local = self.run_local(params, [requests[i] for i in mine], sampling)
    out: list[Trajectory | None] = [None] * len(requests)
    for part in multihost.allgather_objects(list(zip(mine, local.trajectories))):
      for i, t in part:
        out[i] = t
    return RolloutResult(out, local.stats)

  def run_local(self, params, requests: Sequence[Request],
                sampling: S.SamplingParams | None = None) -> RolloutResult:
    """Runs this process's `requests` on its rows with `sampling` (default: the config's);
    returns their trajectories in order and the statistics of this call.

    A collective across processes: every process calls it (with its own requests, possibly
    none, and the same sampling) and the loop issues the same compiled calls everywhere. Before
    each round the processes agree, with one small all-gather, on what to run and at which
    chunk width (`rows.RoundPlan`); everything else (sandbox calls, stop confirmation,
    splicing text) stays on the host that owns the row.
    """
    from aci_jax.rollout.scheduler import Scheduler

    for req in requests:
      self._check(req)
    return Scheduler(self, params, requests, sampling or self.cfg.sampling).run()
