"""What the commands log: the project's progress lines, and the libraries' warnings and errors.

absl prints INFO records to the terminal once a command's flags are parsed; Orbax writes a dozen
INFO lines per checkpoint restored or saved, TensorFlow Datasets several per dataset built, and JAX
one about the TPU backend it did not find on a CPU or GPU machine, jax2onnx several per network
converted for the ONNX runtimes. None of it is something a user
acts on, and it buries the progress lines and result tables. `quiet_library_logs` drops those INFO
records; warnings and errors of every library still show. `Progress` is the commands' progress bar.
"""

import logging as std_logging
import os
import sys

from absl import logging

# Packages whose INFO records are dropped (matched on the logging call's source path).
_QUIET_PACKAGES = ("orbax", "tensorflow_datasets", "jax2onnx")
# Single modules, for packages whose other INFO lines can matter (jax: compilation cache notes).
_QUIET_MODULES = (os.path.join("jax", "_src", "xla_bridge.py"),)


class LibraryInfoFilter(std_logging.Filter):
  """Drops INFO lines of `_QUIET_PACKAGES` and `_QUIET_MODULES`; their warnings and errors still
  show, except the tracebacks that each of Orbax's writer threads logs for a failed save (the save
  raises, and the training loop reports it once as errors.CheckpointError) and Orbax's warning
  that a step saved between evaluations has no metric (by design: kept as the last N)."""

  def filter(self, record):
    path = record.pathname
    if f"{os.sep}orbax{os.sep}" in path and (
        path.endswith(f"futures{os.sep}future.py") or
        "Requested `tracked_metric`" in str(record.msg)):
      return False
    if record.levelno >= std_logging.WARNING:
      return True
    return not (any(f"{os.sep}{name}{os.sep}" in path for name in _QUIET_PACKAGES) or
                path.endswith(_QUIET_MODULES))


def quiet_library_logs():
  """Installs `LibraryInfoFilter` on absl's handler (idempotent)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(LibraryInfoFilter())


class Progress:
  """A progress bar on stderr (tqdm: items done, items/s, ETA when `total` is known) for the
  commands that run a model over many inputs (predict.py's images, video frames, webcam)."""

  def __init__(self, total, desc, unit="frame"):
    import tqdm  # pylint: disable=g-import-not-at-top  (only the commands that show a bar need it)
    self._bar = tqdm.tqdm(total=total, desc=desc, unit=unit, mininterval=1.0, file=sys.stderr)

  def update(self, n=1):
    self._bar.update(n)

  def update_to(self, n):
    """Sets the count of items done to `n`."""
    self._bar.update(n - self._bar.n)

  def close(self):
    self._bar.close()
