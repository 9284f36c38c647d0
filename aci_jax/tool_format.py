"""The tool-call format: how a response calls the interpreter and how the output comes back.

Everything that knows what a code cell looks like in text lives here: the strings the sampler
stops on and bans, the forced code prefix, reading a cell out of a response, rendering a cell's
output (or the limit / no-code message) for the splice, and splitting a demonstration into the
model's and the environment's parts. The rollout engine, the E-step, the evaluation harness and
the SFT data read a `ToolFormat`; none of them spells a fence.

The default, `markdown`, is the Qwen2.5-Math / ToRA convention the paper's policies use:

    ...prose...
    ```python
    print(2 ** 10)
    ```
    ```output
    1024
    ```
    ...prose... \\boxed{1024}

The model writes everything up to and including the opening of the output block (its *pause
string*, "```output": the sampler stops there and hands the row to the host); the environment
writes the rest of the block, "\\n<output>\\n```\\n". A second format (JSON tool calls, a prose
prefix instead of a fence) is one more subclass registered in `FORMATS`, picked with
`config.rollout.tool_format`.
"""

from __future__ import annotations

import abc
import re

from aci_jax.fileio import DataError

DEFAULT = "markdown"


class ToolFormat(abc.ABC):
  """One tool-call convention. Subclasses set the strings and implement the four methods."""

  name: str
  # The string whose completion hands a row to the host (the model asks for the tool's output).
  pause_string: str
  # Banned in forced-reasoning rows: a banned string can neither complete nor begin, in any
  # tokenisation (sampling.stops.ban_table), so a ban on a prefix shared by every call blocks
  # all of them.
  ban_strings: tuple[str, ...]
  # The response prefix that forces code mode (guided exploration, the harness's code pass).
  code_prefix: str
  # What the environment says instead of running code.
  limit_message: str = "Reached the maximum number of code executions; no more code is run."
  no_code_message: str

  @abc.abstractmethod
  def parse_cell(self, text: str) -> str | None:
    """The code of the call that `text` (a response ending with the pause string) just made;
    None when there is no well-formed call before the pause string."""

  @abc.abstractmethod
  def render_output(self, text: str, output: str) -> str:
    """The environment's text appended after `text` (a response ending with the pause string):
    the tool's `output` (or a limit / no-code message) and whatever closes the block."""

  @abc.abstractmethod
  def render_call(self, code: str, output: str) -> str:
    """A whole call and its output as they appear in a response (for demonstrations)."""

  @abc.abstractmethod
  def env_segments(self, response: str) -> list[tuple[str, bool]]:
    """[(text, written_by_model)] segments of a demonstration response, in order, none empty;
    raises DataError when an output block is not closed."""


class MarkdownFence(ToolFormat):
  """```python cells answered by ```output blocks (module docstring)."""

  name = "markdown"
  pause_string = "```output"
  # "```" starts every fence: a code cell of any language, the output fence, a closing fence.
  ban_strings = ("```",)
  code_prefix = "```python\n"
  no_code_message = "Error: no ```python code block precedes this output block."

  _OPEN = "```python"
  _CLOSE = "```"
  # The environment's part of a block: from right after "```output" to the closing fence and
  # one newline after it (if present). Non-greedy, so each block ends at its own closing fence.
  _ENV_BLOCK = re.compile(r"```output(.*?```\n?)", re.DOTALL)

  def parse_cell(self, text: str) -> str | None:
    at = text.rfind(self.pause_string)
    if at < 0:
      return None
    # The cell must close right before the pause string; its code starts after the *last*
    # opening before that close. (A regex anchored at the end and searched from the left would
    # return everything from a response's first cell on: the second call of a response would
    # run the first cell, its output and the second cell as one program.)
    body = text[:at].rstrip()
    if not body.endswith(self._CLOSE):
      return None
    body = body[:-len(self._CLOSE)]
    start = body.rfind(self._OPEN)
    if start < 0:
      return None
    m = re.match(r"\s*\n(.*)\Z", body[start + len(self._OPEN):], re.DOTALL)
    return m.group(1) if m else None

  def render_output(self, text: str, output: str) -> str:
    lead = "" if text.endswith("\n") else "\n"
    return f"{lead}{output}\n```\n"

  def render_call(self, code: str, output: str) -> str:
    code = code if code.endswith("\n") else code + "\n"
    return f"{self.code_prefix}{code}```\n{self.pause_string}" + self.render_output("", output)

  def env_segments(self, response: str) -> list[tuple[str, bool]]:
    segments: list[tuple[str, bool]] = []
    pos = 0
    for m in self._ENV_BLOCK.finditer(response):
      segments.append((response[pos:m.start(1)], True))  # up to and including "```output"
      segments.append((m.group(1), False))
      pos = m.end()
    tail = response[pos:]
    if self.pause_string in tail:
      raise DataError(f"an {self.pause_string} block is not closed with ```")
    if tail:
      segments.append((tail, True))
    return [(t, w) for t, w in segments if t]


FORMATS: dict[str, ToolFormat] = {f.name: f for f in (MarkdownFence(),)}


def get(name: str = DEFAULT) -> ToolFormat:
  """The registered format called `name`."""
  if name not in FORMATS:
    raise ValueError(f"tool_format must be one of {sorted(FORMATS)}, got {name!r}")
  return FORMATS[name]
