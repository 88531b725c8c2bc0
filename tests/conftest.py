"""Shared test setup: 4 simulated CPU devices, and the real COCO samples in ../shared."""

import os
import pathlib
import shutil
import tempfile

# Must happen before JAX initialises its backends (i.e. before any test touches jax.devices()).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent JAX compilation cache for the whole session: the pytest-xdist workers inherit it
# from the controller (which loads this file first), and so do the tools the tests start as
# subprocesses (train.py, evaluate.py, ...), which compile the same tiny programs again and again;
# compiling is most of a smoke run's time on a CPU. The controller deletes it at the end
# (pytest_unconfigure). A cache dir set by the caller is used as it is and kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mpn_test_jax_cache_")
  os.environ["MPN_TEST_OWNS_JAX_CACHE"] = str(os.getpid())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("MPN_SHARED", REPO.parent / "shared"))
COCO_DIR = SHARED / "data" / "coco"


def require_shared(path=COCO_DIR):
  """Skips (or fails, when MPN_REQUIRE_SHARED=1 as in CI) when the real samples are absent."""
  if not pathlib.Path(path).exists():
    msg = (f"real COCO samples not found at {path}: put the project's shared/ folder beside the "
           "checkout or set MPN_SHARED")
    if os.environ.get("MPN_REQUIRE_SHARED") == "1":
      pytest.fail(msg)
    pytest.skip(msg)
  return pathlib.Path(path)


@pytest.fixture(scope="session")
def coco_dir():
  """Path to ../shared/data/coco (train2017/, val2017/, annotations/, golden/)."""
  return require_shared(COCO_DIR)


def pytest_unconfigure(config):
  del config
  if os.environ.get("MPN_TEST_OWNS_JAX_CACHE") == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
