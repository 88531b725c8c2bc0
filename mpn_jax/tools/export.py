r"""Exports a trained MultiPoseNet for serving outside this package.

  python export.py --model=runs/quickstart --format=stablehlo --output=exported/stablehlo
  python export.py --model=runs/quickstart --format=onnx --output=exported/onnx
  python export.py --model=runs/quickstart --format=saved_model --output=exported/saved_model

stablehlo: the whole pipeline (network, peaks, NMS, PRN, assignment) as serialized StableHLO
(jax.export) with a symbolic batch size, its weights in a separate params.npz and a manifest.json;
it loads with jax and numpy alone. onnx: the network (heatmaps and person mask at stride 4,
RetinaNet class logits and box deltas), for ONNX Runtime / OpenVINO. saved_model: a TF SavedModel
of the network. --output must be a new or empty folder; it is written all at once. The formats, the
loader script and the measured tolerances: docs/export.md. onnx and saved_model need the optional
packages: pip install -e ".[export]". Errors the user can fix are one line `export.py: error: ...`,
exit status 2.
Installed (no checkout): `python -m mpn_jax.tools.export` with the same flags.
"""

from absl import app
from absl import flags

from mpn_jax import cli

FORMATS = ("stablehlo", "onnx", "saved_model")

_MODEL = flags.DEFINE_string("model", None, "Model folder (holding branches/ and prn/).")
_FORMAT = flags.DEFINE_enum("format", None, FORMATS, "What to export.")
_OUTPUT = flags.DEFINE_string("output", None, "A new or empty folder for the exported files.")
_ASSIGN = flags.DEFINE_string("assign_method", None, "stablehlo: overrides the model's "
                              "inference.assign_method (hungarian ones run on the host and cannot "
                              "be exported: use greedy, mutual or global_greedy).")
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "stablehlo: the platforms the "
                               "exported function is lowered for.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "onnx: a fixed batch size (0: dynamic).")
flags.mark_flags_as_required(["model", "format", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported after flag parsing, so that a bad flag fails before TensorFlow and JAX load.
  from mpn_jax import export  # pylint: disable=g-import-not-at-top
  summary = export.export_model(_MODEL.value, _FORMAT.value, _OUTPUT.value,
                                assign_method=_ASSIGN.value, platforms=tuple(_PLATFORMS.value),
                                batch_size=_BATCH.value or None)
  print(summary)


if __name__ == "__main__":
  cli.run(main, "mpn_jax.tools.export")
