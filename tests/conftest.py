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
# XLA:CPU without LLVM's optimisation passes, here and in the tools the tests start (they set
# XLA_FLAGS to this): the tests run tiny networks a few steps, so compiling dominates, and it is
# 3-4x faster unoptimised (a smoke quickstart 35 -> 25 s); the code computes the same things,
# float results may differ in the last bits (no test compares against numbers compiled otherwise).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()
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


# The modules whose tests run whole tools (seconds to a minute each) go first: pytest-xdist hands
# tests out in this order, so the many short ones fill both workers at the end instead of one
# worker finishing a long command alone.
_LONG_MODULES = ("test_installed.py", "test_readme_commands.py", "test_quickstart.py",
                 "test_training.py", "test_benchmark.py")


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: item.path.name not in _LONG_MODULES)  # stable: order kept within
