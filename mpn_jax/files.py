"""Writing files so that nothing already there is lost: all at once, or not at all."""

import contextlib
import json
import os
import tempfile

from mpn_jax import errors

# The hidden file, in a folder a tool writes into, that lists the files the tools wrote there
# (`check_outputs`, `record_outputs`).
MANIFEST = ".mpn_jax_outputs.json"


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
    try:
      with f:
        write(f)
    except OSError as e:
      if e.filename is None:  # a failed write() names no file: name the one being written
        raise OSError(e.errno, e.strerror, path) from e
      raise
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


def _manifest(folder):
  """{file name: the input it was made from, or None} of the folder's MANIFEST (an older MANIFEST
  is a list of names: their inputs are unknown)."""
  try:
    with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
      listed = json.load(f)
  except (OSError, ValueError):
    return {}
  if isinstance(listed, list):
    return {n: None for n in listed if isinstance(n, str)}
  if isinstance(listed, dict):
    return {n: v if isinstance(v, str) else None for n, v in listed.items() if isinstance(n, str)}
  return {}


def _with_sources(names):
  return dict(names) if isinstance(names, dict) else {n: None for n in names}


def check_outputs(folder, names, flag, tool):
  """Checks, before any work, that writing `names` into `folder` replaces no file the tools did not
  write there, nor one they made from another input (read-only; `record_outputs` then lists them,
  just before they are written).

  A file in the way that an earlier run of a tool wrote (listed in the folder's MANIFEST) may be
  replaced when it was made from the same input (or either input is unknown): a run repeated into
  the same folder updates its outputs. Any other file in the way (the user's own, an annotation
  file, a file of another program, the results of another input with the same name) is refused.

  Args:
    folder: str, the output folder (need not exist yet).
    names: iterable of file names (relative paths) to be written into it, or a dict of them to the
      input each is made from (str, e.g. the absolute path of the image or video).
    flag: the flag and value that chose the folder, for the message (e.g. '--output=out/').
    tool: the program, for the message (e.g. 'predict.py').
  Raises:
    errors.ConfigError: naming the flag and the first file that would be replaced.
  """
  folder = os.path.abspath(os.path.expanduser(folder))
  ours = _manifest(folder)
  for name, source in sorted(_with_sources(names).items()):
    target = os.path.join(folder, name)
    if not os.path.lexists(target):
      continue
    if name not in ours:
      raise errors.ConfigError(
          f"{flag}: {tool} would replace {target}, which it did not write; choose another "
          "output path or move that file away")
    if source is not None and ours[name] is not None and ours[name] != source:
      raise errors.ConfigError(
          f"{flag}: {target} holds the output for {ours[name]}, not for {source}; choose "
          "another output path or move that file away")


def record_outputs(folder, names):
  """Adds `names` (as `check_outputs` takes them) to `folder`'s MANIFEST (atomically; creates the
  folder): the files a tool is about to write there and their inputs, which a later run from the
  same inputs may then replace (`check_outputs`)."""
  folder = os.path.abspath(os.path.expanduser(folder))
  ours = _manifest(folder)
  merged = {**ours, **_with_sources(names)}
  if merged != ours:
    replace_atomically(os.path.join(folder, MANIFEST),
                       lambda f: json.dump(dict(sorted(merged.items())), f, indent=0), mode="t")
