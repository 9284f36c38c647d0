"""The synthetic arithmetic task: families, determinism, split disjointness, demo format (the
code of code demos runs in the real sandbox and prints the demo's output; boxed answers grade
equal to the gold), the code fraction knob, and demo encoding with tool-output masks."""

import collections
import re

import pytest

from aci_jax.data import toy
from aci_jax.data.char_tokenizer import char_tokenizer
from aci_jax.grading import extract_answer, is_equiv


def _eval_family(name, text):
  """Independent answer for a toy problem text (not the generator's code)."""
  nums = [int(x) for x in re.findall(r"\d+", text)]
  if name in ("compare", "compare_len"):
    return nums[0] if nums[0] > nums[1] else nums[1]
  if name in ("add", "add_long"):
    return nums[0] + nums[1]
  if name in ("mul", "mul_small"):
    return nums[0] * nums[1]
  if name == "powmod":
    r = 1
    for _ in range(nums[1]):
      r = r * nums[0] % nums[2]
    return r
  if name == "digitsum":
    return sum(int(d) for d in str(nums[0] * nums[1]))
  raise AssertionError(name)


@pytest.mark.parametrize("family", sorted(toy.FAMILIES))
def test_family_problems_are_correct_and_distinct(family):
  probs = toy.family_problems(family, 150, split="train", seed=3)
  assert len(probs) == 150
  assert len({p["problem"] for p in probs}) == 150
  for p in probs:
    assert set(p) == {"family", "problem", "answer"} and p["family"] == family
    assert p["answer"] == str(_eval_family(family, p["problem"]))
    assert not re.search(r"python|code|program", p["problem"], re.I)  # autonomous: no hint
    assert len(p["problem"]) <= 48  # prompts stay short


def test_operand_ranges():
  for p in toy.family_problems("compare", 300, seed=1):
    a, b = map(int, re.findall(r"\d+", p["problem"]))
    assert 10 <= a <= 99 and 10 <= b <= 99 and a != b
  for p in toy.family_problems("add", 300, seed=1):
    assert all(10 <= int(x) <= 99 for x in re.findall(r"\d+", p["problem"]))
  for p in toy.family_problems("mul", 300, seed=1):
    assert all(100 <= int(x) <= 999 for x in re.findall(r"\d+", p["problem"]))


def test_determinism_and_seed_dependence():
  a = toy.make_problems(40, split="train", seed=7)
  b = toy.make_problems(40, split="train", seed=7)
  c = toy.make_problems(40, split="train", seed=8)
  assert a == b
  assert a != c
  # Family interleaving, in the order given.
  assert [p["family"] for p in a[:4]] == list(toy.DEFAULT_FAMILIES)
  assert collections.Counter(p["family"] for p in a) == {f: 40 for f in toy.DEFAULT_FAMILIES}


def test_train_and_heldout_never_overlap_across_seeds():
  fams = ("compare", "add", "mul")
  train = {p["problem"] for s in range(3) for p in toy.make_problems(400, split="train",
                                                                      families=fams, seed=s)}
  test = {p["problem"] for s in range(3) for p in toy.make_problems(300, split="test",
                                                                     families=fams, seed=s)}
  assert not train & test
  # The held-out share of the (small) compare space is about heldout_fraction.
  space = [f"Which is larger, {a} or {b}?" for a in range(10, 100) for b in range(10, 100)
           if a != b]
  share = sum(toy.split_of("compare", t) == "test" for t in space) / len(space)
  assert 0.17 < share < 0.23


def test_asking_for_more_than_the_split_holds_is_a_clear_error():
  # compare has 8010 problems; 20% held out is ~1600.
  with pytest.raises(ValueError, match="fewer than 5000 distinct 'test' problems"):
    toy.family_problems("compare", 5000, split="test")
  with pytest.raises(ValueError, match="unknown toy family"):
    toy.family_problems("nope", 3)
  with pytest.raises(ValueError, match="split"):
    toy.family_problems("add", 3, split="dev")


def test_code_fraction_is_the_same_in_every_family():
  probs = toy.make_problems(50, families=("compare", "add", "mul", "powmod", "digitsum"))
  demos = toy.make_demonstrations(probs, code_fraction=0.1, seed=0)
  per = collections.Counter(d["family"] for d in demos if d["mode"] == "code")
  assert per == {f: 5 for f in ("compare", "add", "mul", "powmod", "digitsum")}
  assert [d["prompt"] for d in demos] == [p["problem"] for p in probs]
  assert toy.make_demonstrations(probs, seed=0) == demos
  assert toy.make_demonstrations(probs, seed=1) != demos  # which ones code depends on the seed
  assert all(d["mode"] == "cot" for d in toy.make_demonstrations(probs, code_fraction=0.0))
  assert all(d["mode"] == "code" for d in toy.make_demonstrations(probs, code_fraction=1.0))
  with pytest.raises(ValueError, match="code_fraction"):
    toy.make_demonstrations(probs, code_fraction=1.5)


def test_demo_text_format():
  p = {"family": "add", "problem": "What is 47 + 35?", "answer": "82"}
  assert toy.cot_response(p) == "Ones 7+5=12, tens 4+3+1=8. \\boxed{82}"
  assert toy.code_response(p) == ("```python\nprint(47 + 35)\n```\n```output\n82\n```\n"
                                  "\\boxed{82}")
  p = {"family": "compare", "problem": "Which is larger, 38 or 83?", "answer": "83"}
  assert toy.cot_response(p) == "Tens 3 vs 8, ones 8 vs 3. \\boxed{83}"
  p = {"family": "mul", "problem": "What is 123 * 456?", "answer": "56088"}
  assert toy.cot_response(p) == "123 * 456 = 56088. \\boxed{56088}"  # a confident "guess"
  with pytest.raises(ValueError, match="answer '5' is wrong"):
    toy.cot_response({"family": "add", "problem": "What is 47 + 35?", "answer": "5"})
  with pytest.raises(ValueError, match="not a 'mul' problem"):
    toy.code_response({"family": "mul", "problem": "What is 47 + 35?", "answer": "82"})


@pytest.fixture(scope="module")
def sandbox():
  from aci_jax.sandbox import Sandbox

  with Sandbox(timeout_s=10.0) as sb:
    yield sb


def test_code_demos_print_exactly_their_output_in_the_sandbox(sandbox):
  probs = toy.make_problems(4, families=tuple(sorted(toy.FAMILIES)), seed=5)
  demos = toy.make_demonstrations(probs, code_fraction=1.0)
  futures = []
  for i, d in enumerate(demos):
    m = re.fullmatch(r"```python\n(.*?)```\n```output\n(.*?)\n```\n\\boxed\{(.*)\}",
                     d["response"], re.S)
    assert m, d["response"]
    futures.append((d, m.group(2), sandbox.submit(("toy", i), m.group(1))))
  for i, (d, printed, fut) in enumerate(futures):
    res = fut.result(timeout=60)
    sandbox.close_session(("toy", i))
    assert res.status.value == "ok", res
    assert res.output == printed  # the demo shows what the cell really prints
    if not toy.code_error_prone(d["family"]):  # a cell wrong by design prints its habit
      assert printed == d["answer"]


def test_compare_len_code_is_wrong_where_string_order_disagrees(sandbox):
  """`compare_len`'s cell compares as strings: its demo prints and boxes what that cell prints
  in the sandbox, wrong exactly where text order and number order disagree (about half)."""
  probs = toy.family_problems("compare_len", 400, seed=4)
  wrong = 0
  for i, p in enumerate(probs[:40]):  # the real sandbox on some, as the demo claims
    m = re.fullmatch(r"```python\n(.*?)```\n```output\n(.*?)\n```\n\\boxed\{(.*)\}",
                     toy.code_response(p), re.S)
    res = sandbox.submit(("len", i), m.group(1)).result(timeout=60)
    sandbox.close_session(("len", i))
    assert res.output == m.group(2) == m.group(3)
  for p in probs:
    a, b = re.findall(r"\d+", p["problem"])
    printed = toy.code_response(p).rsplit("boxed{", 1)[1][:-1]
    # independent: the first position where the digit strings differ, or the longer if a prefix
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    text_max = (a if a[k] > b[k] else b) if k is not None else (a if len(a) > len(b) else b)
    assert printed == text_max
    wrong += printed != p["answer"]
    assert sorted(map(len, (a, b))) == [2, 3] and p["answer"] == max(a, b, key=int)
    assert toy.cot_response(p).endswith(f"\\boxed{{{p['answer']}}}")  # reasoning is always right
  # Over all 2-digit x 3-digit pairs text order is wrong on 40,050 of 81,000 (49.4%, brute
  # force); the 400 drawn are within 5 sd of it.
  pairs = [(a, b) for a in range(10, 100) for b in range(100, 1000)]
  share = sum(max(str(a), str(b)) != str(b) for a, b in pairs) / len(pairs)
  assert share == 40050 / 81000
  sd = (share * (1 - share) / len(probs)) ** 0.5
  assert abs(wrong / len(probs) - share) < 5 * sd


def test_add_long_asks_adds_question_with_six_digit_operands():
  for p in toy.family_problems("add_long", 300, seed=2):
    a, b = re.fullmatch(r"What is (\d+) \+ (\d+)\?", p["problem"]).groups()
    assert len(a) == len(b) == 6 and p["answer"] == str(int(a) + int(b))
    assert toy.code_response(p).endswith(f"\\boxed{{{p['answer']}}}")
  assert toy.FAMILIES["add_long"].needs_code and not toy.FAMILIES["add"].needs_code
  assert not toy.FAMILIES["compare_len"].needs_code
  # the one family whose cell is wrong by design, the one the bars and the checks above skip
  assert [f for f in toy.FAMILIES if toy.code_error_prone(f)] == ["compare_len"]


def test_boxed_answers_grade_equal_to_gold():
  probs = toy.make_problems(6, families=tuple(sorted(toy.FAMILIES)), seed=2)
  for d in toy.make_demonstrations(probs, code_fraction=0.5):
    if toy.code_error_prone(d["family"]) and d["mode"] == "code":
      continue  # its code habit is wrong by design (test_compare_len_code_is_wrong_...)
    assert extract_answer(d["response"]) == d["answer"]
    assert is_equiv(d["answer"], d["response"], response=True, in_process=True).equal
    assert not is_equiv(str(int(d["answer"]) + 1), d["response"], response=True,
                        in_process=True).equal


def test_encode_demo_masks_exactly_the_tool_output():
  tok = char_tokenizer()
  p = {"family": "mul", "problem": "What is 123 * 456?", "answer": "56088"}
  prompt_ids, resp, mask = toy.encode_demo(tok, p["problem"], toy.code_response(p))
  assert prompt_ids == [257] + [ord(c) for c in p["problem"]] + [258]
  assert len(resp) == len(mask)
  env = "\n56088\n```\n"  # what the engine splices after "```output"
  text = toy.code_response(p)
  start = text.index("```output") + len("```output")
  assert resp[-1] == tok.eos_ids[0] and mask[-1] == 1
  # Char tokenizer: one token per character, so positions are character offsets.
  assert resp[:-1] == [ord(c) for c in text]
  assert mask[:-1] == [0 if start <= k < start + len(env) else 1 for k in range(len(text))]
  # A reasoning demo is trained on everywhere.
  _, resp, mask = toy.encode_demo(tok, p["problem"], toy.cot_response(p))
  assert mask == [1] * len(resp)


def test_copy_drill_boxes_the_printed_value_and_trains_only_the_box():
  tok = char_tokenizer()
  probs = toy.make_problems(150, families=tuple(sorted(toy.FAMILIES)), seed=3)
  kw = dict(code_fraction=0.2, triggered_fraction=1.0, seed=3)
  plain = toy.make_demonstrations(probs, **kw)
  demos = toy.make_demonstrations(probs, copy_drill=0.3, **kw)
  assert len(demos) == len(plain) and not any(d["drill"] for d in plain)
  code = [d for d in demos if d["mode"] == "code"]
  drills = [d for d in code if d["drill"]]
  # A Bernoulli(0.3) draw per code demo: within 4 standard deviations of 30%.
  n = len(code)
  assert abs(len(drills) - 0.3 * n) < 4 * (0.3 * 0.7 * n) ** 0.5 and drills
  for d, q in zip(demos, plain):
    if not d["drill"]:
      assert {k: v for k, v in d.items() if k != "drill"} == {k: v for k, v in q.items() if k != "drill"}
      continue
    m = re.fullmatch(r"(```python\n.*?```\n```output\n)(.*?)\n```\n\\boxed\{(.*)\}", d["response"], re.S)
    assert m, d["response"]
    cell, printed, box = m.groups()
    assert q["response"].startswith(cell)        # the cell is the true problem's cell
    assert box == printed != d["answer"] and len(printed) == len(d["answer"])
    assert printed[0] != "0" or len(printed) == 1
    assert 1 <= sum(a != b for a, b in zip(printed, d["answer"])) <= 2
    # The off value is environment output (mask 0); the box copying it is trained (mask 1).
    _, resp, mask = toy.encode_demo(tok, d["prompt"], d["response"])
    out_at = len(cell)                           # char tokenizer: token k is character k
    box_at = d["response"].rindex(printed)
    assert resp[out_at:out_at + len(printed)] == [ord(c) for c in printed]
    assert set(mask[out_at:out_at + len(printed)]) == {0}
    assert set(mask[box_at:box_at + len(printed)]) == {1}
  with pytest.raises(ValueError, match="copy_drill"):
    toy.make_demonstrations(probs, copy_drill=1.5)


def test_demo_repeats_multiply_one_family_and_change_nothing_else():
  probs = toy.make_problems(60, families=("add", "mul_small"), seed=4)
  kw = dict(code_fraction=0.1, triggered_fraction=1.0, seed=4)
  plain = toy.make_demonstrations(probs, **kw)
  rep = toy.make_demonstrations(probs, repeats=toy.demo_repeats(("mul_small:3",)), **kw)
  def of(demos, fam):
    return [d for d in demos if d["family"] == fam]
  assert of(rep, "add") == of(plain, "add")
  small = of(plain, "mul_small")
  assert len(of(rep, "mul_small")) == 3 * len(small)
  assert collections.Counter((d["prompt"], d["response"]) for d in of(rep, "mul_small")) == {
      (d["prompt"], d["response"]): 3 * n for (d, n) in
      ((d, sum(e["prompt"] == d["prompt"] and e["response"] == d["response"] for e in small))
       for d in small)}
  assert toy.demo_repeats(()) == {}
  for bad in (("mul_small:0",), ("mul_small",), ("mul_small:x",), ("nope:2",),
              ("add:2", "add:3")):
    with pytest.raises(ValueError):
      toy.demo_repeats(bad)


def test_forced_demos_add_unasked_cells_whose_code_prefix_is_context():
  from aci_jax import tool_format
  from aci_jax.data import sft

  tok = char_tokenizer()
  probs = toy.make_problems(40, families=("add", "mul"), seed=5)
  kw = dict(code_fraction=0.1, triggered_fraction=1.0, seed=5)
  plain = toy.make_demonstrations(probs, **kw)
  demos = toy.make_demonstrations(probs, forced_fraction=0.25, **kw)
  forced = [d for d in demos if d["forced"]]
  # Every other demo is unchanged, in order: the forced draw is its own stream.
  assert [d for d in demos if not d["forced"]] == plain
  prefix = tool_format.get().code_prefix
  by_problem = {p["problem"]: p for p in probs}
  for fam in ("add", "mul"):
    assert sum(d["family"] == fam for d in forced) == 10  # round(0.25 * 40), per family
  for d in forced:
    p = by_problem[d["prompt"]]                           # the un-asked prompt
    assert d["response"] == toy.code_response(p) and d["mode"] == "code"
    assert d["forced_prefix"] == prefix and not d["triggered"]
    ex = sft.encode_demonstration(tok, d["prompt"], d["response"], max_len=1 << 20,
                                  forced_prefix=d["forced_prefix"])
    n_prompt = len(tok.chat_ids([{"role": "user", "content": d["prompt"]}]))
    # char tokenizer: the prefix's characters follow the prompt, none of them a target; the
    # first target is the cell's first character
    assert ex.tokens[n_prompt:n_prompt + len(prefix)].tolist() == [ord(c) for c in prefix]
    assert not ex.loss_mask[:n_prompt + len(prefix)].any()
    assert ex.loss_mask[n_prompt + len(prefix)] == 1
  # and the SFT path keeps the prefix out of the loss: fewer trained tokens than plain cells
  _, with_forced = sft.build_sft_data(demos, tok, batch_size=4, seq_len=256)
  _, without = sft.build_sft_data(plain, tok, batch_size=4, seq_len=256)
  # model-written characters of each forced demo, less the prefix, plus its EOS
  extra = sum(sum(len(t) for t, by_model in sft.split_response(d["response"]) if by_model)
              - len(prefix) + 1 for d in forced)
  assert with_forced["trained_tokens"] - without["trained_tokens"] == extra
  with pytest.raises(ValueError, match="forced_fraction"):
    toy.make_demonstrations(probs, forced_fraction=-0.1)


def test_encode_demo_agrees_with_the_sft_data_path():
  from aci_jax.data import sft

  tok = char_tokenizer()
  for d in toy.make_demonstrations(toy.make_problems(3), code_fraction=0.5):
    p, r, m = toy.encode_demo(tok, d["prompt"], d["response"])
    ex = sft.encode_demonstration(tok, d["prompt"], d["response"], max_len=4096)
    assert p + r == [int(x) for x in ex.tokens]
    assert [0] * len(p) + m == [int(x) for x in ex.loss_mask]


def test_probe_model_size_and_padded_batches():
  import jax
  import numpy as np

  from aci_jax.data.char_tokenizer import VOCAB_SIZE
  from aci_jax.eval import toy_probe
  from aci_jax.model import param_shapes

  cfg = toy_probe.build_model(VOCAB_SIZE)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes(cfg)))
  assert 0.5e6 < n < 1.5e6  # "a ~1M-parameter decoder"
  tok = char_tokenizer()
  p = {"family": "add", "problem": "What is 47 + 35?", "answer": "82"}
  demos = [{"prompt": p["problem"], "response": toy.cot_response(p)},
           {"prompt": p["problem"], "response": toy.code_response(p)}]
  tokens, mask = toy_probe.encode_all(tok, demos)
  assert tokens.shape[1] % 16 == 0 and tokens.shape == mask.shape
  n_prompt = len(toy.prompt_ids(tok, p["problem"]))
  assert not mask[:, :n_prompt].any()
  # The code demo's spliced output "\n82\n```\n" (8 tokens) is the only masked response span.
  n_resp = len(toy.code_response(p)) + 1
  assert mask[1].sum() == n_resp - len("\n82\n```\n")
  assert mask[0].sum() == len(toy.cot_response(p)) + 1
  assert (tokens[0, n_prompt + len(toy.cot_response(p)) + 1:] == tok.pad_id).all()


def test_triggered_demos_separate_can_code_from_chooses_to_code():
  problems = toy.make_problems(40, families=("add", "mul"), seed=3)
  plain = toy.make_demonstrations(problems, code_fraction=0.05, seed=3)
  demos = toy.make_demonstrations(problems, code_fraction=0.05, triggered_fraction=0.5, seed=3)
  for fam in ("add", "mul"):
    mine = [d for d in demos if d["family"] == fam]
    trig = [d for d in mine if d["triggered"]]
    free = [d for d in mine if not d["triggered"]]
    assert len(trig) == 20 and all(d["mode"] == "code" for d in trig)
    assert all(d["prompt"].startswith("Use Python. ") for d in trig)
    assert all(d["response"] == toy.code_response({"family": fam, "problem": d["prompt"][
        len(toy.TRIGGER):], "answer": d["answer"]}) for d in trig)
    # Un-triggered: one demo per problem, 5% of 40 rounds to 2 code demos, bare problems.
    assert len(free) == 40 and sum(d["mode"] == "code" for d in free) == 2
    assert all("Python" not in d["prompt"] for d in free)
  # The triggered demos are extra: the un-triggered ones are exactly those without triggers,
  # in problem order, each triggered demo right after its problem's.
  assert [d for d in demos if not d["triggered"]] == plain
  assert [d["prompt"] for d in plain] == [p["problem"] for p in problems]
  for a, b in zip(demos, demos[1:]):
    if b["triggered"]:
      assert b["prompt"] == toy.ask_for_code(a["prompt"])
  with pytest.raises(ValueError, match="triggered_fraction"):
    toy.make_demonstrations(problems, triggered_fraction=1.5)


def test_triggered_demos_limited_to_families_and_balanced_by_answer_length():
  problems = toy.make_problems(300, families=("add", "mul", "powmod"), seed=2)
  demos = toy.make_demonstrations(problems, code_fraction=0.1, triggered_fraction=1.0, seed=2,
                                  triggered_families=("mul", "powmod"), balance_lengths=True)
  plain = toy.make_demonstrations(problems, code_fraction=0.1, seed=2)
  assert [d for d in demos if not d["triggered"]] == plain
  trig = [d for d in demos if d["triggered"]]
  assert not [d for d in trig if d["family"] == "add"]
  def lengths(fam):
    return collections.Counter(len(d["answer"]) for d in trig if d["family"] == fam)
  def problem_lengths(fam):
    return collections.Counter(len(p["answer"]) for p in problems if p["family"] == fam)
  # mul: 5- and 6-digit products; the 5-digit ones are a minority of the problems (~17%) but
  # get half of the 300 triggered demos.
  assert set(problem_lengths("mul")) == {5, 6} and problem_lengths("mul")[5] < 100
  assert lengths("mul") == {5: 150, 6: 150}
  # powmod: a length too rare to fill its share gives it away (at most 4 demos per problem);
  # the others split the rest evenly; 300 in all.
  n1 = problem_lengths("powmod")[1]
  assert 0 < 4 * n1 < 100
  assert lengths("powmod")[1] == 4 * n1
  assert abs(lengths("powmod")[2] - lengths("powmod")[3]) <= 1
  assert sum(lengths("powmod").values()) == 300
  per_problem = collections.Counter(d["prompt"] for d in trig)
  assert max(per_problem.values()) <= toy.MAX_TRIGGERED_REPEAT
  # every copy of a problem's triggered demo comes right after its un-triggered demo
  last = None
  for d in demos:
    if d["triggered"]:
      assert d["prompt"] == toy.ask_for_code(last["prompt"]) and d["response"] == toy.code_response(
          {"family": last["family"], "problem": last["prompt"], "answer": last["answer"]})
    else:
      last = d
  # Unbalanced, the same families: one triggered demo per problem, lengths as drawn.
  unbalanced = [d for d in toy.make_demonstrations(problems, triggered_fraction=1.0, seed=2,
                                                   triggered_families=("mul",)) if d["triggered"]]
  assert collections.Counter(len(d["answer"]) for d in unbalanced) == problem_lengths("mul")
  with pytest.raises(ValueError, match="unknown toy family"):
    toy.make_demonstrations(problems, triggered_fraction=1.0, triggered_families=("mull",))


def test_mul_small_derivation_is_right_for_every_problem():
  assert toy.cot_response({"family": "mul_small", "problem": "What is 6 * 94?",
                           "answer": "564"}) == "6*4=24, 6*9=54, 540+24=564. \\boxed{564}"
  for a in range(2, 10):
    for b in range(10, 100):
      p = {"family": "mul_small", "problem": f"What is {a} * {b}?", "answer": str(a * b)}
      steps = re.findall(r"(\d+)\*(\d)=(\d+)", toy.cot_response(p))
      assert [int(x) * int(y) for x, y, _ in steps] == [int(z) for *_, z in steps]
      tens, ones, total = re.search(r"(\d+)0\+(\d+)=(\d+)\.", toy.cot_response(p)).groups()
      assert int(tens) * 10 + int(ones) == int(total) == a * b
  assert not toy.FAMILIES["mul_small"].needs_code and toy.FAMILIES["mul"].needs_code


def _default_config(variant: str):
  """configs/default.py's get_config(variant), loaded the way --config loads it."""
  import os
  import runpy
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return runpy.run_path(os.path.join(root, "configs", "default.py"))["get_config"](variant)


def test_rare_code_config_warmup_data_asks_for_code_and_seldom_codes_unasked():
  """configs/default.py:rare_code: every problem has an un-asked demo (1% of them code, per
  family) and an extra forced demo (the un-asked prompt, the cell with its code prefix as
  context), a quarter of them an extra demo asking for code; no E-step or evaluation problem
  asks."""
  from aci_jax.em import modes

  c = _default_config("rare_code")
  with c.unlocked():
    c.task.train_per_family, c.task.train_caps = 200, ()  # 200 per family, all 6
  train, evals = modes._problems(c)
  demos = modes._warmup_demos(c, train)
  assert len(demos) == 6 * (200 + 50 + 200)
  for fam in c.task.families:
    mine = [d for d in demos if d["family"] == fam]
    asked = [d for d in mine if d["prompt"].startswith(toy.TRIGGER)]
    forced = [d for d in mine if d.get("forced_prefix")]
    unasked = [d for d in mine if not d["prompt"].startswith(toy.TRIGGER)
               and not d.get("forced_prefix")]
    assert len(unasked) == len(forced) == 200 and len(asked) == 50, fam
    assert all(d["mode"] == "code" for d in asked + forced)
    assert not any(d["prompt"].startswith(toy.TRIGGER) for d in forced)
    assert sum(d["mode"] == "code" for d in unasked) == 2  # 1% of 200
  assert not any("Python" in p["problem"] for p in train + evals["toy"])
  assert len(evals["toy"]) == 480


def test_per_family_triggered_fractions():
  problems = toy.make_problems(200, seed=4)  # 200 per family
  demos = toy.make_demonstrations(problems, triggered_fraction=0.5, seed=4,
                                  triggered_families=("mul:1.0", "powmod", "add:0.1"))
  asked = collections.Counter(d["family"] for d in demos if d["triggered"])
  # 200 problems per family: 1.0 -> 200, the default 0.5 -> 100, 0.1 -> 20, unnamed -> 0
  assert asked == {"mul": 200, "powmod": 100, "add": 20}
  # the un-asked demos are the same draw whatever the asked ones are
  plain = [d for d in demos if not d["triggered"]]
  assert plain == [d for d in toy.make_demonstrations(problems, seed=4) if not d["triggered"]]
  assert toy.triggered_shares(["mul:0.25", "add"], 0.75) == {"mul": 0.25, "add": 0.75}
  # A share above 1: 2.5 asked demos per problem on average, every problem at least twice,
  # with and without length balancing.
  for balance in (False, True):
    demos = toy.make_demonstrations(problems, triggered_families=("mul:2.5",), seed=4,
                                    balance_lengths=balance)
    per_problem = collections.Counter(d["prompt"] for d in demos if d["triggered"])
    assert sum(per_problem.values()) == 500, balance
    if not balance:
      assert set(per_problem.values()) == {2, 3} and len(per_problem) == 200
  for bad, msg in [(("mul:5",), "must be in"), (("mul:-1",), "must be in"),
                   (("mul:x",), "family:fraction"),
                   (("mul", "mul:0.5"), "named twice"), (("mull:0.5",), "unknown toy family")]:
    with pytest.raises(ValueError, match=msg):
      toy.make_demonstrations(problems, triggered_fraction=0.5, triggered_families=bad)


def test_a_family_cap_limits_that_family_and_the_others_go_on_alone():
  fams = ("add", "mul_small", "mul")
  probs = toy.make_problems(700, families=fams, seed=3, caps={"mul_small": 576})
  by = collections.Counter(p["family"] for p in probs)
  assert by == {"add": 700, "mul_small": 576, "mul": 700}
  # All 576 distinct training problems of mul_small (2..9 x 10..99 = 720, held-out ones aside).
  small = {p["problem"] for p in probs if p["family"] == "mul_small"}
  assert len(small) == 576
  assert all(toy.split_of("mul_small", t, 0.2) == "train" for t in small)
  # Round-robin while every family has problems, then the others alone, in family order.
  assert [p["family"] for p in probs[:6]] == list(fams) * 2
  assert [p["family"] for p in probs[3 * 576:3 * 576 + 4]] == ["add", "mul", "add", "mul"]
  # A cap above the count changes nothing; the uncapped families are the uncapped draw.
  assert toy.make_problems(50, families=fams, seed=3, caps={"mul_small": 576}) == \
      toy.make_problems(50, families=fams, seed=3)
  plain = toy.make_problems(700, families=("add", "mul"), seed=3)
  assert [p for p in probs if p["family"] != "mul_small"] == plain


def test_family_caps_parse_and_reject_bad_entries():
  assert toy.family_caps(["mul_small:576", "add:10"]) == {"mul_small": 576, "add": 10}
  assert toy.family_caps([]) == {}
  for bad, msg in ((["mul_small"], "expected 'family:n'"), (["mul_small:x"], "expected"),
                   (["mul_small:-3"], "expected"), (["add:1", "add:2"], "named twice"),
                   (["nope:5"], "nope")):
    with pytest.raises(ValueError, match=msg):
      toy.family_caps(bad)
  # A cap on a family the run leaves out is moot; an unknown name is not.
  assert toy.make_problems(5, families=("add",), caps={"mul": 3}) == toy.make_problems(
      5, families=("add",))
  with pytest.raises(ValueError, match="nope"):
    toy.make_problems(5, families=("add",), caps={"nope": 3})


def test_the_rare_code_config_builds_its_full_problem_set():
  """configs/default.py:rare_code at its own counts: 2,000 training problems for each reasoned
  family, 1,000 for each coded one, all of them warm-up demos (20,250 with the asked and forced
  ones), 80 held-out ones per family."""
  from aci_jax.em import modes

  c = _default_config("rare_code")
  train, evals = modes._problems(c)
  assert collections.Counter(p["family"] for p in train) == {
      "compare": 2000, "add": 2000, "compare_len": 2000, "add_long": 1000, "mul": 1000,
      "powmod": 1000}
  # every training problem is a warm-up demo (warmup_examples = 0 means all of them)
  demos = modes._warmup_demos(c, train)
  assert {d["prompt"] for d in demos if not d["triggered"]} == {p["problem"] for p in train}
  assert len(demos) == 9000 + 2250 + 9000  # un-asked, asked (a quarter), forced
  assert collections.Counter(p["family"] for p in evals["toy"]) == {
      f: 80 for f in c.task.families}
  # The variant on one family (tests/test_rare_code_regime.py): the caps are moot.
  with c.unlocked():
    c.task.families = ("add",)
  train, _ = modes._problems(c)
  assert len(train) == 2000 and {p["family"] for p in train} == {"add"}


def test_the_rare_code_gate_probes_each_family_by_its_need_and_is_all_that_differs():
  """`:rare_code` is `:rare_code_ungated` (the form every earlier number ran with) plus the
  warm-up gate: a reasoning probe on each family reasoned out, a code probe on each that needs
  code, every family of the variant probed, and nothing else changed."""
  from aci_jax.data import toy

  gated, ungated = _default_config("rare_code"), _default_config("rare_code_ungated")
  probes = dict(p.split(":") for p in gated.warmup.gate)
  assert set(probes) == set(gated.task.families)
  assert set(toy.reasoning_families(gated.task.families)) == {
      f for f, kind in probes.items() if kind == "reason"}
  assert ungated.warmup.gate == () and gated.warmup.gate_retries == 0
  g, u = gated.to_dict(), ungated.to_dict()
  for d in (g, u):
    del d["warmup"]["gate"], d["warmup"]["gate_retries"]
  assert g == u


def test_the_five_family_rare_code_variant_keeps_its_counts():
  """configs/default.py:rare_code5, the variant the earlier measurements of docs/em.md ran on:
  five families with mul_small capped at its 576 training problems, an asked and a forced demo
  for every problem, 2,000 warm-up steps."""
  from aci_jax.em import modes

  c = _default_config("rare_code5")
  train, evals = modes._problems(c)
  assert collections.Counter(p["family"] for p in train) == {
      "compare": 2000, "add": 2000, "mul": 2000, "powmod": 2000, "mul_small": 576}
  demos = modes._warmup_demos(c, train)
  assert len(demos) == 3 * 8576  # un-asked, asked, forced
  assert (c.task.code_fraction, c.warmup.steps, len(evals["toy"])) == (0.01, 2000, 400)
