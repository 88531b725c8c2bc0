"""Shared test setup: 4 simulated CPU devices, and the real COCO samples in ../shared."""

import os
import pathlib

# Must happen before JAX initialises its backends (i.e. before any test touches jax.devices()).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
