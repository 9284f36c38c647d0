"""What the model sees, and the replay program (pure functions, stdlib only).

Follows the Qwen2.5-Math evaluation harness: stdout, or the last traceback line on failure,
stripped, truncated to first N/2 + "..." + last N/2 characters; "Done" for no output.
"""

from __future__ import annotations

import ast


def truncate(text: str, max_chars: int) -> str:
  """Text longer than max_chars becomes its first N//2 chars + "..." + its last N//2 chars."""
  if len(text) <= max_chars:
    return text
  half = max_chars // 2
  return text[:half] + "..." + text[-half:]


class Capture:
  """Bounded capture of a byte stream: first `keep` bytes, last `keep` bytes, and the total.

  Enough to render the truncated display exactly: a stream longer than 2*keep bytes has more
  than 2*keep/4 >= max_chars characters, so only its head and tail can ever be shown.
  """

  __slots__ = ("keep", "head", "tail", "total")

  def __init__(self, keep: int):
    self.keep = keep
    self.head = bytearray()
    self.tail = bytearray()
    self.total = 0

  def add(self, data: bytes) -> None:
    self.total += len(data)
    room = self.keep - len(self.head)
    if room > 0:
      self.head += data[:room]
      data = data[room:]
    if data:
      self.tail += data
      if len(self.tail) > 2 * self.keep:  # amortised trim
        del self.tail[:-self.keep]

  def text(self, max_chars: int, strip: bool = False) -> str:
    """Decoded (invalid UTF-8 replaced), stripped if asked, then truncated (harness order)."""
    tail = bytes(self.tail[-self.keep:])
    if self.total <= len(self.head) + len(tail):
      text = (bytes(self.head) + tail).decode("utf-8", "replace")
      return truncate(text.strip() if strip else text, max_chars)
    half = max_chars // 2
    head = bytes(self.head).decode("utf-8", "replace")
    tail_s = tail.decode("utf-8", "replace")
    if strip:
      head, tail_s = head.lstrip(), tail_s.rstrip()
    return head[:half] + "..." + (tail_s[-half:] if half else "")


def render(status: str, stdout: str, detail: str, *, max_chars: int, strip: bool,
           stdout_on_error: bool, empty_text: str) -> str:
  """The output block text. stdout: already-truncated stdout; detail: error line or reason."""
  out = stdout.strip() if strip else stdout
  if status == "ok":
    return out if out else empty_text
  msg = truncate(detail.strip() if strip else detail, max_chars)
  if stdout_on_error and out:
    return out + "\n" + msg
  return msg or empty_text


def _strip_prints_ast(code: str) -> str:
  tree = ast.parse(code)

  class _Drop(ast.NodeTransformer):
    def visit_Expr(self, node):  # a statement `print(...)`, possibly spanning lines
      v = node.value
      if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "print":
        return ast.copy_location(ast.Pass(), node)
      return node

  return ast.unparse(_Drop().visit(tree))


def strip_prints(code: str) -> str:
  """Removes print statements (replaced by `pass` so blocks stay valid); the harness's line
  filter (drop lines starting with "print(") when the code does not parse."""
  try:
    return _strip_prints_ast(code)
  except (SyntaxError, ValueError, RecursionError):
    return "\n".join(l for l in code.split("\n") if not l.strip().startswith("print("))


def import_lines(code: str) -> list[str]:
  return [l for l in code.split("\n") if l.startswith("import") or l.startswith("from")]


def replay_prelude(history: list[tuple[str, bool]]) -> list[str]:
  """Code re-run before the current cell in replay mode (Qwen2.5-Math trajectory.extract_program):
  earlier successful cells without their prints; of failed cells only their import lines.

  history: [(code, succeeded)] in order. Returns the pieces to execute silently, in order.
  """
  imports = [l for code, ok in history if not ok for l in import_lines(code)]
  pieces = ["\n".join(imports)] if imports else []
  pieces += [strip_prints(code) for code, ok in history if ok]
  return pieces
