"""Ahead-of-time plan of a config on a TPU topology, from the TPU compiler itself.

    python -m aci_jax.plan --config configs/paper.py:qwen2.5-7b --topology v5p:2x2x2 \
        [--config.KEY=VALUE ...] [--search] [--json out.json]

Needs `libtpu` (the `jax[tpu]` extra; no TPU device: the compiler runs on this host). The
planner compiles the project's real programs for abstract devices of the topology
(`jax.experimental.topologies`), sharded exactly as a run shards them:

- `train`: the M-step train step (`aci_jax.train.step.make_train_step`) on a
  `train.batch_size` x (`rollout.max_prompt_tokens` + `rollout.max_new_tokens`) batch, or
  `em.batch_length` tokens per row when set;
- `extend`: a prompt chunk of `rollout.max_prompt_tokens` tokens into every rollout row
  (`aci_jax.sampling.extend`), the train state resident beside it;
- `decode`: `rollout.decode_steps` decode steps (`aci_jax.sampling.decode`), train state
  resident.

Per chip it prints: memory (the compiler's own figures; the compiler refuses a program that
does not fit HBM, and that refusal is what "fits" means here), the largest buffers, loop-aware
FLOPs, HBM bytes and inter-chip bytes (counted from the optimised HLO with while-loop trip
counts: `cost_analysis()` counts a loop body once), the roofline time and what it implies (MFU
of the train step, decode tokens/s). `--search` also finds the largest train micro-batch,
rollout row count and prompt chunk that compile within HBM, for the programs planned (a few
more compiles each).

Nothing here runs a program; all figures are estimates from the compiled program and public
chip figures (`CHIPS`).

Modules, by job: `chips` (chip figures, topology devices), `setup` (what a plan reads from a
config), `programs` (the train step, extend and decode built for a topology), `compiler`
(compiling one: memory figures or the refusal), `hlo` (reading the optimised HLO), `traffic`
(loop-aware FLOPs / HBM / ICI bytes), `report` (roofline, table, JSON), `planner` (compile each
program, `--search`), `__main__` (the command line).
"""

import os

# The planner needs no device: keep JAX on the host CPU (libtpu would otherwise try to open a
# TPU), while the topology API still loads libtpu's compiler.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling only: no TPU is opened, so several planners (or test workers) may load libtpu at
# once, and there is no metadata server to ask for the accelerator type.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

# The public names, importable from the package as before it was split (after the environment
# above, which must be set before JAX loads).
from aci_jax.plan.chips import CHIPS, Chip, PlanError, chip_for, topology_devices
from aci_jax.plan.compiler import Compiled, argument_bytes, compile_program
from aci_jax.plan.hlo import parse_hlo, shape_bytes, shape_dims
from aci_jax.plan.planner import PROGRAMS, plan, search_limits
from aci_jax.plan.programs import decode_program, extend_program, train_program
from aci_jax.plan.report import Plan, format_plan
from aci_jax.plan.setup import KNOWN_MODELS, Setup, model_config_for, setup_from_config
from aci_jax.plan.traffic import Cost, hlo_cost, largest_buffers
