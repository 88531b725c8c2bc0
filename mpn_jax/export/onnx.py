"""The network as ONNX (jax2onnx), for ONNX Runtime, OpenVINO and other ONNX consumers.

OUTPUT/
  multiposenet.onnx   images [B, S, S, 3] float32 (letterboxed, normalised; B dynamic) ->
                        keypoints  [B, S/4, S/4, 18]  17 heatmaps then the person mask, stride 4
                        cls_logits [B, A, 1]          RetinaNet person logits (before the sigmoid)
                        box_deltas [B, A, 4]          box deltas (mpn_jax.boxes.decode, stds
                                                      0.1, 0.1, 0.2, 0.2) of the A anchors of
                                                      P3..P7, level by level, [h, w, 9] row-major
  anchors.npy         [A, 4] float32 the anchors (x1, y1, x2, y2, input pixels) of those rows
  manifest.json       input size and normalisation, outputs, file sizes, the configs

The post-processing (peaks, NMS, PRN, assignment) is not in the ONNX file; the StableHLO export holds
the whole pipeline. Two repairs are made to jax2onnx's graph: the stale `value_info` is cleared
(ONNX Runtime refused the file with it), and identical initializers are merged (the RetinaNet head
applies one set of weights to five pyramid levels, which the trace writes out once per level).
"""

import contextlib
import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from mpn_jax import boxes as box_lib
from mpn_jax import models
from mpn_jax.export import common

ONNX_FILE = "multiposenet.onnx"
ANCHORS_FILE = "anchors.npy"
MANIFEST_FILE = "manifest.json"
INPUT_NAME = "images"
OUTPUT_NAMES = ("keypoints", "cls_logits", "box_deltas")
OPSET = 17


def network_fn(net, variables):
  """images -> (keypoints, cls_logits, box_deltas) of the MultiPoseNet in inference mode."""
  variables = jax.tree.map(jnp.asarray, variables)

  def fn(images):
    out = net.apply(variables, images, train=False)
    return out["keypoints"], out["cls_logits"], out["box_deltas"]
  return fn


@contextlib.contextmanager
def _quiet(*names):
  loggers = [logging.getLogger(n) for n in names]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def dedupe_initializers(model):
  """Merges initializers with equal dtype, shape and bytes into one (rewiring every node input and
  graph output that used a duplicate); returns the number removed. Works on the main graph and
  every subgraph that reads its initializers."""
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  graph = model.graph
  first, rename, keep = {}, {}, []
  for init in graph.initializer:
    arr = numpy_helper.to_array(init)
    key = (init.data_type, tuple(init.dims),
           hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
    if key in first:
      rename[init.name] = first[key]
    else:
      first[key] = init.name
      keep.append(init)
  if not rename:
    return 0

  def rewire(g):
    for node in g.node:
      for i, name in enumerate(node.input):
        if name in rename:
          node.input[i] = rename[name]
      for attr in node.attribute:
        for sub in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
          rewire(sub)
    for out in g.output:
      if out.name in rename:  # an output that is a duplicated constant: keep its name
        g.node.add(op_type="Identity", input=[rename[out.name]], output=[out.name])
  rewire(graph)
  del graph.initializer[:]
  graph.initializer.extend(keep)
  return len(rename)


def convert(net, variables, size, batch_size=None):
  """(onnx ModelProto, stats dict) of the network; stats: sizes and initializer counts before and
  after the repairs."""
  onnx, jax2onnx = common.require("onnx", "jax2onnx", fmt="onnx")
  batch = batch_size if batch_size else "B"
  with _quiet("onnx_ir", "onnx_ir.serde", "jax2onnx"):
    model = jax2onnx.to_onnx(network_fn(net, variables), [(batch, size, size, 3)],
                             model_name="multiposenet", opset=OPSET, input_names=[INPUT_NAME],
                             output_names=list(OUTPUT_NAMES))
  stats = {"bytes_raw": model.ByteSize(), "initializers_raw": len(model.graph.initializer)}
  # jax2onnx leaves value_info entries whose types disagree with the graph: ONNX Runtime refused the
  # file with them. Shapes are inferred again from the graph itself.
  del model.graph.value_info[:]
  stats["initializers_merged"] = dedupe_initializers(model)
  model = onnx.shape_inference.infer_shapes(model)
  onnx.checker.check_model(model, full_check=True)
  stats["bytes"] = model.ByteSize()
  stats["initializers"] = len(model.graph.initializer)
  return model, stats


def export(model, output, batch_size=None):
  """Writes OUTPUT/{multiposenet.onnx, anchors.npy, manifest.json} (all at once).

  Returns: the manifest (dict).
  """
  common.require("onnx", "jax2onnx", fmt="onnx")
  common.check_output(output)
  branch_vars, _, bcfg, pcfg, icfg = common.restore_model(model)
  size = int(bcfg.input.size)
  net = models.build_multiposenet(bcfg.model)
  proto, stats = convert(net, branch_vars, size, batch_size)
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
      "sizes": stats,
      "config": {"branches": common.to_plain(bcfg), "inference": common.to_plain(icfg)},
  }
  with common.staging(output) as tmp:
    with open(os.path.join(tmp, ONNX_FILE), "wb") as f:
      f.write(proto.SerializeToString())
    np.save(os.path.join(tmp, ANCHORS_FILE), anchors)
    with open(os.path.join(tmp, MANIFEST_FILE), "w", encoding="utf-8") as f:
      json.dump(manifest, f, indent=1)
  del pcfg
  return manifest
