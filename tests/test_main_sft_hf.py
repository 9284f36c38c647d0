"""SFT from a Hugging Face checkpoint through `aci_jax.main.run` (in process): the first logged
loss equals the masked next-token NLL that `transformers` computes for the same batch, and the
export carries the tokenizer and loads back into `transformers`."""

import json
import os

import numpy as np
import torch

from aci_jax import main as M
from aci_jax.data.sft import build_sft_data
from aci_jax.data.toy import sft_records
from aci_jax.tokenizer import Tokenizer
from tests.hf_fixtures import make_hf_model, save_hf_model
from tests.tokenizer_fixtures import build_tokenizer


def test_sft_from_hf_checkpoint_matches_transformers_loss(tmp_path):
  ckpt = tmp_path / "hf"
  build_tokenizer(ckpt)  # vocab 300 -> the model gets 304 rows
  model = make_hf_model("qwen2", seed=3, vocab_size=304)
  save_hf_model(model, ckpt)

  import importlib.util  # the real config file, overridden below
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("sft_toy", os.path.join(root, "configs",
                                                                        "sft_toy.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.init, c.model.path = "hf", str(ckpt)
  c.tokenizer = ""  # from the checkpoint directory
  c.train.steps, c.train.batch_size, c.train.log_every = 2, 8, 1
  c.optim.warmup_steps = 1
  c.data.toy_examples, c.data.seq_len = 16, 64
  c.progress = False
  workdir = M.run(c, str(tmp_path / "run"))

  records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records] == [1, 2]

  # The same first batch, scored by transformers.
  tok = Tokenizer.from_pretrained(str(ckpt))
  data, _ = build_sft_data(sft_records(16, seed=c.seed), tok, batch_size=8, seq_len=64,
                           seed=c.seed)
  batch, _ = data.batch(0)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(batch["tokens"].astype(np.int64)),
                   attention_mask=torch.tensor(batch["valid"].astype(np.int64))).logits
  logp = torch.log_softmax(logits.double(), -1)[:, :-1]
  tgt = torch.tensor(batch["tokens"][:, 1:].astype(np.int64))
  nll = -logp.gather(-1, tgt[..., None])[..., 0].numpy()
  m = (batch["loss_mask"] * batch["valid"])[:, 1:]
  want = float((nll * m).sum() / m.sum())
  np.testing.assert_allclose(records[0]["loss"], want, rtol=1e-5)
  assert records[0]["tokens"] == m.sum()

  export = os.path.join(workdir, "export", "step_2")
  assert os.path.exists(os.path.join(export, "tokenizer.json"))
  from transformers import AutoModelForCausalLM
  reloaded = AutoModelForCausalLM.from_pretrained(export)
  with torch.no_grad():
    moved = max(float((a - b).abs().max()) for a, b in zip(reloaded.parameters(),
                                                            model.parameters()))
  assert 1e-5 < moved < 1.0  # trained two steps away from the starting weights
