r"""Trains one stage of MultiPoseNet: branches (configs/branches.py) or PRN (configs/prn.py).

  python train.py --config=configs/branches.py:synthetic --workdir=/tmp/mpn/branches
  python train.py --config=configs/prn.py:coco_small --workdir=/tmp/mpn/prn
  python train.py --config=configs/prn.py:smoke --workdir=/tmp/mpn/smoke --config.train.num_steps=10

Running again with the same --workdir resumes from its latest checkpoint; a second run on a workdir
in use is refused. Every config field can be overridden with --config.<field>=<value>; a misspelt
field is an error. Errors the user can fix are one line `train.py: error: ...`, exit status 2.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mpn_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file[:preset], e.g. configs/branches.py:synthetic.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints and TensorBoard logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from mpn_jax import training  # pylint: disable=g-import-not-at-top  (flags first: fast errors)
  logging.info("config:\n%s", _CONFIG.value)
  training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main, "train.py")
