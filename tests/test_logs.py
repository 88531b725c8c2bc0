"""mpn_jax.logs: which library log records reach the terminal."""

import logging
import os

import pytest

from mpn_jax import logs


def _record(path, level, msg="message"):
  return logging.LogRecord("absl", level, path, 1, msg, None, None)


SITE = os.path.join(os.sep, "venv", "lib", "python3", "site-packages")


@pytest.mark.parametrize("path,level,shown", [
    (os.path.join(SITE, "orbax", "checkpoint", "checkpointer.py"), logging.INFO, False),
    (os.path.join(SITE, "orbax", "checkpoint", "checkpointer.py"), logging.WARNING, True),
    (os.path.join(SITE, "tensorflow_datasets", "core", "dataset_builder.py"), logging.INFO, False),
    (os.path.join(SITE, "tensorflow_datasets", "core", "dataset_builder.py"), logging.ERROR, True),
    (os.path.join(SITE, "jax2onnx", "user_interface.py"), logging.INFO, False),
    (os.path.join(SITE, "jax2onnx", "user_interface.py"), logging.WARNING, True),
    (os.path.join(SITE, "jax", "_src", "xla_bridge.py"), logging.INFO, False),
    (os.path.join(SITE, "jax", "_src", "xla_bridge.py"), logging.WARNING, True),
    # Other JAX modules' INFO lines (e.g. the compilation cache's) stay.
    (os.path.join(SITE, "jax", "_src", "compilation_cache.py"), logging.INFO, True),
    # The project's own progress lines stay.
    (os.path.join("work", "mpn_jax", "training", "loop.py"), logging.INFO, True),
    # Orbax writer threads' tracebacks of a failed save: the loop reports the failure once.
    (os.path.join(SITE, "orbax", "checkpoint", "futures", "future.py"), logging.ERROR, False),
])
def test_library_info_filter(path, level, shown):
  assert logs.LibraryInfoFilter().filter(_record(path, level)) is shown


def test_orbax_untracked_metric_warning_dropped():
  path = os.path.join(SITE, "orbax", "checkpoint", "checkpoint_manager.py")
  record = _record(path, logging.WARNING, "Requested `tracked_metric`: prn_gt_AP - not found")
  assert not logs.LibraryInfoFilter().filter(record)


def test_quiet_library_logs_installs_once():
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  try:
    logs.quiet_library_logs()
    logs.quiet_library_logs()
    assert sum(isinstance(f, logs.LibraryInfoFilter) for f in handler.filters) == 1
  finally:
    handler.filters[:] = before
