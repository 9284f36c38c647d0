"""Sampling throughput and tool-integrated rollouts.

    python benchmarks/bench_sampling.py decode  [--batches 1,16] [--new 128] [--capacity 4096]
    python benchmarks/bench_sampling.py tools   [--prompts 48] [--batch 8] [--workload mixed]
    python benchmarks/bench_sampling.py calls   [--calls 4] [--prompts 32] [--devices 8]

`decode`: greedy generation tokens/s of our jitted sampler (extend prefill + lax.while_loop
decode) against `transformers` `generate` on the same CPU, same weights (a random Qwen2 of the
`--size` shape), prompt 32 tokens, float32. Prints the ratio. Use `--threads 1` too: on a
small shared CPU torch's thread pool can be far slower than one thread. `--capacity`: KV slots
per row (default: just enough, prompt + new + 1); a long capacity with short rows is the case
where attention that reads only live KV blocks pays.

`tools`: a Qwen2 model trained here (torch, a few hundred steps) to answer arithmetic questions
with one or two code cells (sympy, loops, a 0.2 s sleep for a heavier cell), run through the real
sandbox: wall time of continuous batching + extend (ours) against re-prefilling the whole row
after every cell and against barrier mode, and the fraction of wall time the device is idle.
`--workload uniform`: every answer has the same length and shape (barrier batches stay in lock
step); `mixed`: answers of different lengths (0-3 paragraphs of prose before the cell, 0-2
after) and cells from ~1 ms to 0.5 s, closer to real rollouts.

`calls`: repeated `run_local` calls of one engine, as the E-steps and evaluations of a run make
them: float32 parameters with bfloat16 compute (the paper setting: the engine samples from a
cast copy), new parameter arrays for every call (an M-step's output), greedy, a random toy-size
Qwen2 on the character tokenizer. Prints each call's wall time and the time it spent tracing,
lowering and compiling (jax's compile events); call 1 pays the compilation, later calls should
pay none. `--devices 8` runs rows over an 8-device host mesh.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def bench_decode(args):
  import jax.numpy as jnp
  import numpy as np
  import torch
  from transformers import AutoModelForCausalLM, Qwen2Config

  from aci_jax.model import ModelConfig
  from aci_jax.model.cache import pages_per_row
  from aci_jax.model.weights import load_params
  from aci_jax.sampling import SamplingParams, build_matcher
  from aci_jax.sampling import sampler as S

  torch.set_num_threads(args.threads)
  d, f, v = SIZES[args.size]
  hf_cfg = Qwen2Config(vocab_size=v, hidden_size=d, intermediate_size=f,
                       num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                       tie_word_embeddings=True)
  torch.manual_seed(0)
  model = AutoModelForCausalLM.from_config(hf_cfg).float().eval()
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    cfg = ModelConfig.from_pretrained(tmp)
    params = load_params(tmp, cfg)
  never = build_matcher(("\x01",), [""] * cfg.vocab_size)
  tables = S.Tables(jnp.asarray(never.next), jnp.asarray(never.hit), jnp.asarray([False, True]),
                    jnp.asarray(never.next), jnp.asarray(never.hit > 0), jnp.asarray([-1], jnp.int32))
  sp = SamplingParams(greedy=True)
  print(f"# decode: Qwen2 {args.size} D={d} L=4 V={v} ({cfg.num_params() / 1e6:.1f}M params), "
        f"prompt {args.prompt}, "
        f"{args.new} new tokens, {args.capacity or args.prompt + args.new + 1} KV slots per row "
        f"({f'pages of {args.page_size}' if args.page_size else 'contiguous'}), "
        f"greedy, float32, torch threads {args.threads}")
  print(f"{'batch':>6}{'ours tok/s':>12}{'hf tok/s':>10}{'ratio':>8}")
  for b in [int(x) for x in args.batches.split(",")]:
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (b, args.prompt))

    def ours():
      cap = args.capacity or args.prompt + args.new + 1
      if args.page_size:  # the paged cache, a page for every slot of every row
        m = pages_per_row(cap, args.page_size)
        st = S.SamplerState.init(cfg, b, cap, args.new, page_size=args.page_size,
                                 pages_per_group=b * m)
        st = S.set_pages(st, jnp.arange(b * m, dtype=jnp.int32).reshape(b, m))
      else:
        st = S.SamplerState.init(cfg, b, cap, args.new)
      st = S.reset_rows(st, jnp.ones(b, bool), jnp.zeros((b, 2), jnp.uint32),
                        jnp.full(b, args.new), jnp.zeros(b, bool))
      st = S.extend(cfg, st, params, tables, jnp.asarray(prompt, jnp.int32),
                    jnp.ones((b, args.prompt), bool), jnp.zeros(b, jnp.int8),
                    jnp.ones(b, bool), record=False)
      st, steps = S.decode(cfg, sp, st, params, tables, args.new, exit_on_pause=False)
      return np.asarray(st.out_tokens)

    def hf():
      with torch.inference_mode():
        return model.generate(input_ids=torch.tensor(prompt), max_new_tokens=args.new,
                              do_sample=False, eos_token_id=None, pad_token_id=0,
                              min_new_tokens=args.new)[:, args.prompt:].numpy()

    a, r = ours(), hf()  # warm-up + compile; and the two agree token for token
    agree = float((a == r).mean())
    t0 = time.perf_counter()
    ours()
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf()
    t_hf = time.perf_counter() - t0
    n = b * args.new
    print(f"{b:>6}{n / t_ours:>12.0f}{n / t_hf:>10.0f}{t_hf / t_ours:>8.2f}"
          f"   (greedy tokens equal: {agree:.0%})")


SIZES = {  # name: (hidden, intermediate, vocab); 4 layers, 8 heads / 2 kv heads
    "toy": (128, 256, 259),  # the embedded default's policy: overhead-bound
    "small": (512, 1408, 32000),  # weight-bandwidth-bound on a CPU
}

QUESTIONS = [
    ("Factor 360 into primes.", "import sympy\nprint(sympy.factorint(360))\n"),
    ("Solve x^2 - 5x + 6 = 0.",
     "import sympy\nx = sympy.symbols('x')\nprint(sympy.solve(x**2 - 5*x + 6, x))\n"),
    ("Sum the squares from 1 to 100.", "print(sum(k*k for k in range(1, 101)))\n"),
    ("How many primes are below 1000?",
     "import time\ntime.sleep(0.2)\nprint(len([p for p in range(2, 1000) if all(p % d for d "
     "in range(2, int(p**0.5) + 1))]))\n"),
]


# mixed workload: (paragraphs of prose before the cell, after it, extra seconds in the cell)
MIXED = [(0, 0, 0.0), (3, 2, 0.0), (1, 0, 0.5), (2, 1, 0.05)]


def _scripts(tok, sb, workload="uniform"):
  """(prompt ids, response ids) per question, with the real sandbox output spliced in."""
  prose = ("We reason step by step about the problem and check each part carefully before "
           "we answer. ")
  scripts = []
  for i, (q, code) in enumerate(QUESTIONS):
    before, after = 1, 1
    if workload == "mixed":
      before, after, sleep = MIXED[i]
      code = code.replace("import time\ntime.sleep(0.2)\n", "")
      if sleep:
        code = f"import time\ntime.sleep({sleep})\n" + code
    out = sb.run(("script", q), code).output
    prompt = tok.chat_ids([{"role": "user", "content": q}])
    resp = (tok.encode(prose * before + "Let me compute.\n```python\n" + code +
                       "```\n```output")
            + tok.encode(f"\n{out}\n```\n")
            + tok.encode(prose * after + f"The answer is \\boxed{{{out}}}.")
            + [tok.eos_ids[0]])
    scripts.append((prompt, resp))
  return scripts


def _train_scripted(tok, scripts, out_dir):
  """A Qwen2 (D=256, 4 layers) trained with torch until it reproduces the scripts."""
  import torch

  from hf_fixtures import make_hf_model, save_hf_model

  torch.set_num_threads(1)
  model = make_hf_model("qwen2", vocab_size=len(tok.hf), hidden_size=256,
                        intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=2)
  with torch.no_grad():
    for p in model.parameters():
      p.mul_(0.15)
  width = max(len(p) + len(r) for p, r in scripts)
  ids = torch.tensor([p + r + [0] * (width - len(p) - len(r)) for p, r in scripts])
  labels = torch.tensor([[-100] * len(p) + r + [-100] * (width - len(p) - len(r))
                         for p, r in scripts])
  opt = torch.optim.Adam(model.parameters(), lr=2e-3)
  model.train()
  t0 = time.perf_counter()
  for step in range(600):
    loss = model(input_ids=ids, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    if loss.item() < 1e-3:
      break
  print(f"# trained the scripted model: {step + 1} steps, loss {loss.item():.4f}, "
        f"{time.perf_counter() - t0:.0f}s")
  return save_hf_model(model.eval(), out_dir)


def bench_tools(args):
  import collections

  import numpy as np

  from aci_jax.model import ModelConfig
  from aci_jax.model.weights import load_params
  from aci_jax.rollout import Request, RolloutConfig, RolloutEngine
  from aci_jax.sampling import SamplingParams
  from aci_jax.sandbox import Sandbox
  from aci_jax.tokenizer import Tokenizer
  from tokenizer_fixtures import build_tokenizer

  tmp = tempfile.mkdtemp()
  cache = args.model_cache or os.path.join(tmp, "model")
  if args.workload != "uniform":
    cache += f"-{args.workload}"
  tok_dir = os.path.join(cache + "-tok")
  if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
    build_tokenizer(tok_dir, vocab_size=400)
  tok = Tokenizer.from_pretrained(tok_dir)
  with Sandbox() as sb:
    scripts = _scripts(tok, sb, args.workload)
    if not os.path.exists(os.path.join(cache, "config.json")):
      _train_scripted(tok, scripts, cache)
    cfg = ModelConfig.from_pretrained(cache)
    params = load_params(cache, cfg)
    reqs = [Request(scripts[i % len(scripts)][0], i) for i in range(args.prompts)]
    base = dict(batch_size=args.batch, max_prompt_tokens=64,
                max_new_tokens=384 if args.workload == "uniform" else 768,
                sampling=SamplingParams(greedy=True), decode_steps=32)
    variants = [("continuous + extend (ours)", {}),
                ("continuous + re-prefill", dict(resume_mode="reprefill")),
                ("barrier + extend", dict(barrier=True))]
    print(f"# {args.workload} workload, {args.prompts} prompts, batch {args.batch}, "
          f"model D=256 L=4, sandbox "
          f"{sb.config.max_workers or os.cpu_count()} workers")
    print(f"{'variant':<30}{'wall s':>8}{'cells':>7}{'idle %':>8}{'vs ours':>9}")
    ref = None
    for name, kw in variants:
      eng = RolloutEngine(cfg, tok, RolloutConfig(**base, **kw), executor=sb)
      eng.run(params, reqs[:args.batch])  # compile every bucket once
      t0 = time.perf_counter()
      result = eng.run(params, reqs)
      wall = time.perf_counter() - t0
      out, stats = result.trajectories, result.stats
      ref = ref or wall
      cells = sum(len(t.cells) for t in out)
      ok = np.mean([t.response_ids == scripts[t.prompt_index % len(scripts)][1] for t in out])
      stops = dict(collections.Counter(t.stop_reason for t in out))
      print(f"{name:<30}{wall:>8.2f}{cells:>7}{100 * stats.idle_fraction:>8.1f}"
            f"{wall / ref:>9.2f}   (scripted answers reproduced: {ok:.0%}, stops {stops}, "
            f"decode calls {stats.decode_calls}, waiting for cells "
            f"{100 * stats.cell_wait_s / wall:.1f}%)")


def bench_calls(args):
  if args.devices > 1:  # before jax loads
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
  import jax
  import jax.monitoring

  from aci_jax.data import toy
  from aci_jax.data.char_tokenizer import VOCAB_SIZE, char_tokenizer
  from aci_jax.model import ModelConfig, init_params
  from aci_jax.rollout import Request, RolloutConfig, RolloutEngine
  from aci_jax.sampling import SamplingParams

  compile_s = [0.0]

  def on_event(event, seconds, **_):
    if event.startswith("/jax/core/compile/"):  # tracing, lowering, backend compilation
      compile_s[0] += seconds

  jax.monitoring.register_event_duration_secs_listener(on_event)
  tok = char_tokenizer()
  d, f, _ = SIZES["toy"]
  cfg = ModelConfig(arch="qwen2", vocab_size=VOCAB_SIZE, hidden_size=d, intermediate_size=f,
                    num_layers=4, num_heads=8, num_kv_heads=2, head_dim=d // 8,
                    max_position_embeddings=512, eos_token_ids=tok.eos_ids,
                    dtype="bfloat16", param_dtype="float32")
  mesh = None
  if args.devices > 1:
    from aci_jax.parallel import MeshConfig, make_mesh
    mesh = make_mesh(MeshConfig(data=args.devices))
  engine = RolloutEngine(cfg, tok, RolloutConfig(
      batch_size=args.batch, max_prompt_tokens=64, max_new_tokens=args.new, decode_steps=32,
      sampling=SamplingParams(greedy=True)), mesh=mesh)
  engine.show_progress = False
  problems = toy.make_problems(args.prompts, split="train", families=("add",), seed=0)
  reqs = [Request(tok.chat_ids([{"role": "user", "content": p["problem"]}]), i)
          for i, p in enumerate(problems[:args.prompts])]
  versions = [init_params(cfg, jax.random.key(k)) for k in range(args.calls)]
  print(f"# calls: toy Qwen2 D={d} L=4 ({cfg.num_params() / 1e6:.1f}M params), f32 params, "
        f"bf16 compute, {len(reqs)} prompts x {args.new} new tokens, batch {args.batch}, "
        f"{args.devices} device(s), jax {jax.__version__} {jax.default_backend()}")
  print(f"{'call':>5}{'wall s':>9}{'compile s':>11}")
  walls, compiles = [], []
  for k, params in enumerate(versions):
    compile_s[0] = 0.0
    t0 = time.perf_counter()
    result = engine.run_local(params, reqs)
    walls.append(time.perf_counter() - t0)
    compiles.append(compile_s[0])
    assert len(result.trajectories) == len(reqs)
    print(f"{k + 1:>5}{walls[-1]:>9.2f}{compiles[-1]:>11.2f}")
  later = walls[1:]
  print(f"call 1 - mean of calls 2+: {walls[0] - sum(later) / len(later):.2f} s; compile time "
        f"in calls 2+: {sum(compiles[1:]) / len(later):.2f} s per call")


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("what", choices=["decode", "tools", "calls"])
  p.add_argument("--batches", default="1,16")
  p.add_argument("--prompt", type=int, default=32)
  p.add_argument("--new", type=int, default=128)
  p.add_argument("--capacity", type=int, default=0, help="KV slots per row (0: prompt+new+1)")
  p.add_argument("--page_size", type=int, default=0,
                 help="decode: the paged KV cache with pages of this many slots (0: contiguous)")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--size", choices=sorted(SIZES), default="small")
  p.add_argument("--prompts", type=int, default=48)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--workload", choices=["uniform", "mixed"], default="uniform")
  p.add_argument("--model-cache", default="", help="directory to save/reuse the scripted model")
  p.add_argument("--calls", type=int, default=4)
  p.add_argument("--devices", type=int, default=1)
  args = p.parse_args(argv)
  {"decode": bench_decode, "tools": bench_tools, "calls": bench_calls}[args.what](args)


if __name__ == "__main__":
  main()
