"""One training run per workdir: an exclusive lock held for the run's whole life.

The lock is `fcntl.flock` on WORKDIR/.lock. The kernel releases it when the holding process ends
in any way (exit, exception, SIGTERM, kill -9, a crash), so a lock left by a killed run never
blocks the next one; the file itself stays and only says who held it last. A second run on a
workdir in use stops at once with errors.WorkdirError naming the holder (pid, host, command,
start time). With several processes (jax.distributed) process 0 takes the lock and tells the
others whether it got it.

flock is honoured by local file systems and by NFSv4 / Lustre clients; on a network file system
without lock support, two hosts are not kept apart (docs/reliability.md).
"""

import datetime
import json
import os
import socket
import sys

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from mpn_jax import errors

LOCK_FILE = ".lock"


def prepare(workdir):
  """Creates `workdir` (absolute path returned); WorkdirError when it is a file or unwritable."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.WorkdirError(f"--workdir={workdir} is a file, not a folder: choose another path")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.WorkdirError(f"--workdir={workdir} cannot be created ({e.filename}: "
                              f"{e.strerror}): choose a folder you can write") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise errors.WorkdirError(f"--workdir={workdir} is not writable (permission denied): choose "
                              "a folder you can write")
  return workdir


def _holder(path):
  """What the lock file says about its holder ({} when empty or unreadable)."""
  try:
    with open(path) as f:
      return json.loads(f.read() or "{}")
  except (OSError, ValueError):
    return {}


class WorkdirLock:
  """Context manager: holds WORKDIR/.lock exclusively, else raises errors.WorkdirError."""

  def __init__(self, workdir, command=None):
    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.command = command or " ".join([os.path.basename(sys.argv[0] or "python")] +
                                       sys.argv[1:])[:300]
    self._fd = None

  def _acquire(self):
    """True when this process now holds the lock; (False, holder dict) otherwise."""
    # Here, not at the top: fcntl is POSIX only, and the rest of the module works without it.
    import fcntl  # pylint: disable=g-import-not-at-top
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise errors.WorkdirError(f"cannot create the lock file {self.path} ({e.strerror}): choose "
                                "a --workdir you can write") from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by another process
      os.close(fd)
      return False, _holder(self.path)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return True, info

  def __enter__(self):
    ok, holder = (self._acquire() if jax.process_index() == 0 else (True, {}))
    if jax.process_count() > 1:
      ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
    if not ok:
      who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
             f"(`{holder.get('command', '?')}`, started {holder.get('started', '?')})"
             if holder else "another process (it is starting)")
      raise errors.WorkdirError(
          f"workdir {self.workdir} is in use by {who}: wait for that run to finish or stop it, "
          "or choose another --workdir")
    logging.info("holding %s", self.path)
    return self

  def __exit__(self, *exc):
    if self._fd is not None:
      os.close(self._fd)  # releases the lock; the file stays (removing it would race)
      self._fd = None
