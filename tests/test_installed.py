"""The package installed (`pip install .`, not editable) works outside the checkout: quickstart,
then `python -m mpn_jax.tools.predict` and `python -m mpn_jax.tools.evaluate` on its model, all run
from a folder that is not the checkout, with `mpn_jax` imported from the new environment.

The new venv installs nothing from the network: `--no-deps --no-build-isolation`, and the
dependencies come from this interpreter's site-packages through a path line in a .pth file. (A
`--system-site-packages` venv would see the base interpreter's packages, not this venv's; and a
path line adds the folder to sys.path without running the .pth files in it, so the editable
install's finder, which would import mpn_jax from the checkout, stays off.)
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv

import numpy as np
from PIL import Image
import pytest

from conftest import TEST_XLA_FLAGS

pytestmark = pytest.mark.slow  # an install and the quickstart's smoke preset: ~1-3 min

REPO = pathlib.Path(__file__).resolve().parents[1]


def _venv_python(env_dir):
  return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(python, args, cwd, env, timeout=600):
  proc = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stderr[-4000:]}"
  return proc


def test_installed_package_runs_outside_the_checkout(tmp_path):
  # A copy of what the package is built from, so that the build writes nothing into the checkout.
  source = tmp_path / "source"
  source.mkdir()
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(REPO / name, source / name)
  shutil.copytree(REPO / "mpn_jax", source / "mpn_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

  env_dir = tmp_path / "env"
  venv.EnvBuilder(with_pip=True).create(env_dir)
  python = _venv_python(env_dir)
  site = pathlib.Path(_run(python, ["-c", "import sysconfig; print(sysconfig.get_paths()"
                                    "['purelib'])"], tmp_path, os.environ).stdout.strip())
  (site / "_mpn_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env.update(PYTHONNOUSERSITE="1", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", XLA_FLAGS=TEST_XLA_FLAGS)
  _run(python, ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                str(source)], tmp_path, env)

  user = tmp_path / "user"  # the user's folder: neither the checkout nor the source copy
  user.mkdir()
  where = _run(python, ["-c", "import mpn_jax; print(mpn_jax.__file__)"], user, env).stdout
  where = pathlib.Path(where.strip()).resolve()
  assert env_dir.resolve() in where.parents, where
  assert REPO not in where.parents, where

  model = user / "model"
  proc = _run(python, ["-m", "mpn_jax.quickstart", "--preset=smoke", f"--workdir={model}"], user,
              env, timeout=900)
  assert "keypoint AP = " in proc.stdout.strip().splitlines()[-1], proc.stdout[-2000:]

  images = user / "images"
  images.mkdir()
  pixels = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(images / "photo.jpg")
  out = user / "out"
  _run(python, ["-m", "mpn_jax.tools.predict", f"--model={model}", f"--input={images}/photo.jpg",
                f"--output={out}"], user, env)
  assert (out / "photo.png").is_file()
  predictions = json.loads((out / "predictions.json").read_text())
  assert isinstance(predictions, list)

  stats = model / "eval" / "pipeline_stats.json"
  stats.unlink()  # the quickstart wrote one; evaluate must write it again
  _run(python, ["-m", "mpn_jax.tools.evaluate", f"--model={model}"], user, env)
  assert 0.0 <= json.loads(stats.read_text())["AP"] <= 1.0

  # train: --config=configs/<stage>.py is the package's own file where the folder has none (a
  # misspelt preset is reported by the loaded config, not as a missing file).
  proc = subprocess.run([str(python), "-m", "mpn_jax.tools.train", "--config=configs/prn.py:smok",
                         f"--workdir={user / 'w'}"], cwd=user, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("mpn_jax.tools.train: error: ") and "unknown preset 'smok'" in line, line
