"""The host's page allocator (`aci_jax.rollout.pages.PagePool`): under random grow / release
sequences no page is ever held by two rows or lost, a row takes pages only from its own group,
its pages are a prefix of its table row, the oldest row of a group can always grow to its full
capacity (no deadlock), and releasing every row gives every page back."""

import numpy as np
import pytest

from aci_jax.rollout.pages import PagePool


def _check(pool: PagePool) -> None:
  p, m = pool.pages_per_group, pool.pages_per_row
  for g in range(pool.groups):
    rows = range(g * pool.rows // pool.groups, (g + 1) * pool.rows // pool.groups)
    held = [int(x) for r in rows for x in pool.table[r] if x < p]
    assert len(held) == len(set(held)), "a page held by two rows"
    assert pool.free_pages(g) + len(held) == p, "a page lost or made up"
    assert set(held).isdisjoint(pool._free[g])  # pylint: disable=protected-access
    holders = [r for r in rows if pool.held(r)]
    assert (pool.oldest(g) is None) == (not holders)
    if holders:  # the oldest holder can reach a whole row's pages from what is free
      oldest = pool.oldest(g)
      assert oldest in holders
      assert pool.free_pages(g) >= m - pool.held(oldest) // pool.page_size
      assert pool.can_grow(oldest, m * pool.page_size)
  for r in range(pool.rows):
    n = pool.held(r) // pool.page_size
    assert (pool.table[r, :n] < p).all() and (pool.table[r, n:] == p).all()  # a prefix
    assert n <= m


@pytest.mark.parametrize("seed", range(4))
def test_random_grow_and_release_keep_every_page_accounted_for(seed):
  rng = np.random.default_rng(seed)
  pool = PagePool(rows=6, groups=2, pages_per_group=10, page_size=4, pages_per_row=5)
  arrival = [[], []]  # per group, rows in the order they took a first page (kept here apart)
  for _ in range(400):
    r = int(rng.integers(pool.rows))
    if rng.random() < 0.25:
      pool.release(r)
      assert pool.held(r) == 0
      if r in arrival[pool.group(r)]:
        arrival[pool.group(r)].remove(r)
    else:
      tokens = int(rng.integers(0, 30))
      before, free = pool.held(r), pool.free_pages(pool.group(r))
      could = pool.can_grow(r, tokens)
      got = pool.grow(r, tokens)
      want = min(-(-tokens // 4), 5) * 4  # whole pages, at most the table's 5
      if could:  # can_grow promised room for all of it
        assert got == max(before, want)
      else:  # it took what its group had above the reserve
        assert before <= got < want
      assert pool.free_pages(pool.group(r)) == free - (got - before) // 4
      if got and not before:
        arrival[pool.group(r)].append(r)
    for g in range(2):
      assert pool.oldest(g) == (arrival[g][0] if arrival[g] else None)
    _check(pool)
  for r in range(pool.rows):
    pool.release(r)
  _check(pool)
  assert [pool.free_pages(g) for g in range(2)] == [10, 10]
  assert (pool.table == 10).all()


def test_grow_takes_what_is_free_and_marks_the_table_for_the_device():
  pool = PagePool(rows=3, groups=1, pages_per_group=5, page_size=8, pages_per_row=3)
  assert not pool.dirty
  assert pool.grow(0, 9) == 16 and pool.dirty  # row 0, the oldest: 2 pages
  assert pool.grow(1, 100) == 16  # row 1: 2 of the 3 free; the last is row 0's third page
  assert not pool.can_grow(2, 1) and pool.grow(2, 1) == 0  # nothing above the reserve
  assert pool.grow(0, 24) == 24  # the oldest row grows into the reserve
  pool.dirty = False
  pool.release(0)  # row 1 is now the oldest: it may take the rest
  assert pool.dirty and pool.grow(1, 24) == 24
  assert list(pool.table[1]) == [2, 3, 0]  # lowest free pages first
  assert list(pool.table[0]) == [5, 5, 5]  # 5 = none


def test_a_pool_with_every_rows_pages_never_makes_a_row_wait():
  pool = PagePool(rows=4, groups=2, pages_per_group=6, page_size=8, pages_per_row=3)
  for r in (1, 0, 3, 2):  # any order of arrival
    assert pool.grow(r, 5) == 8
  for r in (2, 3, 0, 1):
    assert pool.grow(r, 24) == 24
  with pytest.raises(ValueError, match="do not divide"):
    PagePool(rows=3, groups=2, pages_per_group=4, page_size=8, pages_per_row=2)
