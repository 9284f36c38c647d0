"""The tool-call format (aci_jax/tool_format.py): parsing, rendering, splitting demonstrations,
and a second format plugged in as one class."""

import re

import pytest

from aci_jax import tool_format
from aci_jax.data import sft, toy
from aci_jax.data.char_tokenizer import char_tokenizer
from aci_jax.fileio import DataError

MD = tool_format.get()


def test_default_is_the_markdown_fence_convention():
  assert tool_format.DEFAULT == "markdown" and MD.name == "markdown"
  assert MD.pause_string == "```output" and MD.code_prefix == "```python\n"
  # The ban must cover the prefix every fence shares, so no fence can even begin.
  assert all(MD.code_prefix.startswith(b) and MD.pause_string.startswith(b)
             for b in MD.ban_strings)


def test_unknown_format_is_a_one_line_error():
  with pytest.raises(ValueError, match="tool_format must be one of .*'xml'"):
    tool_format.get("xml")


@pytest.mark.parametrize("text, code", [
    ("Let me check.\n```python\nprint(6 * 7)\n```\n```output", "print(6 * 7)\n"),
    ("```python\nx = 1\nprint(x)\n```\n\n```output", "x = 1\nprint(x)\n"),
    # Two calls: the one just before the pause string runs, not the first.
    ("```python\na\n```\n```output\n1\n```\nthen\n```python\nb\n```\n```output", "b\n"),
    ("```python   \ny\n```   \n```output", "y\n"),
])
def test_parse_cell_reads_the_call_just_before_the_pause(text, code):
  assert MD.parse_cell(text) == code


@pytest.mark.parametrize("text", [
    "no cell at all\n```output",
    "```python\nprint(1)\n```\nprose between\n```output",  # the cell is not right before it
    "```py\nprint(1)\n```\n```output",  # another language tag is not a python call
    "```python\nprint(1)\n```\n",  # no pause string
])
def test_parse_cell_without_a_call_right_before_the_pause_is_none(text):
  assert MD.parse_cell(text) is None


def test_render_output_closes_the_block_on_its_own_line():
  assert MD.render_output("...```output", "42") == "\n42\n```\n"
  assert MD.render_output("...```output\n", "42") == "42\n```\n"


def test_a_rendered_call_splits_back_into_model_and_environment_parts():
  response = "Compute.\n" + MD.render_call("print(6*7)", "42") + "So \\boxed{42}."
  assert response == ("Compute.\n```python\nprint(6*7)\n```\n```output\n42\n```\n"
                      "So \\boxed{42}.")
  segs = MD.env_segments(response)
  assert "".join(t for t, _ in segs) == response
  assert segs == [("Compute.\n```python\nprint(6*7)\n```\n```output", True),
                  ("\n42\n```\n", False), ("So \\boxed{42}.", True)]


def test_an_unclosed_output_block_is_a_data_error():
  with pytest.raises(DataError, match="not closed"):
    MD.env_segments("```python\nprint(1)\n```\n```output\n1\n")


class _XMLTags(tool_format.ToolFormat):
  """A second convention, as a user would add one: <python>code</python> answered by
  <output>...</output>."""

  name = "xml_test"
  pause_string = "<output>"
  ban_strings = ("<python>", "<output>")
  code_prefix = "<python>\n"
  no_code_message = "Error: no <python> call precedes this output."
  _CELL = re.compile(r"<python>\n?(.*?)</python>\s*$", re.DOTALL)
  _ENV = re.compile(r"<output>(.*?</output>\n?)", re.DOTALL)

  def parse_cell(self, text):
    at = text.rfind(self.pause_string)
    m = self._CELL.search(text[:at]) if at >= 0 else None
    return m.group(1) if m else None

  def render_output(self, text, output):
    return f"{output}</output>\n"

  def render_call(self, code, output):
    return f"{self.code_prefix}{code}</python>{self.pause_string}" + self.render_output("", output)

  def env_segments(self, response):
    out, pos = [], 0
    for m in self._ENV.finditer(response):
      out += [(response[pos:m.start(1)], True), (m.group(1), False)]
      pos = m.end()
    if self.pause_string in response[pos:]:
      raise DataError("an <output> block is not closed")
    return [(t, w) for t, w in out + [(response[pos:], True)] if t]


def test_a_second_format_is_one_class(monkeypatch):
  """Registering a subclass is all it takes for demonstrations and SFT masks to follow it."""
  fmt = _XMLTags()
  monkeypatch.setitem(tool_format.FORMATS, fmt.name, fmt)
  assert tool_format.get("xml_test") is fmt
  p = {"family": "add", "problem": "What is 47 + 35?", "answer": "82"}
  response = toy.code_response(p, fmt)
  assert response == "<python>\nprint(47 + 35)\n</python><output>82</output>\n\\boxed{82}"
  assert fmt.parse_cell(response[:response.index("<output>") + 8]) == "print(47 + 35)\n"
  tok = char_tokenizer()
  ex = sft.encode_demonstration(tok, p["problem"], response, max_len=4096, fmt=fmt)
  trained = "".join(chr(t) for t, m in zip(ex.tokens, ex.loss_mask) if m and t < 256)
  # The model is trained on its call up to the pause string and on the answer, never on the
  # environment's output.
  assert trained == "<python>\nprint(47 + 35)\n</python><output>\\boxed{82}"
