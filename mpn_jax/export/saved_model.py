"""The network as a TensorFlow SavedModel (jax2tf, native serialization: StableHLO in an
XlaCallModule op), for TF Serving and TensorFlow.

OUTPUT/
  saved_model.pb, variables/   signature 'serving_default': images [B, S, S, 3] float32 ->
                               {'keypoints', 'cls_logits', 'box_deltas'} (as the ONNX export);
                               the weights are tf.Variables (arguments, not constants)
  anchors.npy, manifest.json   as the ONNX export's

Why the network and not the whole pipeline: the pipeline's StableHLO uses `top_k` as a
`stablehlo.composite` of StableHLO 1.15 (jax 0.10), which TensorFlow 2.21's XlaCallModule (StableHLO
1.13) cannot read ("failed to deserialize portable artifact"); the network alone loads and runs.
The StableHLO export holds the whole pipeline.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mpn_jax import boxes as box_lib
from mpn_jax import models
from mpn_jax.export import common
from mpn_jax.export import onnx as onnx_export

MANIFEST_FILE = "manifest.json"
ANCHORS_FILE = "anchors.npy"
PLATFORMS = ("cpu", "cuda", "tpu")


def export(model, output):
  """Writes the SavedModel, anchors.npy and manifest.json into OUTPUT (all at once)."""
  common.check_output(output)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  branch_vars, _, bcfg, _, icfg = common.restore_model(model)
  size = int(bcfg.input.size)
  net = models.build_multiposenet(bcfg.model)
  leaves, treedef = jax.tree_util.tree_flatten(branch_vars)
  leaves = [np.asarray(x) for x in leaves]

  def fn(images, *params):
    return onnx_export.network_fn(net, jax.tree_util.tree_unflatten(treedef, params))(images)

  converted = jax2tf.convert(fn, polymorphic_shapes=[f"(b, {size}, {size}, 3)"] + [None] * len(leaves),
                             with_gradient=False, native_serialization_platforms=PLATFORMS)
  module = tf.Module()
  module.variables_list = [tf.Variable(x, trainable=False) for x in leaves]

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, size, size, 3], tf.float32, name=onnx_export.INPUT_NAME)])
  def serve(images):
    return dict(zip(onnx_export.OUTPUT_NAMES, converted(images, *module.variables_list)))

  module.serve = serve
  shapes = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
                          *[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves])
  manifest = {
      "format": "TensorFlow SavedModel of the MultiPoseNet network (jax2tf, native serialization)",
      "signature": "serving_default",
      "inputs": {onnx_export.INPUT_NAME: {"shape": ["B", size, size, 3], "dtype": "float32",
                                          "meaning": "letterboxed, normalised images"}},
      "preprocessing": common.preprocessing(size),
      "outputs": {n: {"shape": ["B"] + list(s.shape[1:]), "dtype": str(s.dtype)}
                  for n, s in zip(onnx_export.OUTPUT_NAMES, shapes)},
      "anchors_file": ANCHORS_FILE,
      "platforms": list(PLATFORMS),
      "tensorflow_version": tf.__version__,
      "jax_version": jax.__version__,
      "config": {"branches": common.to_plain(bcfg), "inference": common.to_plain(icfg)},
  }
  with common.staging(output) as tmp:
    tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
    np.save(os.path.join(tmp, ANCHORS_FILE),
            np.asarray(box_lib.generate_anchors((size, size)), np.float32))
    with open(os.path.join(tmp, MANIFEST_FILE), "w", encoding="utf-8") as f:
      json.dump(manifest, f, indent=1)
  return manifest
