"""Writing files so that nothing already there is lost: all at once, or not at all."""

import contextlib
import os
import tempfile


def replace_atomically(path, write, mode="b"):
  """Writes a file all at once: `write(f)` fills a temporary file in the same folder, which then
  replaces `path` (os.replace). A killed process leaves the old file or the new one, never half of
  one; on an error the temporary file is removed and `path` is untouched. Creates the folder.
  Atomic against a kill, not durable across a power loss (no fsync: it would cost a disk flush per
  picture).

  Args:
    path: str, the file to write.
    write: callable(file object) -> None.
    mode: 'b' (binary) or 't' (text, utf-8).
  Returns:
    path.
  """
  folder, base = os.path.split(os.path.abspath(os.path.expanduser(path)))
  os.makedirs(folder, exist_ok=True)
  # Hidden and not ending in the real extension, so the leftover of a killed process is not taken
  # for an output by a later `*.png` listing.
  f = tempfile.NamedTemporaryFile(mode=f"w{mode}", dir=folder, prefix=f".{base}.", suffix=".tmp",
                                  delete=False, **({"encoding": "utf-8"} if mode == "t" else {}))
  tmp = f.name
  try:
    with f:
      write(f)
    # NamedTemporaryFile makes the file private (0600); give it the mode a plain open() would.
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, os.path.join(folder, base))
  except BaseException:
    with contextlib.suppress(OSError):  # keep the original error, not one about the clean-up
      os.remove(tmp)
    raise
  return path


def umask():
  """The process's file-creation mask, read from /proc (setting and restoring it would race with
  other threads creating files); the usual 0o022 where /proc is not there."""
  with contextlib.suppress(OSError, ValueError):
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  return 0o022
