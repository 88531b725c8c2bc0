"""The whole pipeline (network, peaks, NMS, PRN, assignment) as serialized StableHLO (`jax.export`).

OUTPUT/
  pipeline.stablehlo   `jax.export.Exported.serialize()`: f(images [B, S, S, 3] float32,
                       scales [B] float32, *params) -> dict of outputs; B is symbolic (any batch)
  params.npz           the weights, one array per parameter, in the order of manifest["params"]
                       (arguments of the function, not constants baked into it)
  manifest.json        input size and normalisation, argument and output names/shapes, configs

Loading needs jax and numpy only (docs/export.md):
  exp = jax.export.deserialize(open("pipeline.stablehlo", "rb").read())
  npz = np.load("params.npz"); params = [npz[n] for n in manifest["params"]]
  out = exp.call(images, scales, *params)
"""

import json
import os

import jax
import numpy as np

from mpn_jax import models
from mpn_jax.export import common
from mpn_jax.inference import assignment
from mpn_jax.inference import pipeline
from mpn_jax.inference import predictor

FUNCTION_FILE = "pipeline.stablehlo"
PARAMS_FILE = "params.npz"
MANIFEST_FILE = "manifest.json"
# The host solvers (scipy through jax.pure_callback) cannot be serialized.
HOST_METHODS = ("hungarian", "hungarian_log")
DEVICE_METHODS = tuple(m for m in assignment.METHODS if m not in HOST_METHODS)
OUTPUTS = {  # name -> (shape with N = inference.max_people, meaning)
    "keypoints": ("[B, N, 17, 3]", "x, y, score in original image pixels (input / scale)"),
    "scores": ("[B, N]", "person scores"),
    "boxes": ("[B, N, 4]", "x1, y1, x2, y2 in original image pixels"),
    "box_scores": ("[B, N]", "detector scores"),
    "valid": ("[B, N]", "bool: the slot holds a person"),
}


def _names(tree, prefix):
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [prefix + "/" + "/".join(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]


def build(model, overrides=None):
  """(fn, params (list of numpy arrays), param names, treedefs, configs) of a model path:
  fn(images, scales, *params) is the jitted whole pipeline of `Predictor.load(model)`."""
  branch_vars, prn_vars, bcfg, pcfg, icfg = common.restore_model(model, overrides)
  if icfg.assign_method in HOST_METHODS:
    raise common.ExportError(
        f"the model's inference.assign_method={icfg.assign_method!r} solves on the host (scipy "
        "through a Python callback), which StableHLO cannot hold: export with "
        f"--assign_method=one of {DEVICE_METHODS} (e.g. --assign_method=greedy)")
  predict = pipeline.make_predict_fn(models.build_multiposenet(bcfg.model),
                                     models.build_prn(pcfg.model), icfg,
                                     **predictor.prn_input(pcfg))
  tree = {"branches": branch_vars, "prn": prn_vars}
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  names = _names(tree, "")
  names = [n.lstrip("/") for n in names]

  def fn(images, scales, *params):
    variables = jax.tree_util.tree_unflatten(treedef, params)
    return predict(variables["branches"], variables["prn"], images, scales)

  params = [np.asarray(x) for x in leaves]
  return jax.jit(fn), params, names, (bcfg, pcfg, icfg)


def export(model, output, assign_method=None, platforms=None):
  """Writes OUTPUT/{pipeline.stablehlo, params.npz, manifest.json} (all at once: a new or empty
  folder, filled only when everything is written).

  Args:
    model: the model folder (branches/ and prn/).
    output: a new or empty folder.
    assign_method: overrides inference.assign_method (needed for hungarian models).
    platforms: lowering platforms, e.g. ('cpu', 'cuda'); None: JAX's default backend.
  Returns:
    the manifest (dict).
  """
  common.check_output(output)
  overrides = {"assign_method": assign_method} if assign_method else None
  fn, params, names, (bcfg, pcfg, icfg) = build(model, overrides)
  size = int(bcfg.input.size)
  b = jax.export.symbolic_shape("b")[0]
  args = [jax.ShapeDtypeStruct((b, size, size, 3), np.float32),
          jax.ShapeDtypeStruct((b,), np.float32)]
  args += [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in params]
  exported = jax.export.export(fn, platforms=platforms)(*args)
  blob = exported.serialize()
  out_avals = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
  manifest = {
      "format": "jax.export serialized StableHLO (the whole pipeline)",
      "function": FUNCTION_FILE,
      "params_file": PARAMS_FILE,
      "call": "exp.call(images, scales, *[params[name] for name in manifest['params']])",
      "inputs": {
          "images": {"shape": ["B", size, size, 3], "dtype": "float32",
                     "meaning": "letterboxed, normalised images"},
          "scales": {"shape": ["B"], "dtype": "float32",
                     "meaning": "letterbox scale per image (input = original * scale)"},
      },
      "preprocessing": common.preprocessing(size),
      "outputs": {k: {"shape": [d if isinstance(d, int) else str(d) for d in v.shape],
                      "dtype": str(v.dtype), "meaning": OUTPUTS.get(k, ("", ""))[1]}
                  for k, v in out_avals.items()},
      "params": names,
      "num_params": int(sum(p.size for p in params)),
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "calling_convention_version": exported.calling_convention_version,
      "config": {"branches": common.to_plain(bcfg), "prn": common.to_plain(pcfg),
                 "inference": common.to_plain(icfg)},
  }
  with common.staging(output) as tmp:
    with open(os.path.join(tmp, FUNCTION_FILE), "wb") as f:
      f.write(blob)
    with open(os.path.join(tmp, PARAMS_FILE), "wb") as f:
      np.savez(f, **dict(zip(names, params)))
    with open(os.path.join(tmp, MANIFEST_FILE), "w", encoding="utf-8") as f:
      json.dump(manifest, f, indent=1)
  return manifest


def load(folder):
  """(exported, params list, manifest) of an exported folder; `exported.call(images, scales,
  *params)` runs it. Needs only jax and numpy (the same as the docs' loader)."""
  with open(os.path.join(folder, MANIFEST_FILE), encoding="utf-8") as f:
    manifest = json.load(f)
  with open(os.path.join(folder, manifest["function"]), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with np.load(os.path.join(folder, manifest["params_file"])) as npz:
    params = [npz[n] for n in manifest["params"]]
  return exported, params, manifest

