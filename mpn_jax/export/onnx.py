"""The network (and the PRN) as ONNX (jax2onnx), for ONNX Runtime, OpenVINO and other ONNX consumers.

OUTPUT/
  multiposenet.onnx   images [B, S, S, 3] float32 (letterboxed, normalised; B dynamic) ->
                        keypoints  [B, S/4, S/4, 18]  17 heatmaps then the person mask, stride 4
                        cls_logits [B, A, 1]          RetinaNet person logits (before the sigmoid)
                        box_deltas [B, A, 4]          box deltas (mpn_jax.boxes.decode, stds
                                                      0.1, 0.1, 0.2, 0.2) of the A anchors of
                                                      P3..P7, level by level, [h, w, 9] row-major
  prn.onnx            prn_inputs [M, 56, 36, 17] float32 -> probabilities [M, 56, 36, 17] (softmax
                        over the 56 x 36 cells of each keypoint type)
  anchors.npy         [A, 4] float32 the anchors (x1, y1, x2, y2, input pixels) of those rows
  manifest.json       input size and normalisation, outputs, file sizes, the configs

The rest of the pipeline (peaks, NMS, the PRN's inputs, assignment) is not in the ONNX files: it
is what `python predict.py --runtime=onnxruntime|openvino` runs in JAX around them; the StableHLO
export holds the whole pipeline. The conversion and its two repairs (stale `value_info` cleared,
identical initializers merged) are `mpn_jax.inference.runtimes.to_onnx`.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mpn_jax import boxes as box_lib
from mpn_jax import coco
from mpn_jax import models
from mpn_jax import prn_grid
from mpn_jax.export import common
from mpn_jax.inference import predictor
from mpn_jax.inference import runtimes

ONNX_FILE = "multiposenet.onnx"
PRN_FILE = "prn.onnx"
ANCHORS_FILE = "anchors.npy"
MANIFEST_FILE = "manifest.json"
INPUT_NAME = "images"
OUTPUT_NAMES = runtimes.NETWORK_OUTPUTS
OPSET = runtimes.OPSET
network_fn = runtimes.network_fn


def convert(net, variables, size, batch_size=None):
  """(onnx ModelProto, stats dict) of the network (`runtimes.to_onnx`)."""
  batch = batch_size if batch_size else "B"
  return runtimes.to_onnx(network_fn(net, variables), (batch, size, size, 3), "multiposenet",
                          INPUT_NAME, OUTPUT_NAMES, what="--format=onnx")


def convert_prn(prn, variables, batch_size=None):
  """(onnx ModelProto, stats dict) of the PRN with its softmax."""
  shape = (batch_size if batch_size else "M", prn_grid.GRID_H, prn_grid.GRID_W,
           coco.NUM_KEYPOINTS)
  return runtimes.to_onnx(runtimes.prn_fn(prn, variables), shape, "pose_residual_network",
                          "prn_inputs", ("probabilities",), what="--format=onnx")


def export(model, output, batch_size=None):
  """Writes OUTPUT/{multiposenet.onnx, anchors.npy, manifest.json} (all at once).

  Returns: the manifest (dict).
  """
  common.require("onnx", "jax2onnx", fmt="onnx")
  common.check_output(output)
  branch_vars, prn_vars, bcfg, pcfg, icfg = common.restore_model(model)
  size = int(bcfg.input.size)
  net = models.build_multiposenet(bcfg.model)
  proto, stats = convert(net, branch_vars, size, batch_size)
  prn_proto, prn_stats = convert_prn(models.build_prn(pcfg.model), prn_vars, batch_size)
  shapes = jax.eval_shape(network_fn(net, branch_vars),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  anchors = np.asarray(box_lib.generate_anchors((size, size)), np.float32)
  batch = batch_size if batch_size else "B"
  manifest = {
      "format": f"ONNX (opset {OPSET}) of the MultiPoseNet network, converted with jax2onnx",
      "file": ONNX_FILE,
      "inputs": {INPUT_NAME: {"shape": [batch, size, size, 3], "dtype": "float32",
                              "meaning": "letterboxed, normalised images"}},
      "preprocessing": common.preprocessing(size),
      "outputs": {name: {"shape": [batch] + list(s.shape[1:]), "dtype": str(s.dtype)}
                  for name, s in zip(OUTPUT_NAMES, shapes)},
      "outputs_meaning": {
          "keypoints": "17 COCO keypoint heatmaps then the person mask, stride 4 (cell j centre "
                       "= input point 4 (j + 0.5)), raw linear outputs",
          "cls_logits": "person logits of the anchors in anchors.npy (sigmoid -> score)",
          "box_deltas": "deltas of those anchors (dx, dy, dw, dh with stds 0.1, 0.1, 0.2, 0.2; "
                        "mpn_jax.boxes.decode)",
      },
      "anchors_file": ANCHORS_FILE,
      "prn": {"file": PRN_FILE,
              "inputs": {"prn_inputs": {"shape": [batch_size or "M", prn_grid.GRID_H,
                                                  prn_grid.GRID_W, coco.NUM_KEYPOINTS],
                                        "dtype": "float32"}},
              "outputs": {"probabilities": {"shape": [batch_size or "M", prn_grid.GRID_H,
                                                      prn_grid.GRID_W, coco.NUM_KEYPOINTS],
                                            "dtype": "float32"}},
              "input_drawing": predictor.prn_input(pcfg),
              "sizes": prn_stats},
      "sizes": stats,
      "config": {"branches": common.to_plain(bcfg), "prn": common.to_plain(pcfg.model),
                 "inference": common.to_plain(icfg)},
  }
  with common.staging(output) as tmp:
    with open(os.path.join(tmp, ONNX_FILE), "wb") as f:
      f.write(proto.SerializeToString())
    with open(os.path.join(tmp, PRN_FILE), "wb") as f:
      f.write(prn_proto.SerializeToString())
    np.save(os.path.join(tmp, ANCHORS_FILE), anchors)
    with open(os.path.join(tmp, MANIFEST_FILE), "w", encoding="utf-8") as f:
      json.dump(manifest, f, indent=1)
  return manifest
