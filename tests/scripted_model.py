"""A tiny Qwen2 policy trained (torch, in the test process) to answer three questions with one
code cell each, verbatim: a deterministic tool-using model for rollout and EM tests."""

import torch

from aci_jax.model import ModelConfig
from aci_jax.model.weights import load_params
from aci_jax.sampling import token_texts
from aci_jax.tokenizer import Tokenizer
from hf_fixtures import make_hf_model, save_hf_model
from tokenizer_fixtures import build_tokenizer

QUESTIONS = {  # question -> (code, printed output, answer)
    "What is 6*7?": ("print(6*7)\n", "42", "42"),
    "Compute 2**10.": ("print(2**10)\n", "1024", "1024"),
    "Add 17 and 25.": ("x = 17 + 25\nprint(x)\n", "42", "42"),
}


def _fence_variants(tok):
  """Three different tokenisations of the output fence, one per question."""
  texts = token_texts(tok.hf)
  natural = tok.encode("```output")
  ids = {t: i for i, t in enumerate(texts) if t}
  split1 = [ids["`"]] * 3 + tok.encode("output")
  split2 = tok.encode("``") + [ids["`"]] + tok.encode("out") + tok.encode("put")
  variants = [natural, split1, split2]
  assert len({tuple(v) for v in variants}) == 3
  assert all(tok.decode(v) == "```output" for v in variants)
  return variants


def _script(tok, question, fence_ids):
  code, printed, answer = QUESTIONS[question]
  prompt = tok.chat_ids([{"role": "user", "content": question}])
  pre = tok.encode("```python\n") + tok.encode(f"{code}```\n")
  env = tok.encode(f"\n{printed}\n```\n")  # exactly what the engine splices
  post = tok.encode(f"The answer is \\boxed{{{answer}}}.") + [tok.eos_ids[0]]
  return prompt, pre + fence_ids + env + post, len(pre) + len(fence_ids), len(env)


def train_scripted_model(tmp):
  """A Qwen2 model trained with torch to reproduce three tool-using answers verbatim."""
  tok = Tokenizer.from_pretrained(build_tokenizer(tmp / "tok"))
  scripts = [_script(tok, q, f) for q, f in zip(QUESTIONS, _fence_variants(tok))]
  model = make_hf_model("qwen2", vocab_size=len(tok.hf), hidden_size=64, intermediate_size=128,
                        num_attention_heads=4, num_key_value_heads=2, seed=0)
  with torch.no_grad():
    for p in model.parameters():
      p.mul_(0.3)
  seqs = [p + r for p, r, _, _ in scripts]
  width = max(map(len, seqs))
  ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
  labels = torch.tensor([[-100] * len(p) + r + [-100] * (width - len(p) - len(r))
                         for p, r, _, _ in scripts])
  opt = torch.optim.Adam(model.parameters(), lr=3e-3)
  model.train()
  for step in range(400):
    loss = model(input_ids=ids, labels=labels).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    if loss.item() < 2e-3:
      break
  model.eval()
  assert loss.item() < 1e-2, loss.item()
  d = save_hf_model(model, tmp / "model")
  cfg = ModelConfig.from_pretrained(d)
  return tok, cfg, load_params(d, cfg), scripts, d


