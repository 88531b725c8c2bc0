r"""Runs a trained MultiPoseNet on images, a video or a webcam and draws the people.

  python predict.py --model=runs/coco --input=SOURCE --output=OUT_DIR

SOURCE is a folder of images, one image file, a glob pattern ('photos/*.jpg', quoted), a video
file (mp4, mov, avi, mkv, webm, ...) or a webcam index (0, 1, ...).
  * images: OUT_DIR/<image stem>.png (the people drawn on the image's own pixels; <file name>.png
    where two inputs share a stem) and OUT_DIR/predictions.json, COCO keypoint results (image_id,
    file_name, category_id, keypoints [x, y, score] * 17, score, bbox [x, y, w, h]);
  * a video clip.mp4: OUT_DIR/clip.mp4 (H.264, the source's frame rate and size) and
    OUT_DIR/clip.json ({"frames": [{"frame", "time_s", "people": [{"keypoints" [17 x (x, y,
    score)], "box" [x1, y1, x2, y2], "score"}]}]});
  * webcam N: OUT_DIR/webcamN_<date-time>.mp4 and .json the same way, until Ctrl-C or
    --max_frames (no window is opened).
OUT_DIR must not be, or lie inside, the input folder, and no output may replace an input or a file
predict.py did not write there (a run repeated into OUT_DIR updates its own outputs). The model
folder holds branches/ and prn/ (what `python -m mpn_jax.quickstart --workdir=DIR` leaves in DIR);
it is rebuilt from the configs saved in its checkpoints. Errors the user can fix are one line
`predict.py: error: ...`, exit status 2. More: docs/predict.md.
--runtime=onnxruntime|openvino runs the network and the PRN in that CPU runtime (converted to ONNX
at start-up) and --precision=bf16 in bfloat16 where the CPU has it (docs/predict.md).
Installed (no checkout): `python -m mpn_jax.tools.predict` with the same flags.
"""

from absl import app
from absl import flags

from mpn_jax import cli

PARTS = ("boxes", "keypoints", "skeleton", "scores")  # = mpn_jax.visualize.PARTS
RUNTIMES = ("jax", "onnxruntime", "openvino")  # = mpn_jax.inference.runtimes.RUNTIMES
PRECISIONS = ("fp32", "bf16")  # = mpn_jax.inference.runtimes.PRECISIONS

_MODEL = flags.DEFINE_string("model", None, "Model folder (holding branches/ and prn/).")
_INPUT = flags.DEFINE_string("input", None, "A folder of images, an image file, a quoted glob "
                             "pattern, a video file, or a webcam index (0, 1, ...).")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the pictures or video and the JSON (not "
                              "the input folder nor one inside it).")
_MIN_SCORE = flags.DEFINE_float("min_score", 0.1, "Draw and write people with at least this "
                                "score.")
_MIN_KEYPOINT_SCORE = flags.DEFINE_float("min_keypoint_score", 0.0, "Draw keypoints (and the "
                                         "limbs between them) scoring above this.")
_DRAW = flags.DEFINE_list("draw", list(PARTS), "What to draw, comma-separated, from "
                          f"{','.join(PARTS)} (e.g. --draw=skeleton,scores); 'none' draws "
                          "nothing (the picture or video is the input's).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images or video frames per step.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", 0, "Video and webcam: stop after this many "
                                   "frames (0: the whole video; a webcam runs until Ctrl-C).")
_RUNTIME = flags.DEFINE_enum("runtime", "jax", RUNTIMES, "Where the network and the PRN run: jax "
                             "(any device JAX has), or on the CPU onnxruntime / openvino (the "
                             "[export] extra; the rest of the pipeline stays JAX).")
_PRECISION = flags.DEFINE_enum("precision", "fp32", PRECISIONS, "fp32, or bf16 (openvino on CPUs "
                               "with AMX or AVX512_BF16; jax on GPUs and TPUs).")
flags.mark_flags_as_required(["model", "input", "output"])
flags.register_validator(
    "draw", lambda v: v == ["none"] or set(v) <= {*PARTS, "all"},
    message=f"--draw takes a comma-separated list of {','.join(PARTS)}, or all, or none")
flags.register_validator("max_frames", lambda v: v >= 0, message="--max_frames must be >= 0")
flags.register_validator("batch_size", lambda v: v >= 1, message="--batch_size must be >= 1")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported after flag parsing, so that a bad flag fails before TensorFlow and JAX load.
  from mpn_jax import visualize  # pylint: disable=g-import-not-at-top
  from mpn_jax.inference import video  # pylint: disable=g-import-not-at-top
  parts = () if _DRAW.value == ["none"] else visualize.parse_parts(",".join(_DRAW.value))
  video.predict_source(_MODEL.value, _INPUT.value, _OUTPUT.value, min_score=_MIN_SCORE.value,
                       batch_size=_BATCH_SIZE.value, parts=parts,
                       inference={"runtime": _RUNTIME.value, "precision": _PRECISION.value},
                       min_keypoint_score=_MIN_KEYPOINT_SCORE.value, max_frames=_MAX_FRAMES.value)


if __name__ == "__main__":
  cli.run(main, "mpn_jax.tools.predict")
