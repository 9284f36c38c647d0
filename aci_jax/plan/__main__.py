"""`python -m aci_jax.plan`: the planner's command line (usage in `aci_jax.plan`)."""

import json
import sys

from aci_jax.plan.chips import PlanError
from aci_jax.plan.planner import PROGRAMS, plan
from aci_jax.plan.report import format_plan


def versions() -> str:
  import jax
  try:
    from importlib.metadata import version
    libtpu = version("libtpu")
  except Exception:  # noqa: BLE001
    libtpu = "?"
  return f"jax {jax.__version__}, libtpu {libtpu}"


def main(argv=None) -> int:
  from absl import flags
  from ml_collections import config_flags

  fl = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "a configs/*.py file[:arg]", flag_values=fl)
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:2x2x2, v5e:4x4, v4:2x2x4",
                      flag_values=fl)
  flags.DEFINE_bool("search", False, "also find the largest micro-batch / rows / chunk that fit",
                    flag_values=fl)
  flags.DEFINE_list("programs", list(PROGRAMS), "programs to compile",
                    flag_values=fl)
  flags.DEFINE_integer("live_tokens", 600, "live KV length (longest row) decode is counted at",
                       flag_values=fl)
  flags.DEFINE_string("json", "", "also write the plan as JSON here", flag_values=fl)
  argv = sys.argv if argv is None else argv
  try:
    rest = fl(argv)
  except Exception as e:  # noqa: BLE001 - flag errors are one line
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2
  if len(rest) > 1:
    print(f"error: unexpected arguments {rest[1:]}", file=sys.stderr)
    return 2
  if fl["config"].value is None or not fl["topology"].value:
    print("error: --config and --topology are required", file=sys.stderr)
    return 2
  bad = [p for p in fl["programs"].value if p not in PROGRAMS]
  if bad:
    print(f"error: unknown --programs {bad}; choose from {', '.join(PROGRAMS)}",
          file=sys.stderr)
    return 2
  try:
    config = fl["config"].value
    config.get("mode", None)
    p = plan(config, fl["topology"].value, programs=tuple(fl["programs"].value),
             search=fl["search"].value, live_tokens=fl["live_tokens"].value,
             log=lambda m: print(m, file=sys.stderr, flush=True))
  except PlanError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 - config errors (ConfigError) are ValueErrors
    from aci_jax.configuration import ConfigError
    if isinstance(e, (ConfigError, KeyError)):
      print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
      return 2
    raise
  print(format_plan(p))
  print(f"\n({versions()}; figures per chip; memory = the compiler's arguments + outputs - "
        "donated + temporaries)")
  if fl["json"].value:
    from aci_jax import fileio
    d = p.to_dict()
    d["versions"] = versions()
    fileio.write_text(fl["json"].value, json.dumps(d, indent=1, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
