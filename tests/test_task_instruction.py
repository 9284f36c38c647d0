"""The answer-format instruction (`task.instruction`): the paper presets put Qwen2.5-Math's
"Please reason step by step, and put your final answer within \\boxed{}." after every problem,
in the user message of the E-step / evaluation prompt (em/modes.py `prompt_builder`, the one
framing of both) and of the warm-up demonstrations, rendered by a SmolLM2-style ChatML template
(which adds its own system message when the run gives none). The toy's prompts and warm-up
demonstrations are unchanged."""

import json
import os
import runpy

import pytest

from aci_jax.data import toy
from aci_jax.data.char_tokenizer import char_tokenizer
from aci_jax.data.sft import encode_demonstration
from aci_jax.em import modes
from aci_jax.tokenizer import load_tokenizer
from tokenizer_fixtures import build_tokenizer

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# SmolLM2-135M-Instruct's chat template (as shipped in its tokenizer_config.json).
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
SMOL_SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
               "Hugging Face<|im_end|>\n")


def _config(name, *args):
  return runpy.run_path(os.path.join(CONFIGS, name))["get_config"](*args)


@pytest.fixture(scope="module")
def smol_tok(tmp_path_factory):
  return load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("smol"), chat_template=SMOLLM2))


def test_every_paper_preset_asks_for_the_boxed_format():
  paper = runpy.run_path(os.path.join(CONFIGS, "paper.py"))
  for c in [paper["get_config"](m) for m in paper["MODELS"]] + [_config("smollm2_cpu.py")]:
    assert c.task.name == "jsonl" and c.task.instruction == INSTRUCTION
  assert _config("default.py").task.instruction == ""


def test_the_instruction_reaches_the_rendered_prompt(smol_tok):
  config = _config("smollm2_cpu.py")
  ids = modes.prompt_builder(config, smol_tok)("What is 2+3?")
  assert smol_tok.decode(ids) == (
      SMOL_SYSTEM + "<|im_start|>user\nWhat is 2+3?\n\n" + INSTRUCTION + "<|im_end|>\n"
      "<|im_start|>assistant\n")
  # data.system replaces the template's default system message; the instruction stays.
  with config.unlocked():
    config.data.system = "You are a careful mathematician."
  ids = modes.prompt_builder(config, smol_tok)("What is 2+3?")
  assert smol_tok.decode(ids) == (
      "<|im_start|>system\nYou are a careful mathematician.<|im_end|>\n<|im_start|>user\n"
      "What is 2+3?\n\n" + INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n")


def test_warmup_demonstrations_have_the_prompts_of_the_estep(smol_tok, tmp_path):
  """A warm-up demonstration's prompt tokens are exactly the E-step / evaluation prompt of the
  same problem (the policy is trained on the prompts it is asked)."""
  demos = [{"prompt": "What is 6*7?", "response": "6*7 = 42. The answer is \\boxed{42}."},
           {"prompt": "What is 2**10?",
            "response": "```python\nprint(2**10)\n```\n```output\n1024\n```\n\\boxed{1024}."}]
  path = tmp_path / "demos.jsonl"
  path.write_text("".join(json.dumps(d) + "\n" for d in demos))
  for system in ("", "Be brief."):
    config = _config("smollm2_cpu.py")
    with config.unlocked():
      config.warmup.data_path, config.data.system = str(path), system
    prompt_fn = modes.prompt_builder(config, smol_tok)
    out = modes._warmup_demos(config, [])
    assert [d["response"] for d in out] == [d["response"] for d in demos]
    for d, raw in zip(out, demos):
      ex = encode_demonstration(smol_tok, d["prompt"], d["response"], max_len=512,
                                system=config.data.system or None)
      prompt = prompt_fn(raw["prompt"])
      assert list(ex.tokens[:len(prompt)]) == prompt
      assert INSTRUCTION in smol_tok.decode(prompt)
      assert ex.loss_mask[:len(prompt)].sum() == 0  # the prompt is not trained


def test_toy_prompts_and_demonstrations_are_unchanged():
  config = _config("default.py")
  tok = char_tokenizer()
  problem = toy.make_problems(1, split="train", seed=0)[0]["problem"]
  assert modes.prompt_builder(config, tok)(problem) == list(
      tok.chat_ids([{"role": "user", "content": problem}]))
  train = toy.make_problems(20, split="train", seed=0)
  with config.unlocked():
    config.task.warmup_examples = 40
  # The toy demos carry no instruction: exactly toy.make_demonstrations' output for the
  # default's data settings (its asked-for-code demos included, written out here).
  assert modes._warmup_demos(config, train) == toy.make_demonstrations(
      train[:40], code_fraction=0.1, seed=config.seed, triggered_fraction=1.0,
      triggered_families=("mul:1.0", "powmod:0.5", "add:0.25", "compare:0.25"),
      balance_lengths=True)


def test_triggered_demo_keys_reach_the_warmup_demonstrations():
  config = _config("default.py")
  train = toy.make_problems(30, split="train", seed=0)
  with config.unlocked():
    config.task.update(warmup_examples=120, triggered_fraction=1.0, triggered_families=("mul",),
                       triggered_length_balance=True)
  demos = modes._warmup_demos(config, train)
  assert demos == toy.make_demonstrations(
      train, code_fraction=config.task.code_fraction, seed=config.seed, triggered_fraction=1.0,
      triggered_families=("mul",), balance_lengths=True)
  trig = [d for d in demos if d["triggered"]]
  assert {d["family"] for d in trig} == {"mul"} and len(trig) == 30
  # balanced: as many 5-digit products as 6-digit ones among the asked demos
  assert sum(len(d["answer"]) == 5 for d in trig) == 15


def test_zero_warmup_examples_means_every_training_problem():
  config = _config("default.py")
  train = toy.make_problems(10, split="train", seed=0)  # 40 problems, 10 per family
  with config.unlocked():
    config.task.warmup_examples = 0
  every = modes._warmup_demos(config, train)
  with config.unlocked():
    config.task.warmup_examples = 25
  first = modes._warmup_demos(config, train)
  def problems_of(demos):  # an un-triggered demo's prompt is its problem
    return {d["prompt"] for d in demos if not d["triggered"]}
  assert problems_of(every) == {p["problem"] for p in train}
  assert problems_of(first) == {p["problem"] for p in train[:25]}
