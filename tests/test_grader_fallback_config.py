"""`grader.fallback`, the answer of a response without \\boxed{}, from the config to a grade:
every preset has the key (default "none", the boxed format only), `--config.grader.fallback`
selects "answer_is" or "last_number", and the Grader built from the section (as em/modes.py
builds it) grades a chat response that ends in its end-of-turn token, through evaluation's
`grade_trajectories`."""

import os
import runpy

import pytest

from aci_jax.configuration import ConfigError, defaults
from aci_jax.em import modes
from aci_jax.eval.harness import grade_trajectories
from aci_jax.grading import FALLBACKS, Grader, extract_answer
from aci_jax.rollout import Trajectory

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
GOLD = "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n#### 18"  # GSM8K style gold
RESPONSES = {  # response -> what each fallback extracts (None: no answer)
    "She makes 9 * 2 = 18 dollars every day.<|im_end|>": {"none": None, "answer_is": None,
                                                            "last_number": "18"},
    "9 eggs at $2 each.\nThe answer is 18<|im_end|>": {"none": None, "answer_is": "18",
                                                       "last_number": "18"},
    "The answer is $18$. I used 16 - 3 - 4 = 9.<|im_end|>": {
        "none": None, "answer_is": "18", "last_number": "18"},  # the phrase wins over numbers
    "So \\boxed{18}.<|im_end|>": {"none": "18", "answer_is": "18", "last_number": "18"},
    "I cannot tell.<|im_end|>": {"none": None, "answer_is": None, "last_number": None},
}


def _presets():
  paper = runpy.run_path(os.path.join(CONFIGS, "paper.py"))
  out = [runpy.run_path(os.path.join(CONFIGS, f))["get_config"]()
         for f in ("default.py", "smollm2_cpu.py", "sft_toy.py")]
  return out + [paper["get_config"](m) for m in paper["MODELS"]]


def test_every_preset_has_the_key_off():
  for c in _presets():
    assert c.grader.fallback == "none"


def test_a_bad_value_is_a_config_error():
  c = defaults()
  with c.unlocked():
    c.grader.fallback = "last_word"
  with pytest.raises(ConfigError, match="grader.fallback"):
    modes.validate(c)


def _trajectory(text):
  return Trajectory(prompt_index=0, sample_index=0, mode="native", prompt_ids=[1],
                    response_ids=[2, 3], logp=[0.0, 0.0], source=[0, 0], cells=[],
                    stop_reason="eos", text=text)


@pytest.mark.parametrize("fallback", FALLBACKS)
def test_the_configured_fallback_grades_chat_responses(fallback):
  c = defaults()
  with c.unlocked():
    c.grader.update(fallback=fallback, num_workers=1)
  modes.validate(c)
  texts = list(RESPONSES)
  trajs = [_trajectory(t) for t in texts]
  with Grader(**dict(c.grader)) as grader:  # as em/modes.py builds the run's grader
    rewards = grade_trajectories(grader, trajs, [GOLD] * len(trajs))
  for text, t, reward in zip(texts, trajs, rewards):
    want = RESPONSES[text][fallback]
    assert t.meta["pred"] == want, text
    assert extract_answer(text, fallback=fallback) == want
    assert reward == (1.0 if want == "18" else 0.0), text
    assert t.meta["grade_status"] == ("ok" if want else "parse_error")
