r"""Runs a trained MultiPoseNet on images and draws the people.

  python predict.py --model=runs/coco --input=FOLDER_OR_IMAGE --output=OUT_DIR

writes OUT_DIR/<image stem>.png (skeletons, keypoints, boxes, scores; <file name>.png where two
inputs share a stem) and OUT_DIR/predictions.json (per image: its people's keypoints
[17 x (x, y, score)], box [x1, y1, x2, y2] and score, in image pixels). OUT_DIR must not be, or
lie inside, the input folder: the inputs are never overwritten. The model folder holds branches/
and prn/ (what `python -m mpn_jax.quickstart --workdir=DIR` leaves in DIR); it is rebuilt from the
configs saved in its checkpoints. Errors the user can fix are one line `predict.py: error: ...`,
exit status 2.
"""

from absl import app
from absl import flags

from mpn_jax import cli

_MODEL = flags.DEFINE_string("model", None, "Model folder (holding branches/ and prn/).")
_INPUT = flags.DEFINE_string("input", None, "A folder of images, or one image file.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the pictures and predictions.json (not "
                              "the input folder nor one inside it).")
_MIN_SCORE = flags.DEFINE_float("min_score", 0.1, "Draw people with at least this score.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per step.")
flags.mark_flags_as_required(["model", "input", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported after flag parsing, so that a bad flag fails before TensorFlow and JAX load.
  from mpn_jax.inference import images  # pylint: disable=g-import-not-at-top
  images.predict_images(_MODEL.value, _INPUT.value, _OUTPUT.value, _MIN_SCORE.value,
                        batch_size=_BATCH_SIZE.value)


if __name__ == "__main__":
  cli.run(main, "predict.py")
