r"""Trains one stage of MultiPoseNet: branches (configs/branches.py) or PRN (configs/prn.py).

  python train.py --config=configs/branches.py:synthetic --workdir=/tmp/mpn/branches
  python train.py --config=configs/prn.py:coco_small --workdir=/tmp/mpn/prn
  python train.py --config=configs/prn.py:smoke --workdir=/tmp/mpn/smoke --config.train.num_steps=10

Running again with the same --workdir resumes from its latest checkpoint; a second run on a workdir
in use is refused. Every config field can be overridden with --config.<field>=<value>; a misspelt
field is an error. Errors the user can fix are one line `train.py: error: ...`, exit status 2.
Outside the checkout (an installed package), `python -m mpn_jax.tools.train` takes the same
--config=configs/<stage>.py[:preset]: where the current folder has no such file, the package's own
mpn_jax/configs/<stage>.py is loaded.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from mpn_jax import cli
from mpn_jax import configs

_STAGES = ("branches.py", "prn.py")


def packaged_configs(argv):
  """argv with --config=configs/<stage>.py[:preset] pointing at the package's own config file when
  the current folder has no such file (an installed package run outside the checkout)."""
  out = []
  for arg in argv:
    if arg.startswith("--config="):
      path, sep, preset = arg[len("--config="):].partition(":")
      if (os.path.normpath(os.path.dirname(path)) == "configs"
          and os.path.basename(path) in _STAGES and not os.path.exists(path)):
        packaged = os.path.join(os.path.dirname(configs.__file__), os.path.basename(path))
        arg = f"--config={packaged}{sep}{preset}"
    out.append(arg)
  return out


sys.argv[:] = packaged_configs(sys.argv)  # before the flags are parsed (by cli.run)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file[:preset], e.g. configs/branches.py:synthetic.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints and TensorBoard logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from mpn_jax import training  # pylint: disable=g-import-not-at-top  (flags first: fast errors)
  training.train_and_evaluate(_CONFIG.value, _WORKDIR.value, log_config=True)


if __name__ == "__main__":
  cli.run(main, "mpn_jax.tools.train")
