r"""Evaluates a trained MultiPoseNet (COCO keypoint AP through pycocotools).

  # the whole model on images (branches + PRN checkpoints):
  python evaluate.py --config=configs/prn.py --workdir=runs/prn \
      --config.eval.branches_workdir=runs/branches
  # any COCO-format set of images:
  python evaluate.py --config=configs/prn.py --workdir=runs/prn \
      --config.eval.branches_workdir=runs/branches \
      --config.eval.ann_file=ANN.json --config.eval.image_dir=IMAGES/
  # the person detector (COCOeval bbox) and the keypoint peaks:
  python evaluate.py --config=configs/branches.py --workdir=runs/branches \
      --config.eval.mode=detector
  # the PRN on ground-truth keypoints (no images):
  python evaluate.py --config=configs/prn.py --workdir=runs/prn --config.eval.mode=prn_gt \
      --config.eval.ann_file=ANN.json --config.eval.output=OUT.json

Statistics are printed as a table and written as JSON (config.eval.output, default
WORKDIR/eval/<mode>_stats.json). See mpn_jax/evaluate.py for every config.eval field. Statistics
are never computed on nothing: no image evaluated, or no annotated person, is an error. Errors the
user can fix are one line `evaluate.py: error: ...`, exit status 2.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from mpn_jax import cli

config_flags.DEFINE_config_file("config", None, "Config file (configs/prn.py or configs/branches.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory holding the checkpoint to evaluate.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mpn_jax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top  (flags first)
  evaluate_lib.evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main, "evaluate.py")
