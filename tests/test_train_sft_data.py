"""SFT demonstrations -> tokens and loss masks (tool output masked, the stop marker trained),
schema errors, and the deterministic resumable batch stream."""

import json

import numpy as np
import pytest

from aci_jax.data.char_tokenizer import EOS_ID, char_tokenizer
from aci_jax.data.sft import (DataError, SFTData, build_sft_data, encode_demonstration,
                              load_demonstrations, split_response)
from aci_jax.data.toy import sft_records
from tests.tokenizer_fixtures import build_tokenizer

RESPONSE = ("Let me compute.\n```python\nprint(2 ** 10)\n```\n```output\n1024\n```\n"
            "So then:\n```python\nprint(1/0)\n```\n```output\nZeroDivisionError\n```\n"
            "The answer is \\boxed{1024}.")


def test_split_response_gives_the_model_the_stop_marker_and_the_environment_the_block():
  segs = split_response(RESPONSE)
  assert segs == [
      ("Let me compute.\n```python\nprint(2 ** 10)\n```\n```output", True),
      ("\n1024\n```\n", False),
      ("So then:\n```python\nprint(1/0)\n```\n```output", True),
      ("\nZeroDivisionError\n```\n", False),
      ("The answer is \\boxed{1024}.", True),
  ]
  assert "".join(t for t, _ in segs) == RESPONSE
  assert split_response("no code at all") == [("no code at all", True)]
  with pytest.raises(DataError, match="not closed"):
    split_response("```python\nprint(1)\n```\n```output\n1\n")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  from aci_jax.tokenizer import Tokenizer
  return Tokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("tok")))


def test_segments_are_tokenised_separately_and_masked(bpe):
  ex = encode_demonstration(bpe, "What is 2^10?", RESPONSE, max_len=10_000)
  prompt_ids = bpe.chat_ids([{"role": "user", "content": "What is 2^10?"}])
  want = list(prompt_ids)
  want_mask = [0.0] * len(prompt_ids)
  for text, by_model in split_response(RESPONSE):
    ids = bpe.encode(text)
    want += ids
    want_mask += [float(by_model)] * len(ids)
  want.append(bpe.eos_ids[0])
  want_mask.append(1.0)
  assert ex.tokens.tolist() == want
  assert ex.loss_mask.tolist() == want_mask
  # What the loss sees, decoded: model text incl. each "```output" and the EOS, no tool output.
  trained = bpe.decode([t for t, m in zip(ex.tokens, ex.loss_mask) if m])
  assert trained.count("```output") == 2
  assert "1024\n```" not in trained and "ZeroDivisionError" not in trained
  assert trained.endswith("\\boxed{1024}." + bpe.decode(bpe.eos_ids))
  env = bpe.decode([t for t, m in zip(ex.tokens[len(prompt_ids):], ex.loss_mask[len(prompt_ids):])
                    if not m])
  assert env == "\n1024\n```\n\nZeroDivisionError\n```\n"
  assert not ex.truncated


CODE_RESPONSE = "```python\nprint(2 ** 10)\n```\n```output\n1024\n```\n\\boxed{1024}"


def test_forced_prefix_is_context_tokenised_as_the_rollout_appends_it(bpe):
  # The E-step's forced rollout: prompt ids, then the encoded code prefix (environment), then
  # the model's tokens. The demo with that prefix forced must be exactly that sequence, with the
  # prefix (the decision) never a target.
  prefix = "```python\n"
  ex = encode_demonstration(bpe, "What is 2^10?", CODE_RESPONSE, max_len=10_000,
                            forced_prefix=prefix)
  prompt_ids = list(bpe.chat_ids([{"role": "user", "content": "What is 2^10?"}]))
  segs = split_response(CODE_RESPONSE)
  rest = [(segs[0][0][len(prefix):], True)] + segs[1:]
  want = prompt_ids + bpe.encode(prefix)
  want_mask = [0.0] * len(want)
  for text, by_model in rest:
    ids = bpe.encode(text)
    want += ids
    want_mask += [float(by_model)] * len(ids)
  want.append(bpe.eos_ids[0])
  want_mask.append(1.0)
  assert ex.tokens.tolist() == want and ex.loss_mask.tolist() == want_mask
  trained = bpe.decode([t for t, m in zip(ex.tokens, ex.loss_mask) if m])
  assert trained.startswith("print(2 ** 10)") and "```python" not in trained
  # Without the prefix the same demo trains the fence too: one more trained stretch.
  plain = encode_demonstration(bpe, "What is 2^10?", CODE_RESPONSE, max_len=10_000)
  assert plain.loss_mask.sum() > ex.loss_mask.sum()
  assert bpe.decode([t for t, m in zip(plain.tokens, plain.loss_mask) if m]).startswith(prefix)


@pytest.mark.parametrize("prefix, message", [
    (3, "must be a string"),
    ("print", "must start with its forced_prefix"),          # not the start of the response
    (CODE_RESPONSE, "must start with its forced_prefix"),      # nothing left to learn
    ("```python\nprint(2 ** 10)\n```\n```output\n10", "must start"),  # into the tool output
])
def test_bad_forced_prefix_is_a_data_error_with_its_line(tmp_path, prefix, message):
  p = tmp_path / "d.jsonl"
  good = {"prompt": "a", "response": CODE_RESPONSE, "forced_prefix": "```python\n"}
  p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "forced_prefix": prefix}) + "\n")
  with pytest.raises(DataError, match=rf"d.jsonl:2: .*{message}"):
    load_demonstrations(str(p))
  with pytest.raises(DataError, match=rf"record 1: .*{message}"):
    build_sft_data([good, {**good, "forced_prefix": prefix}], char_tokenizer(), batch_size=1,
                   seq_len=128)
  p.write_text(json.dumps(good) + "\n")  # the good record alone loads
  assert load_demonstrations(str(p)) == [good]


def test_truncation_and_char_tokenizer():
  tok = char_tokenizer()
  ex = encode_demonstration(tok, "p", "abc", max_len=100)
  im_start, im_end = 257, 258  # the toy chat template: <|im_start|>p<|im_end|>
  assert ex.tokens.tolist() == [im_start, ord("p"), im_end] + list(b"abc") + [EOS_ID]
  assert ex.loss_mask.tolist() == [0, 0, 0, 1, 1, 1, 1]
  short = encode_demonstration(tok, "p", "abcdef", max_len=5)
  assert short.truncated and len(short.tokens) == 5 and short.loss_mask.tolist() == [0, 0, 0, 1, 1]
  assert tok.decode(tok.encode("é ∑ x")) == "é ∑ x"


def test_schema_errors_name_file_and_line(tmp_path):
  p = tmp_path / "d.jsonl"
  p.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + "{not json\n")
  with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
    load_demonstrations(str(p))
  p.write_text(json.dumps({"prompt": "a", "response": 3}) + "\n")
  with pytest.raises(DataError, match=r":1: field 'response' must be a string"):
    load_demonstrations(str(p))
  p.write_text("\n" + json.dumps({"prompt": "a", "response": "```output\nx"}) + "\n")
  with pytest.raises(DataError, match=r":2: an ```output block is not closed"):
    load_demonstrations(str(p))
  with pytest.raises(DataError, match="no such file"):
    load_demonstrations(str(tmp_path / "missing.jsonl"))


def _data(n=10, batch=4, seed=3):
  tok = char_tokenizer()
  exs = [encode_demonstration(tok, r["prompt"], r["response"], max_len=64)
         for r in sft_records(n, seed=1)]
  return SFTData(exs, batch_size=batch, seq_len=64, pad_id=tok.pad_id, seed=seed)


def test_batches_are_deterministic_resumable_and_cover_each_epoch():
  data = _data()
  stream, cursor = [], 0
  for _ in range(5):
    b, cursor = data.batch(cursor)
    stream.append(b)
  assert cursor == 20
  # A fresh object started at a saved cursor continues identically.
  again, _ = _data().batch(12)
  for k in again:
    np.testing.assert_array_equal(again[k], stream[3][k])
  # Each epoch is a permutation of all examples, and epochs differ.
  assert sorted(data.indices(0, 10)) == list(range(10))
  assert sorted(data.indices(10, 10)) == list(range(10))
  assert data.indices(0, 10) != data.indices(10, 10)
  # Padding: right-padded, invalid, never trained.
  b = stream[0]
  assert b["tokens"].shape == (4, 64) and b["valid"].dtype == bool
  assert np.all(b["loss_mask"][~b["valid"]] == 0)
  assert np.all(b["tokens"][~b["valid"]] == char_tokenizer().pad_id)


def test_process_slices_partition_the_global_batch():
  data = _data(batch=8)
  full, nxt = data.batch(16)
  parts = [data.batch(16, process_index=i, process_count=2) for i in range(2)]
  assert all(c == nxt for _, c in parts)
  for k in full:
    np.testing.assert_array_equal(np.concatenate([p[0][k] for p in parts]), full[k])


def test_build_sft_data_stats(tmp_path):
  from aci_jax.data.sft import write_jsonl
  path = write_jsonl(str(tmp_path / "toy.jsonl"), sft_records(6))
  data, stats = build_sft_data(path, char_tokenizer(), batch_size=2, seq_len=40)
  assert stats["examples"] == 6 and len(data) == 6
  assert 0 < stats["trained_tokens"] < stats["tokens"]
  assert stats["truncated"] > 0  # 40 bytes cannot hold the code demonstrations


def test_packed_batches_hold_the_same_examples_with_restarting_positions():
  tok = char_tokenizer()
  exs = [encode_demonstration(tok, r["prompt"], r["response"], max_len=64)
         for r in sft_records(12, seed=1)]
  plain = SFTData(exs, batch_size=8, seq_len=64, pad_id=tok.pad_id, seed=3)
  packed = SFTData(exs, batch_size=8, seq_len=64, pad_id=tok.pad_id, seed=3, pack_len=128,
                   row_multiple=3)
  for cursor in (0, 8, 16):
    b, nxt = plain.batch(cursor)
    p, pnxt = packed.batch(cursor)
    assert nxt == pnxt
    rows = p["tokens"].shape[0]
    assert rows % 3 == 0 and rows < 8 and p["tokens"].shape[1] == 128
    got = []
    for r in range(rows):
      for s in range(1, p["segment_ids"][r].max() + 1):
        sel = p["segment_ids"][r] == s
        np.testing.assert_array_equal(p["positions"][r][sel], np.arange(sel.sum()))
        at = sel.nonzero()[0]
        assert at.tolist() == list(range(at[0], at[-1] + 1))  # contiguous
        got.append((tuple(p["tokens"][r][sel]), tuple(p["loss_mask"][r][sel])))
    want = [(tuple(b["tokens"][i][b["valid"][i]]), tuple(b["loss_mask"][i][b["valid"][i]]))
            for i in range(8)]
    assert sorted(got) == sorted(want)  # first tokens are prompt tokens: mask 0 either way
    assert np.all(p["valid"] == (p["segment_ids"] > 0))
    assert np.all(p["loss_mask"][~p["valid"]] == 0)
  # Every process gets the same row count; together they hold the global batch's examples.
  parts = [packed.batch(0, process_index=i, process_count=2)[0] for i in range(2)]
  assert parts[0]["tokens"].shape == parts[1]["tokens"].shape
  with pytest.raises(ValueError, match="pack_len"):
    SFTData(exs, batch_size=8, seq_len=64, pad_id=tok.pad_id, pack_len=32)


def test_packed_loss_and_gradient_equal_the_padded_batch():
  """Segment-masked attention and restarting positions make a packed batch the same
  computation as the padded one: equal token-mean NLL and parameter gradients."""
  import jax
  import jax.numpy as jnp

  from aci_jax.model import ModelConfig, init_params
  from aci_jax.train.logprobs import token_logprobs

  tok = char_tokenizer()
  cfg = ModelConfig(arch="llama", vocab_size=259, hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
  params = init_params(cfg, jax.random.key(0))
  exs = [encode_demonstration(tok, r["prompt"], r["response"], max_len=128)
         for r in sft_records(8, seed=2)]
  plain = SFTData(exs, batch_size=8, seq_len=128, pad_id=tok.pad_id).batch(0)[0]
  packed = SFTData(exs, batch_size=8, seq_len=128, pad_id=tok.pad_id, pack_len=256).batch(0)[0]
  assert packed["tokens"].size < plain["tokens"].size

  def loss(p, b):
    logp, _ = token_logprobs(p, cfg, b["tokens"], b["positions"], b["valid"], chunk=64,
                             remat=False, segment_ids=b.get("segment_ids"))
    m = b["loss_mask"][:, 1:] * b["valid"][:, 1:]
    return -(logp * m).sum() / m.sum()

  lp, gp = jax.value_and_grad(loss)(params, plain)
  lk, gk = jax.value_and_grad(loss)(params, packed)
  np.testing.assert_allclose(float(lk), float(lp), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gk)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=1e-6)
  # Without the segment mask the packed rows would attend across examples: a different loss.
  unmasked = {k: v for k, v in packed.items() if k != "segment_ids"}
  assert abs(float(loss(params, unmasked)) - float(lp)) > 1e-4
