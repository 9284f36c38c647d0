"""The host's page allocator for the rollout engine's paged KV cache (`PagedKVCache`).

The pool has G groups of P pages (a group per data-parallel shard of the rows: rows
g * B/G ... (g+1) * B/G - 1 take pages from group g only, so a row's pages sit on the chips that
hold the row). A row's pages are a prefix of its block table row: `grow` appends pages until
the row can hold a number of tokens, `release` gives them all back. The host owns the table
and pushes it to the device (`sampler.set_pages`) before the next compiled call whenever it
changed; the device never assigns pages itself, so which page a row gets is decided in one
place, with plain Python checks, and no page is ever held by two rows.

An allocation that cannot be met is not an error here: `grow` takes what is free and says how
many tokens the row can now hold; the scheduler decides whether the row waits (its decode stops
at its last page, `sampler.WAITING`) or its splice / prompt is put off to a later round.

No deadlock: a group keeps back the pages its oldest row (the one holding pages the longest)
still lacks for its full capacity (M pages, a whole table row, minus what it holds); other
rows, and new rows while any row holds pages, take pages only above that reserve. The oldest
row can therefore always grow to its full capacity, and finishes (or pauses for a tool and
resumes) without waiting for anyone; when it gives its pages back, the free pages are at least
M again, all a new oldest row can lack. So rows may wait for pages, but some row always moves;
and a pool with M pages for every row never makes one wait (the reserve never binds).
"""

from __future__ import annotations

import numpy as np


class PagePool:
  """Free lists per group and each row's pages; `table` is the [B, M] int32 block table."""

  def __init__(self, rows: int, groups: int, pages_per_group: int, page_size: int,
               pages_per_row: int):
    if rows % groups:
      raise ValueError(f"{rows} rows do not divide into {groups} page groups")
    self.rows, self.groups, self.page_size = rows, groups, page_size
    self.pages_per_group, self.pages_per_row = pages_per_group, pages_per_row
    # Low page ids first (pop from the end), so a fresh pool hands out 0, 1, 2, ...
    self._free = [list(range(pages_per_group - 1, -1, -1)) for _ in range(groups)]
    self._held: list[list[int]] = [[] for _ in range(rows)]
    # Per group, the rows holding pages in the order they took their first (dicts keep insertion
    # order): the first is the group's oldest row, which the reserve is for.
    self._holders: list[dict[int, None]] = [{} for _ in range(groups)]
    self.table = np.full((rows, pages_per_row), pages_per_group, np.int32)
    self.dirty = False  # the table changed since the device last got it

  def group(self, row: int) -> int:
    return row // (self.rows // self.groups)

  def free_pages(self, group: int) -> int:
    return len(self._free[group])

  def held(self, row: int) -> int:
    """Tokens row `row` can hold with its pages."""
    return len(self._held[row]) * self.page_size

  def pages_for(self, tokens: int) -> int:
    return -(-tokens // self.page_size)

  def oldest(self, group: int) -> int | None:
    """The row of `group` that has held pages the longest (None: nobody holds any)."""
    return next(iter(self._holders[group]), None)

  def _reserve(self, row: int) -> int:
    """Free pages `row` must leave in its group: none for the group's oldest row (or a row
    of a group where nobody holds pages); for any other, the pages the oldest still lacks."""
    oldest = self.oldest(self.group(row))
    if oldest is None or oldest == row:
      return 0
    return self.pages_per_row - len(self._held[oldest])

  def can_grow(self, row: int, tokens: int) -> bool:
    """Whether `grow(row, tokens)` would give the row room for all `tokens`."""
    need = min(self.pages_for(tokens), self.pages_per_row) - len(self._held[row])
    return need <= 0 or need <= self.free_pages(self.group(row)) - self._reserve(row)

  def grow(self, row: int, tokens: int) -> int:
    """Assigns free pages to `row` until it can hold `tokens` tokens (at most its table's
    pages), as far as its group has free pages above the row's reserve. Returns the tokens it
    can hold now."""
    want = min(self.pages_for(tokens), self.pages_per_row)
    held, free = self._held[row], self._free[self.group(row)]
    reserve = self._reserve(row)
    while len(held) < want and len(free) > reserve:
      page = free.pop()
      self.table[row, len(held)] = page
      held.append(page)
      self._holders[self.group(row)].setdefault(row)  # a first page: the youngest holder
      self.dirty = True
    return self.held(row)

  def release(self, row: int) -> None:
    """Gives back every page of `row` (the row is being reset or has finished)."""
    held = self._held[row]
    if not held:
      return
    self._free[self.group(row)].extend(reversed(held))
    del self._holders[self.group(row)][row]
    self.table[row] = self.pages_per_group
    held.clear()
    self.dirty = True
