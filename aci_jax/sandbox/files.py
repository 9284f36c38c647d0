"""Removing a file tree that a session may have shaped against us (any depth, symlinks swapped
in while we work): the pool's directory on the host, and the seccomp tier's session leftovers."""

from __future__ import annotations

import errno
import os
import stat

_HOIST_DEPTH = 64  # remove_tree holds at most this many directory levels open


def remove_tree(path: str) -> None:
  """Removes a file, symlink or directory tree, whatever its shape: no recursion (a 100,000-deep
  tree cannot exhaust the Python stack), no path longer than one name (relative to descriptors
  we hold, opened with O_NOFOLLOW, so a symlink swapped in is removed, never followed), and at
  most _HOIST_DEPTH open levels: deeper directories are moved up to the top and removed from
  there. Raises OSError for what it could not remove."""
  try:
    st = os.lstat(path)
  except FileNotFoundError:
    return
  if not stat.S_ISDIR(st.st_mode):
    os.unlink(path)
    return
  parent = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
  try:
    _remove_dir_at(parent, os.path.basename(os.path.abspath(path)))
  finally:
    os.close(parent)


def _open_dir(dir_fd: int, name: str) -> int:
  return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def _remove_dir_at(parent_fd: int, name: str) -> None:
  top = _open_dir(parent_fd, name)
  stack = [(top, name, os.scandir(top))]  # (fd, name in the level above, its listing)
  hoisted = 0
  try:
    while stack:
      fd, _, it = stack[-1]
      descended = False
      for e in it:
        try:
          is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
          is_dir = False
        if not is_dir:
          try:
            os.unlink(e.name, dir_fd=fd)
          except FileNotFoundError:
            pass
          except IsADirectoryError:  # replaced by a directory since it was listed
            is_dir = True
          if not is_dir:
            continue
        if len(stack) >= _HOIST_DEPTH:
          hoisted += 1
          os.rename(e.name, f".aci_hoisted_{hoisted}", src_dir_fd=fd, dst_dir_fd=top)
          continue
        try:
          sub = _open_dir(fd, e.name)
        except FileNotFoundError:
          continue
        except OSError:  # not a directory any more (a symlink swapped in)
          os.unlink(e.name, dir_fd=fd)
          continue
        stack.append((sub, e.name, os.scandir(sub)))
        descended = True
        break
      if descended:
        continue
      fd, nm, it = stack.pop()
      it.close()
      up = stack[-1][0] if stack else parent_fd
      try:
        os.rmdir(nm, dir_fd=up)
        os.close(fd)
      except OSError as e:
        if e.errno != errno.ENOTEMPTY:
          os.close(fd)
          raise
        stack.append((fd, nm, os.scandir(fd)))  # entries added while we listed (hoisted ones)
  finally:
    for fd, _, it in stack:
      it.close()
      os.close(fd)
