"""Child process of tests/test_interrupt.py: one RolloutEngine.run whose single decode call is
long (every row decodes `steps` tokens in one call; no row can end early: the end-of-turn logits
are zeroed, so greedy decoding of the random model never picks them).

  python tests/interrupt_child.py HIDDEN LAYERS ROWS STEPS

Prints "DISPATCHED" once the decode call is compiled and dispatched (the device is busy from
then on), and on Ctrl-C "INTERRUPTED in_flight=<bool>": whether that call was still running
when Python raised KeyboardInterrupt (False would mean the host sat in a blocking wait until
the call finished). It then leaves with os._exit(130): a normal interpreter exit waits in the
XLA runtime's teardown (no Python frame) until the in-flight call ends, 29 s measured here.
"""

import os
import sys
import time

import jax

from aci_jax.data.char_tokenizer import VOCAB_SIZE, char_tokenizer
from aci_jax.model import ModelConfig, init_params
from aci_jax.rollout import Request, RolloutConfig, RolloutEngine
from aci_jax.sampling import SamplingParams
from aci_jax.sampling import sampler as S


def main(hidden: int, layers: int, rows: int, steps: int) -> None:
  tok = char_tokenizer()
  cfg = ModelConfig(arch="qwen2", vocab_size=VOCAB_SIZE, hidden_size=hidden,
                    intermediate_size=2 * hidden, num_layers=layers, num_heads=4, num_kv_heads=2,
                    head_dim=hidden // 4, max_position_embeddings=steps + 64,
                    eos_token_ids=tok.eos_ids)
  params = init_params(cfg, jax.random.key(0))
  # Special tokens (256+, end of turn among them) get logit 0; greedy picks a positive one.
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"].at[:, 256:].set(0.0)
  engine = RolloutEngine(cfg, tok, RolloutConfig(
      batch_size=rows, max_prompt_tokens=32, max_new_tokens=steps, decode_steps=steps,
      sampling=SamplingParams(greedy=True)))
  dispatched = []
  decode = S.decode

  def traced(*args, **kw):  # the scheduler calls S.decode by attribute at every round
    out = decode(*args, **kw)
    dispatched.append(out[0].status)
    print("DISPATCHED", flush=True)
    return out

  S.decode = traced
  t0 = time.perf_counter()
  try:
    result = engine.run(params, [Request(tok.encode("Q: 1+1?"), i) for i in range(rows)])
  except KeyboardInterrupt:
    print(f"INTERRUPTED in_flight={not dispatched[-1].is_ready()}", flush=True)
    os._exit(130)
  print(f"DONE {time.perf_counter() - t0:.1f}s decode_calls={result.stats.decode_calls}",
        flush=True)


if __name__ == "__main__":
  main(*(int(a) for a in sys.argv[1:5]))
