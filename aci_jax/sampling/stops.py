"""Stop and ban detection for multi-token strings, in every tokenisation, on the device.

A string such as the output fence "```output" can be produced by many token sequences ("```" +
"output", "``" + "`out" + "put", a single "```output\\n" token, ...). Matching token-id sequences
misses most of them. Instead we run a character automaton (Aho-Corasick over all patterns) and
pre-compose it with the vocabulary on the host: for automaton state s and token t,

    next[s, t]  the automaton state after reading t's characters from state s
    hit[s, t]   the id (1-based) of the first pattern completed while reading them, else 0

On the device a row's stop state is then one gather per generated token, and banning a pattern
is masking every token t with hit[s, t] > 0 or next[s, t] != 0 before sampling (`ban_table`:
a banned string can neither complete nor begin). A match inside a token (a token
that runs past the end of the pattern) is caught too. The host confirms every device stop
against the decoded text, so an approximation in the token-to-text table (e.g. a token that is
an incomplete UTF-8 sequence) can at worst cost one extra host check, never a missed splice.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
  """Inverse of the GPT-2 byte-to-unicode map used by byte-level BPE vocabularies."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(bs, cs)}


def token_texts(hf_tokenizer) -> list[str]:
  """The text each token id contributes when it follows other tokens, for every id.

  Byte-level BPE (Qwen2, Llama-3, DeepSeek) maps each token string back to bytes exactly;
  SentencePiece ('▁' for space, '<0xNN>' byte tokens) is handled too; anything else falls back
  to decoding the id alone. Bytes that are not valid UTF-8 on their own become U+FFFD, which
  no ASCII pattern contains.
  """
  pieces = hf_tokenizer.convert_ids_to_tokens(list(range(len(hf_tokenizer))))
  dec = _byte_decoder()
  specials = set(getattr(hf_tokenizer, "all_special_tokens", []))
  byte_level = all(p is None or p in specials or all(ch in dec for ch in p)
                   for p in pieces[:2000])
  out = []
  for i, p in enumerate(pieces):
    if p is None:
      out.append("")
    elif p in specials:
      out.append(p)
    elif byte_level and all(ch in dec for ch in p):
      out.append(bytes(dec[ch] for ch in p).decode("utf-8", errors="replace"))
    elif p.startswith("<0x") and p.endswith(">") and len(p) == 6:
      out.append(bytes([int(p[3:5], 16)]).decode("utf-8", errors="replace"))
    elif "▁" in p:
      out.append(p.replace("▁", " "))
    else:
      out.append(hf_tokenizer.decode([i]))
  return out


@dataclasses.dataclass(frozen=True)
class StringMatcher:
  """Host-side tables of the composed automaton (see module docstring).

  next: [S, V] int32; hit: [S, V] int32 (0 = none, k = patterns[k - 1] completed).
  """

  patterns: tuple[str, ...]
  next: np.ndarray
  hit: np.ndarray

  @property
  def num_states(self) -> int:
    return self.next.shape[0]

  def run(self, ids, state: int = 0) -> tuple[int, int]:
    """Reference walk over token ids on the host: (final state, first hit)."""
    first = 0
    for t in ids:
      h = int(self.hit[state, t])
      first = first or h
      state = int(self.next[state, t])
    return state, first


def _aho_corasick(patterns: tuple[str, ...]):
  """Character automaton: (goto [S, A] over an alphabet of pattern characters + 'other',
  out [S] first pattern id ending at the state (via failure links), char -> alphabet id)."""
  alphabet = sorted({c for p in patterns for c in p})
  cid = {c: i + 1 for i, c in enumerate(alphabet)}  # 0 = any character in no pattern
  trie = [dict()]
  out = [0]
  for k, p in enumerate(patterns, start=1):
    s = 0
    for c in p:
      if cid[c] not in trie[s]:
        trie.append({})
        out.append(0)
        trie[s][cid[c]] = len(trie) - 1
      s = trie[s][cid[c]]
    out[s] = out[s] or k
  n, a = len(trie), len(alphabet) + 1
  goto = np.zeros((n, a), np.int32)
  fail = [0] * n
  queue = collections.deque()
  for c in range(a):
    if c in trie[0]:
      goto[0, c] = trie[0][c]
      queue.append(trie[0][c])
  while queue:
    s = queue.popleft()
    out[s] = out[s] or out[fail[s]]
    for c in range(a):
      if c in trie[s]:
        t = trie[s][c]
        fail[t] = goto[fail[s], c]
        goto[s, c] = t
        queue.append(t)
      else:
        goto[s, c] = goto[fail[s], c]
  return goto, np.asarray(out, np.int32), cid


def ban_table(matcher: StringMatcher) -> np.ndarray:
  """[S, V] bool: the tokens a ban masks in each automaton state.

  Masking only the tokens that *complete* a banned string is not a ban: every strict prefix
  stays allowed, so a policy that wants the string writes all of it but the last character
  and derails ("```pytho7)..."), and a vocabulary with a token for the prefix ("```") plus
  one for the rest gets through whenever the last token is not masked at the right moment.
  A token is therefore banned when reading it completes a pattern *or* leaves the text ending
  in a non-empty prefix of one (automaton state != 0): a banned string cannot even begin,
  under any tokenisation, and a row whose ban is active stays in state 0.
  """
  return (matcher.hit > 0) | (matcher.next != 0)


def build_matcher(patterns, texts: list[str], max_vector_chars: int = 32) -> StringMatcher:
  """Composes the automaton of `patterns` with the vocabulary `texts` (see `token_texts`).

  Tokens up to `max_vector_chars` characters are processed together with numpy (one pass per
  state and character position); the rare longer ones one by one.
  """
  patterns = tuple(patterns)
  if not patterns or any(not p for p in patterns):
    raise ValueError(f"patterns must be non-empty strings, got {patterns!r}")
  goto, out, cid = _aho_corasick(patterns)
  n_states, vocab = goto.shape[0], len(texts)
  lengths = np.fromiter((len(t) for t in texts), np.int64, vocab)
  short = lengths <= max_vector_chars
  width = int(max(1, lengths[short].max(initial=1)))
  # Short tokens as padded arrays of alphabet ids; characters in no pattern map to 0.
  codes = np.zeros((vocab, width), np.int32)
  for i in np.flatnonzero(short & (lengths > 0)):
    codes[i, :lengths[i]] = [cid.get(c, 0) for c in texts[i]]
  nxt = np.zeros((n_states, vocab), np.int32)
  hit = np.zeros((n_states, vocab), np.int32)
  vec_len = np.where(short, lengths, 0)
  for s in range(n_states):
    cur = np.full(vocab, s, np.int32)
    first = np.zeros(vocab, np.int32)
    for pos in range(width):
      active = pos < vec_len
      cur = np.where(active, goto[cur, codes[:, pos]], cur)
      found = out[cur]
      first = np.where((first == 0) & active & (found > 0), found, first)
    nxt[s], hit[s] = cur, first
  for i in np.flatnonzero(~short):
    ids = [cid.get(c, 0) for c in texts[i]]
    for s in range(n_states):
      cur, first = s, 0
      for c in ids:
        cur = goto[cur, c]
        first = first or int(out[cur])
      nxt[s, i], hit[s, i] = cur, first
  return StringMatcher(patterns, nxt, hit)
