r"""Evaluates a trained MultiPoseNet (COCO AP through pycocotools).

  # the whole model on its validation images (MODEL/branches + MODEL/prn):
  python evaluate.py --model=runs/coco
  # any COCO-format set of images, with test-time scales:
  python evaluate.py --model=runs/coco --config.eval.ann_file=ANN.json \
      --config.eval.image_dir=IMAGES/ --config.inference.scales=1.0,1.5
  # the person detector (COCOeval bbox) and its keypoint peaks (MODEL or the branches workdir):
  python evaluate.py --model=runs/coco --config.eval.mode=detector
  # the PRN on ground-truth keypoints, no images (MODEL or the PRN workdir):
  python evaluate.py --model=runs/coco/prn --config.eval.mode=prn_gt --config.eval.ann_file=ANN.json

The model is rebuilt from the configs saved in its checkpoints. --config.eval.* are the fields of
mpn_jax.configs.defaults.eval_config; --config.inference.* override the inference settings
saved with the runs. Statistics are printed as a table and written as JSON (config.eval.output,
default MODEL/eval/<mode>_stats.json). Errors the user can fix are one line
`evaluate.py: error: ...`, exit status 2.
Installed (no checkout): `python -m mpn_jax.tools.evaluate` with the same flags.
"""

import sys

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from mpn_jax import cli
from mpn_jax.configs import defaults

_MODEL = flags.DEFINE_string("model", None, "Model folder (holding branches/ and prn/), or a "
                             "stage workdir for the detector / prn_gt modes.")
try:
  # A config dict applies the --config.* overrides while the flag is defined, before cli.run.
  _CONFIG = config_flags.DEFINE_config_dict(
      "config", ml_collections.ConfigDict({"eval": defaults.eval_config("pipeline"),
                                           "inference": defaults.inference_config()}),
      "Evaluation fields (--config.eval.*) and inference overrides (--config.inference.*).")
except cli._FLAG_PARSE_ERRORS as e:  # pylint: disable=protected-access
  cli.fail(cli.tool_prog("mpn_jax.tools.evaluate"), cli.describe_flag_error(e, sys.argv))
flags.mark_flags_as_required(["model"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Here, not at the top: flags first, so that a bad flag fails before TensorFlow and JAX load.
  from mpn_jax.evaluation import evaluators  # pylint: disable=g-import-not-at-top
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  inference = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("inference.")}
  evaluators.evaluate(_MODEL.value, _CONFIG.value.eval, inference)


if __name__ == "__main__":
  cli.run(main, "mpn_jax.tools.evaluate")
