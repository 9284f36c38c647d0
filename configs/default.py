"""The embedded default: the whole AutoCode method on a synthetic arithmetic task, on a CPU.

  python -m aci_jax.main --config configs/default.py [--workdir DIR] [--config.em.algorithm=grpo]

A ~1.3M-parameter Llama-architecture policy is trained from scratch with the production code
paths (model, sampler, sandbox, grader, trainer): warm-up SFT on demonstrations where un-asked
code is rare (10% in every family) plus demos that ask for code, then EM iterations that teach
it to *reason* on the families it can do in its head (compare, add) and to *write code* on
those it cannot (mul, powmod). Writes summary.json and plots/*.png in the workdir. Values here
are our choices for a laptop-sized run; configs/paper.py carries the paper's settings.
Measured (docs/em.md, "Item 1"): held-out accuracy 0.42-0.51 after the warm-up, 0.88-0.98
after the third EM iteration; every bar of issue 16's item 1 (`python -m
aci_jax.eval.learning_bars WORKDIR`) met on seeds 1, 3, 4, 5 (2026-12-03, before the warm-up
gate and the KL anchor), 2 and 7 (with the gate), 8 and 9 (with the gate and the anchor,
2026-12-06: 0.51 -> 0.99 and 0.47 -> 0.96); on 100 problems per family with this default,
seeds 1, 3, 6, 7, 8, 9, 10 (seeds 1, 3 and the held-out 10 end to end: 0.465 -> 0.925,
0.4725 -> 0.955, 0.485 -> 0.95), and seed 2 end to end with the tail's average (2026-12-06:
0.48 -> 0.94, gate passed at 2,250 steps), and the held-out seed 11 (a late one, its gate
closed at its cap on the average: 0.4875 -> 0.9275). The held-out seed 12 misses by one
problem (`mul` 0.79 at 100% code, 0.485 -> 0.8925): its box copy miscopies products with a
repeated digit, as seed 2's first warm-up did (docs/em_log.md, "Seed 12, held out"). The
held-out seed 13 passes (0.4875 -> 0.98).
Seed 6's `add` reasoning wore to 0.91 without the anchor and holds at 0.96 with it (EM from its
warm-up, 100 problems per family). Seed 2 missed until then: on the code of 2026-12-05 its
warm-up path was late (gate at its cap, `mul` 0.71-0.78 after EM); today's code puts it on
another path (every probe >= 0.875 at step 2,000) and the tail's average passed its gate.
A warm-up whose gate closes well short (weakest probe under 0.8) is retried once from other
training problems, initial weights and data order (`warmup.gate_retries`, `gate_retry_below`).
A run is ~30-40 minutes on an idle 2-core VM (2,000-3,500 warm-up steps of
0.6-1.0 s, then ~5 minutes of EM; twice the warm-up on a retried seed), not the issue's 10.

Only what differs from the defaults is stated (aci_jax/configuration.py: the dataclass
defaults, and the defaults of the keys no dataclass holds); docs/config.md lists every key.
"""

from aci_jax.configuration import defaults


def get_config(variant: str = ""):
  """`configs/default.py` is the embedded default; `configs/default.py:rare_code` the rare-code
  regime (issue 16, docs/em.md): see `_rare_code`; `:rare_code_ungated` the same without its
  warm-up gate, which every number measured on the regime before 2026-12-07 ran with;
  `:rare_code5` that regime's earlier five-family form, for the numbers measured on it."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/default.py; known: "
                     f"{', '.join(repr(v) for v in VARIANTS)}")
  c = defaults()
  c.tokenizer = "toy"  # the built-in character tokenizer (259 ids)
  c.model.update(
      # Llama architecture (no biases): the toy policy is trained from scratch, so the choice is
      # free. Six layers and a key/value head per query head (not 4 layers sharing 2 kv heads):
      # the policy must copy 2-3-digit operands from the prompt into a cell and a printed value
      # into \boxed{}, across 20-60 positions; the 4-layer model learned those copies on some
      # seeds only (seed 3: forced-code accuracy mul 0.28, powmod 0.00 after 2,500 steps), this
      # one on every seed tried (docs/em_log.md). A warm-up step costs ~1.5x more.
      arch="llama", vocab_size=259, hidden_size=128, intermediate_size=384, num_layers=6,
      num_heads=4, num_kv_heads=4, head_dim=32, qkv_bias=False, tie_word_embeddings=False,
      max_position_embeddings=512, rope_theta=10000.0, eos_token_ids=(256,))
  # The task's defaults are the toy's: 4 families, 2,000 training problems each, 10% of the
  # un-asked warm-up demos code. On top, extra demos whose prompt asks for code ("asked"
  # demos, toy.ask_for_code; evaluation and E-step prompts never ask): one per `mul` problem,
  # for half the `powmod` and a quarter of the `add`/`compare` problems, every answer length
  # equally often. They teach writing a cell and copying its printed output into \boxed{}, the
  # skill that formed on some seeds and not others when only the 10% un-asked cells showed it
  # (issue 16; docs/toy.md runs F-I).
  c.task.update(triggered_fraction=1.0, triggered_length_balance=True,
                triggered_families=("mul:1.0", "powmod:0.5", "add:0.25", "compare:0.25"))

  # Warm-up SFT (a separate run in <workdir>/warmup, exported and loaded by the EM run).
  c.warmup.update(
      # seq_len 112: an asked `mul` demo is up to 101 tokens with the chat template.
      steps=2000, batch_size=32, lr=3e-3, warmup_steps=100, seq_len=112,
      end_lr_ratio=0.1, weight_decay=0.01, b2=0.98, clip_norm=0.0,  # cosine to lr/10
      # Each step's 32 demos (~61 of 96 tokens on average) packed into rows of 192 tokens
      # (12 rows instead of 32, the same trained tokens): steps 1.2-1.4x faster (docs/em_log.md).
      pack_len=192)
  # The warm-up gate (aci_jax/eval/warmup_gate.py): after the cosine's 2,000 steps, teacher-
  # forced probes on 64 held-out training problems per skill (reasoning on add/compare, the
  # forced cell and its boxed copy on mul/powmod); while any is under 0.9 the warm-up goes on at
  # lr/10, checked every 250 steps, for at most 3/4 of `steps` more (1,500 here; a short run's
  # tail shrinks with it). Whether a skill has formed by step 2,000 is the optimisation path's
  # luck (docs/em_log.md, "What makes a seed late"): seed 7's powmod cells were at 0.09 there. Off
  # for other families: --config.warmup.gate=().
  # A gate that closes at its cap without passing (seed 2: its `mul` box copy looks the digits
  # up by value and miscopies every product with a repeated digit; 1,500 more steps or a
  # re-warm did not change that, docs/em_log.md "Seed 2's miscopies") starts one more warm-up from
  # other training problems and demos, initial weights and data order (warmup/retry_1/; the
  # held-out problems stay: seeds 2's and 12's second paths on their own problems were late too,
  # docs/em_log.md "The copy probe, and a retry"); the passing one, else the one with
  # the higher weakest probe, is the EM policy (warmup/attempts.json). Only a clear miss is
  # retried (weakest probe < 0.8; seed 2: 0.77): seed 10's gate closed at its cap with powmod at
  # 0.89 (57 of 64, one problem short) and EM from that warm-up met every bar of item 1 (0.485
  # -> 0.95, docs/em_log.md "Seed 10"), where a retry would have cost a second 35-minute warm-up.
  # In the tail the gate probes (and the warm-up exports) an exponential moving average of the
  # parameters, not the parameters: at lr/10 their probes swing by 0.1-0.2 from check to check
  # (seed 10: powmod 0.875 -> 0.773 -> 0.887 on 256 problems), the average's do not and score
  # at or above them on every probe (0.926 at both checks; docs/em_log.md "Weight averaging").
  # Up to step 2,000 the average is the parameters: an on-time seed is unchanged.
  # A `mul:copy` probe (the box copy alone, on products that repeat a digit) separates seed
  # 12's by-value copy (0.77 on 128 problems at the cap) from seeds 2, 10, 11 (0.95-1.00), but
  # retrying on it did not help: seed 12's second path copied right (0.92) and was late
  # elsewhere, and EM from it missed four bars where the first missed one (docs/em_log.md, "The
  # copy probe"). So it is a diagnostic (`python -m aci_jax.eval.warmup_gate W --gate
  # mul:copy`), not in the gate.
  c.warmup.update(gate=("add:reason", "compare:reason", "mul:code", "powmod:code"),
                  gate_mode="extend", gate_retries=1, gate_retry_below=0.8,
                  average_decay=0.995)
  c.warmup.gate_tail = (c.warmup.get_ref("steps") * 3 + 3) // 4
  c.data.update(seq_len=96)

  # EM. alpha=inf (hard argmax of pi*Q, the paper's first version), pi_prior=0.5 and lambda=1
  # are our toy choices: the warm-up policy almost never codes on its own, so with 4 native
  # samples pi_hat(code) is usually 0 and pi*Q would tie at 0 on the code-only families; half a
  # pseudo-count per decision lets Q decide there. Warm-up: 2,000 steps over 8,000 demos
  # (2,000 problems per family): the policy must learn to copy a cell's printed output into
  # \boxed{}; at 1,200 steps this run's warm-up had not (forced-code accuracy 0% on mul), at
  # 2,000 it had (docs/em_log.md). With only 500 problems per family it never did.
  # adv_whiten stays "kept" (advantages whitened over the kept rollouts, ours); "forced" (over
  # all 2K forced rollouts) measured in docs/em.md: a policy-term signal, no accuracy gain.
  # score="q", code_cost=0.5: the chosen decision is argmax Q_hat with code needing to win by
  # more than two forced rollouts in four ("reason when you can"). With the paper's pi * Q a
  # reasoning family whose native rollouts drift to code flips to code once both modes are
  # right (docs/toy.md run J: `add` at iteration 5); configs/paper.py keeps pi * Q. At 0.25
  # (one in four) the T = 1 noise of `add`'s carry chains let code win on some `add` queries
  # and 3 of 5 seeds coded 1-2 held-out `add` problems; at 0.5 seeds 4 and 5 pass item 1
  # (docs/em_log.md, "Five seeds").
  # Three iterations: the code families reach their plateau by the third (1.00 / 0.84-1.00
  # on the seeds measured); later ones only add M-step updates that wear away the reasoning
  # families' digit facts (add 1.00 -> 0.92 by iteration 6 on seeds 1 and 3).
  c.em.update(iterations=3, native_samples=4, k_per_decision=4, keep_per_query=4,
              alpha=float("inf"), pi_prior=0.5, score="q", code_cost=0.5, epochs=2)
  c.rollout.update(batch_size=64, max_prompt_tokens=64, max_new_tokens=128, max_tool_calls=2)
  c.sandbox.update(memory_mb=1024)
  c.grader.update(num_workers=1)
  c.eval.update(samples=0)

  # M-step (the EM run's trainer).
  c.train.update(
      batch_size=32,
      # With a 259-token vocabulary the logits are tiny: recomputing them in the backward
      # (the default, for 152k vocabularies) buys nothing: 0-10% of a warm-up step measured.
      logprob_remat=False,
      # Layers unrolled instead of scanned: no stacked residual buffers to zero and copy;
      # a packed warm-up step 1.16-1.3x faster (benchmarks/bench_sft_packing.py).
      scan_layers=False)
  # KL k3 to the warm-up policy on every model-written token but the first (kl_tokens=
  # "after_decision": the first response token is the decision, whether the response opens the
  # code fence). Without it `add`'s digit facts wear under the code families' updates (seed 6:
  # 1.00 -> 0.91 on 100 problems by iteration 3); a KL on every token held them (0.96 at 0.2) but
  # also pulled the code rate back toward the warm-up's ~0 (seed 2: mul code rate 0.99 -> 0.83).
  # Leaving the decision token out: seed 6 add 0.96, seeds 6 and 7 pass every bar (docs/em_log.md,
  # "A KL anchor that leaves the decision free").
  c.loss.update(decision_coef=1.0, kl_coef=0.2, kl_tokens="after_decision")
  # lr 6e-5: the M-step's updates for the code families wear away the reasoning ones' digit
  # facts ("8+8=17"): add fell 0.92 -> 0.32 after one M-step at 2.5e-4, -> 0.72 at 1.25e-4,
  # and stayed at 0.92-0.96 at 6e-5, where the code families still reach 1.00 by iteration 2-3
  # (docs/toy.md runs I, J, L).
  c.optim.update(lr=6e-5, end_lr_ratio=1.0)
  c.export.update(at_end=False)
  return VARIANTS[variant](c)


def _rare_code_ungated(c):
  """The paper's regime: a policy that *can* code but seldom chooses to, on six families where
  the choice matters per query.

  Families: `compare` and `add` (2-digit) are reasoned out; `add_long` asks `add`'s question with
  6-digit operands and `mul`, `powmod` are beyond the policy's head, so they need code, and
  whether to code depends on the operands, not on the question's form (`add` against
  `add_long`); `compare_len` (a 2-digit against a 3-digit number) is reasoned right every time
  ("87 has 2 digits, 143 has 3.") while its demo cell carries a real bug (it compares strings)
  and is wrong on 49.4% of the pairs: code is error-prone there, so "reason when you can" pays.

  Every problem of the warm-up set has its un-asked demo, and one whose code prefix is given as
  context (`task.forced_fraction`: loss mask 0, so the decision is never trained), the way the
  E-step and the evaluation force code; a quarter also get a demo whose prompt asks for code
  ("Use Python. " before the problem). Among the un-asked demos only `task.code_fraction` =
  epsilon choose code (0.01 here; --config.task.code_fraction=0 is "RL from a model that never
  codes", 0.05 the other end of the issue's range). Evaluation and E-step prompts never ask, so
  the native code rate stays near epsilon. Without the forced demos the cells followed the
  trigger only (docs/em_log.md, "Forced-prefix demos").

  Counts: 2,000 training problems for each reasoned family (the derivations are what the
  warm-up must teach: at 500 `compare_len` problems and half of them asked, its reasoning was
  0.06, at 2,000 and a quarter asked 1.00), 1,000 for the coded ones (their cells are one line);
  9,000 problems, 20,250 demos, 2,500 steps of 32 (3.95 passes). Held-out: 80 problems per
  family, 480 per evaluation point. Measured warm-up, seed 3 (docs/em_log.md, "Six families, the
  variant"): native P(code) 1.28% mean, forced-code accuracy 1.00 on every right-cell family,
  greedy reasoning compare 0.86, add 0.89, compare_len 1.00; 54 minutes on a 2-core VM. Seed 1
  misses the can-code bar (forced-code 0.61: `add_long` and `powmod` cells miscopy operands) and
  its `add` / `compare_len` reasoning did not form ("Six families, seed 1"): the warm-up's skills
  are seed-dependent here as in the embedded default. With epsilon 0
  (--config.task.code_fraction=0), seed 3: native P(code) 0.00%, forced-code accuracy 0.99, and
  from it autocode 0.448 -> 0.969 in six iterations while GRPO stays at 0% code (docs/em.md,
  "epsilon = 0").
  """
  families = ("compare", "add", "compare_len", "add_long", "mul", "powmod")
  c.task.update(families=families,
                train_caps=("add_long:1000", "mul:1000", "powmod:1000"),
                warmup_examples=0,  # every training problem
                code_fraction=0.01,
                triggered_fraction=0.25, triggered_families=(), triggered_length_balance=False,
                # and a forced demo per problem: the cell after the un-asked prompt and the
                # code prefix (context, not a target), where the E-step and evaluation force
                # code; without it cells followed the trigger only (docs/em_log.md,
                # "Forced-prefix demos")
                forced_fraction=1.0,
                eval_per_family=80)
  # An asked `add_long` demo is 113 tokens with the chat template; rows are still packed to 192.
  # No warm-up gate here: `_rare_code` adds it; this is the form every number measured on the
  # regime before 2026-12-07 ran with.
  c.warmup.update(seq_len=120, steps=2500, gate=())
  # No KL anchor either (the embedded default's `kl_coef=0.2`): every EM number of this variant
  # was measured without one.
  c.loss.update(kl_coef=0.0, kl_tokens="all")
  return c


def _rare_code5(c):
  """`rare_code` as it was until 2026-12-05: five families (`mul_small`, 2..9 times 10..99, where
  `compare_len` and `add_long` are now), 2,000 problems each (`mul_small` capped at its 576), an
  asked demo for every problem, 2,000 warm-up steps. Kept so that the numbers docs/em_log.md
  measured on it reproduce (its `mul_small` reasoning never formed: 0.01-0.10 on five seeds)."""
  c = _rare_code_ungated(c)
  c.task.update(families=("compare", "add", "mul_small", "mul", "powmod"),
                train_caps=("mul_small:576",), triggered_fraction=1.0)
  c.warmup.update(seq_len=112, steps=2000)
  return c


def _rare_code(c):
  """`_rare_code_ungated` with the warm-up gate of the embedded default on its six families:
  after the cosine's 2,500 steps the warm-up trains on at lr/10 (up to 1,875 steps more, the
  tail's moving average probed and exported) until each reasoned family's derivation and each
  coded family's cell and box copy are teacher-forced right on >= 0.9 of 64 held-out problems.
  Why: ungated, 3 of 6 six-family warm-ups at epsilon <= 0.01 missed the can-code bar (forced-
  code accuracy 0.61-0.78), each on a copy; the tail took seed 4's (epsilon 0) to 0.93 at 0.00%
  native code, EM from it to 0.627 against 0.475, and seed 1's (epsilon 0.01) to 0.96 at 0.61%
  with its reasoning formed (greedy 0.19 -> 0.49), EM from it to 0.917 against 0.498
  and epsilon 0 seed 2's to 0.84 (docs/em.md, "The warm-up gate on the six families", which lists
  every seed measured with it). All three closed at the cap; on the three seeds that met the bar
  ungated the gate passed at 3,750 / 2,750 / 2,750 steps and EM reached 0.910 / 0.829 / 0.835
  against 0.785 / 0.827 / 0.752 (epsilon 0.01 seeds 2 and 3, epsilon 0 seed 3). No retry: the
  tail alone met the bar on all three misses, and a retry doubles the warm-up."""
  c = _rare_code_ungated(c)
  c.warmup.update(gate=("compare:reason", "add:reason", "compare_len:reason", "add_long:code",
                        "mul:code", "powmod:code"), gate_retries=0)
  return c


VARIANTS = {"": lambda c: c, "rare_code": _rare_code, "rare_code_ungated": _rare_code_ungated,
            "rare_code5": _rare_code5}
