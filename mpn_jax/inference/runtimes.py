r"""Where the network and the PRN run, and at which precision.

  runtime='jax'          the whole pipeline as one jitted JAX function (`pipeline.make_predict_fn`),
                         on whatever device JAX has; precision 'bf16' computes the network and the
                         PRN in bfloat16 (parameters stay float32), 'fp32' pins matmuls and
                         convolutions to full float32 (no TF32 on GPUs);
  runtime='onnxruntime'  CPU serving: the network and the PRN converted to ONNX (jax2onnx) when the
  runtime='openvino'     model is loaded and run by ONNX Runtime / OpenVINO; peaks, NMS, the PRN's
                         inputs and the assignment stay jitted JAX (`make_staged_fn`). OpenVINO
                         'bf16' needs a CPU with bfloat16 instructions (AVX512_BF16 or AMX); 'fp32'
                         sets OpenVINO's inference precision to f32 explicitly (its default on such
                         CPUs is bf16); in 'bf16' the network's output layers run in a second
                         graph at f32 (`OnnxNetwork`). ONNX Runtime's CPU provider runs fp32 only.

The ONNX runtimes are optional: `pip install -e ".[export]"` (a missing package is one error line
with that hint). The conversion here is also what `export.py --format=onnx` writes.
"""

import contextlib
import hashlib
import importlib
import logging
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import models
from mpn_jax import parallel
from mpn_jax import prn_grid
from mpn_jax.inference import pipeline
from mpn_jax.inference import tta

RUNTIMES = ("jax", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
EXTRA_HINT = 'pip install -e ".[export]"'
NETWORK_OUTPUTS = ("keypoints", "cls_logits", "box_deltas")
OPSET = 17


def _import(name):
  if name != "openvino" or "openvino" in sys.modules:
    return importlib.import_module(name)
  # `import openvino` imports its model-conversion tool (openvino.tools.ovc), which forks a process
  # to send a usage event on import (JAX then warns that fork() in a multithreaded process may
  # deadlock). Models are read from ONNX with Core.read_model, so that tool is kept out of the
  # import (openvino/__init__ skips it on ImportError); importing it later still works.
  sys.modules["openvino.tools.ovc"] = None
  try:
    return importlib.import_module(name)
  finally:
    del sys.modules["openvino.tools.ovc"]


def require(*modules, what):
  """Imports the optional packages `modules` (returned as a list, in order), or errors.ConfigError
  naming `what` needs them, with the install hint."""
  got, missing = [], []
  for name in modules:
    try:
      got.append(_import(name))
    except ImportError:
      missing.append(name)
  if missing:
    raise errors.ConfigError(f"{what} needs {' and '.join(missing)}, which "
                             f"{'is' if len(missing) == 1 else 'are'} not installed: "
                             f"{EXTRA_HINT}")
  return got


def openvino_has_bf16():
  """Whether OpenVINO's CPU plugin reports bfloat16 support on this CPU."""
  (ov,) = require("openvino", what="--runtime=openvino")
  return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check(runtime, precision):
  """errors.ConfigError unless `runtime` and `precision` are known and possible here."""
  if runtime not in RUNTIMES:
    raise errors.ConfigError(f"--runtime={runtime} (inference.runtime): use one of "
                             f"{', '.join(RUNTIMES)}")
  if precision not in PRECISIONS:
    raise errors.ConfigError(f"--precision={precision} (inference.precision): use one of "
                             f"{', '.join(PRECISIONS)}")
  if runtime != "jax" and jax.process_count() > 1:
    raise errors.ConfigError(f"--runtime={runtime} serves on one host's CPU; with several "
                             "processes use --runtime=jax")
  if runtime == "onnxruntime":
    require("onnx", "jax2onnx", "onnxruntime", what="--runtime=onnxruntime")
    if precision == "bf16":
      raise errors.ConfigError("--precision=bf16: ONNX Runtime's CPU provider runs this network in "
                               "fp32 only; use --runtime=openvino for bf16, or --precision=fp32")
  if runtime == "openvino":
    require("onnx", "jax2onnx", "openvino", what="--runtime=openvino")
    if precision == "bf16" and not openvino_has_bf16():
      raise errors.ConfigError("--precision=bf16: this CPU has no bfloat16 instructions "
                               "(OpenVINO reports no BF16 capability); use --precision=fp32")


# --- ONNX conversion --------------------------------------------------------------------------


def network_fn(net, variables):
  """images [B, S, S, 3] -> (keypoints, cls_logits, box_deltas) of the MultiPoseNet (inference)."""
  variables = jax.tree.map(jnp.asarray, variables)

  def fn(images):
    out = net.apply(variables, images, train=False)
    return tuple(out[k] for k in NETWORK_OUTPUTS)
  return fn


def prn_fn(prn, variables):
  """PRN inputs [M, 56, 36, 17] -> PRN probabilities [M, 56, 36, 17] float32."""
  variables = jax.tree.map(jnp.asarray, variables)
  return lambda x: models.prn_probabilities(prn.apply(variables, x, train=False))


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
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top  (optional package)
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


def to_onnx(fn, input_shape, name, input_name, output_names, what="ONNX conversion"):
  """(onnx ModelProto, stats dict) of the JAX function `fn` of float32 inputs.

  Args:
    fn: array(s) -> tuple of arrays (len(output_names)).
    input_shape: tuple; a str entry ('B') is a symbolic (dynamic) dimension. For several inputs,
      a list of such tuples, and `input_name` a list of as many names.
    name, input_name, output_names: the graph's names.
  Returns: the checked model, and stats: sizes and initializer counts before and after the repairs.
  Two repairs are made to jax2onnx's graph: the stale `value_info` is cleared (ONNX Runtime refused
  the file with it; shapes are inferred again from the graph) and identical initializers are merged
  (the RetinaNet head applies one set of weights to five pyramid levels, which the trace writes out
  once per level).
  """
  onnx, jax2onnx = require("onnx", "jax2onnx", what=what)
  with _quiet("onnx_ir", "onnx_ir.serde", "jax2onnx"):
    several = isinstance(input_name, (list, tuple))
    shapes = [tuple(x) for x in input_shape] if several else [tuple(input_shape)]
    model = jax2onnx.to_onnx(fn, shapes, model_name=name, opset=OPSET,
                             input_names=list(input_name) if several else [input_name],
                             output_names=list(output_names))
  stats = {"bytes_raw": model.ByteSize(), "initializers_raw": len(model.graph.initializer)}
  del model.graph.value_info[:]
  stats["initializers_merged"] = dedupe_initializers(model)
  model = onnx.shape_inference.infer_shapes(model)
  onnx.checker.check_model(model, full_check=True)
  stats["bytes"] = model.ByteSize()
  stats["initializers"] = len(model.graph.initializer)
  return model, stats


# --- sessions -----------------------------------------------------------------------------------


class OnnxRuntimeSession:
  """An ONNX model in ONNX Runtime (CPU): __call__(x numpy float32) -> tuple of numpy outputs."""

  def __init__(self, proto, precision="fp32"):
    del precision  # fp32 only (`check`)
    (ort,) = require("onnxruntime", what="--runtime=onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a normal run prints nothing
    self.session = ort.InferenceSession(proto.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])
    self.input_name = self.session.get_inputs()[0].name

  def __call__(self, x):
    return tuple(self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)}))


class OpenVinoSession:
  """An ONNX model in OpenVINO (CPU), compiled once per input shape (static shapes run faster than
  a dynamic batch), at the inference precision asked: __call__(*xs) -> tuple of numpy outputs.

  With `share_outputs` the outputs are views of OpenVINO's own buffers, valid until the next call
  (no copy: for a graph whose outputs feed another session at once)."""

  def __init__(self, proto, precision="fp32", share_outputs=False):
    (ov,) = require("openvino", what="--runtime=openvino")
    self.core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:  # OpenVINO reads ONNX from a file
      path = os.path.join(tmp, "model.onnx")
      with open(path, "wb") as f:
        f.write(proto.SerializeToString())
      self.model = self.core.read_model(path)
    self.config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
                   "PERFORMANCE_HINT": "LATENCY"}
    self.share_outputs = share_outputs
    self.compiled = {}

  def __call__(self, *xs):
    xs = [np.ascontiguousarray(x, np.float32) for x in xs]
    key = tuple(x.shape for x in xs)
    if key not in self.compiled:
      model = self.model.clone()
      model.reshape({i.get_any_name(): list(x.shape) for i, x in zip(model.inputs, xs)})
      compiled = self.core.compile_model(model, "CPU", self.config)
      self.compiled[key] = (compiled, compiled.create_infer_request())
    compiled, request = self.compiled[key]
    out = request.infer(xs, share_inputs=True, share_outputs=self.share_outputs)
    return tuple(np.asarray(out[o]) for o in compiled.outputs)


SESSIONS = {"onnxruntime": OnnxRuntimeSession, "openvino": OpenVinoSession}


class OnnxNetwork:
  """The MultiPoseNet in an ONNX runtime, one converted graph per input size (TTA scales).

  At precision 'bf16' the runtime runs the network up to its output layers in bfloat16
  (`build_multiposenet(part='features')`) and the output layers (`part='outputs'`) in a second
  graph compiled for float32, as JAX's own bf16 path keeps them: computed in bfloat16 (8 bits of
  mantissa), they cost 0.015 keypoint AP on the learning-check model (docs/predict.md); they are
  0.7% of the network's FLOPs at 480 (1.1 of 166 GFLOP). The first graph's outputs feed the second
  in OpenVINO's own buffers (5 ms at 480 on a 2-core Xeon, against 11 ms through jitted JAX
  float32 with the copies; docs/benchmark.md).

  __call__(images [B, H, W, 3] float32) -> dict of numpy 'keypoints', 'cls_logits', 'box_deltas'.
  """

  def __init__(self, model_config, variables, runtime, precision):
    self.runtime, self.precision = runtime, precision
    self.sessions = {}
    variables = jax.tree.map(jnp.asarray, variables)
    net = models.build_multiposenet(model_config)
    self.levels = len(net.retina_head.levels)
    if precision == "bf16":
      body = models.build_multiposenet(model_config, part="features")
      head = models.build_multiposenet(model_config, part="outputs")
      self.fn = lambda images: self._flat(body.apply(variables, images, train=False))
      self.names = (("keypoint_features",)
                    + tuple(f"{k}_features_{i}" for k in ("cls", "box") for i in range(self.levels)))

      def head_fn(*flat):
        out = head.apply(variables, self._unflat(flat))
        return tuple(out[k] for k in NETWORK_OUTPUTS)
      self.head_fn = head_fn
    else:
      self.fn = network_fn(net, variables)
      self.names = NETWORK_OUTPUTS

  @staticmethod
  def _flat(features):
    # float32 at the graph's outputs whatever the run's compute dtype (NumPy has no bfloat16).
    flat = ((features["keypoint_features"],) + tuple(features["cls_features"])
            + tuple(features["box_features"]))
    return tuple(jnp.asarray(x, jnp.float32) for x in flat)

  def _unflat(self, flat):
    n = self.levels
    return {"keypoint_features": flat[0], "cls_features": tuple(flat[1:1 + n]),
            "box_features": tuple(flat[1 + n:1 + 2 * n])}

  def _sessions(self, h, w):
    what = f"--runtime={self.runtime}"
    proto, _ = to_onnx(self.fn, ("B", h, w, 3), "multiposenet", "images", self.names, what=what)
    if self.precision != "bf16":
      return (SESSIONS[self.runtime](proto, self.precision),)
    shapes = [("B",) + tuple(x.shape[1:]) for x in
              jax.eval_shape(self.fn, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))]
    head, _ = to_onnx(self.head_fn, shapes, "multiposenet_outputs", self.names, NETWORK_OUTPUTS,
                      what=what)
    # OpenVINO only (`check`): the body's outputs are read by the head before the next call.
    return (SESSIONS[self.runtime](proto, "bf16", share_outputs=True),
            SESSIONS[self.runtime](head, "fp32"))

  def __call__(self, images):
    h, w = images.shape[1:3]
    if (h, w) not in self.sessions:
      self.sessions[(h, w)] = self._sessions(h, w)
    out = (images,)
    for session in self.sessions[(h, w)]:  # each session returns a tuple of its graph's outputs
      out = session(*out)
    return dict(zip(NETWORK_OUTPUTS, out))


class OnnxPrn:
  """The PRN (with its softmax) in an ONNX runtime: __call__(inputs [M, 56, 36, 17] float32) ->
  probabilities [M, 56, 36, 17] numpy float32."""

  def __init__(self, prn, variables, runtime, precision):
    shape = ("M", prn_grid.GRID_H, prn_grid.GRID_W, coco.NUM_KEYPOINTS)
    proto, _ = to_onnx(prn_fn(prn, variables), shape, "pose_residual_network", "prn_inputs",
                       ("probabilities",), what=f"--runtime={runtime}")
    self.session = SESSIONS[runtime](proto, precision)

  def __call__(self, inputs):
    return self.session(inputs)[0]


# --- the pipeline through a runtime ---------------------------------------------------------------


def make_staged_fn(network, prn, config, image_size, *, input_sigma=pipeline.DEFAULT_INPUT_SIGMA,
                   widen=pipeline.DEFAULT_WIDEN):
  """The whole pipeline with the network and the PRN outside JAX.

  Args:
    network: images [B, H', W', 3] -> dict of 'keypoints', 'cls_logits', 'box_deltas' (numpy).
    prn: [M, 56, 36, 17] inputs -> [M, 56, 36, 17] probabilities (numpy).
    config: `defaults.inference_config()`.
    image_size: (S, S), the network input.
    input_sigma, widen: the PRN's input drawing (`predictor.prn_input`).
  Returns:
    predict(images [B, S, S, 3], scales [B], boxes=None, box_valid=None) -> the
    `pipeline.predict_people` dict, computed as jitted TTA inputs -> network -> jitted peaks, NMS
    and PRN inputs -> PRN -> jitted assignment.
  """
  pipeline._check_config(config)  # pylint: disable=protected-access
  _, stride = tta.merge_grid(image_size, config)
  inputs_fn = jax.jit(lambda images: tta.variant_inputs(images, config))

  @jax.jit
  def prepare(outputs, boxes, box_valid):
    heat, cand_boxes, cand_scores = tta.merge_variant_outputs(outputs, image_size, config)
    return pipeline.prn_stage_inputs(heat, cand_boxes, cand_scores, config, image_size, stride,
                                     input_sigma=input_sigma, widen=widen, boxes=boxes,
                                     box_valid=box_valid)

  finish = jax.jit(lambda probs, state, scales: pipeline.finish_people(probs, state, scales,
                                                                       config))

  def predict(images, scales, boxes=None, box_valid=None):
    outputs = [network(np.asarray(x)) for x in inputs_fn(images)]
    inputs, state = prepare(outputs, boxes, box_valid)
    inputs = np.asarray(inputs)
    probs = prn(inputs.reshape((-1,) + inputs.shape[2:])).reshape(inputs.shape)
    return finish(probs, state, scales)
  return predict


def make_predict_fn(branches_model_config, prn_model_config, branches_variables, prn_variables,
                    config, image_size, *, runtime="jax", precision="fp32",
                    input_sigma=pipeline.DEFAULT_INPUT_SIGMA, widen=pipeline.DEFAULT_WIDEN,
                    mesh=None):
  """predict(images [B, S, S, 3] float32, scales [B], boxes=None, box_valid=None) ->
  `pipeline.predict_people` dict, through `runtime` at `precision` (boxes: `predict_people`'s).

  Args:
    branches_model_config, prn_model_config: the stages' `model` configs.
    branches_variables, prn_variables: their flax variables.
    config: `defaults.inference_config()`.
    image_size: (S, S).
    runtime, precision: one of RUNTIMES / PRECISIONS (`check`).
    mesh: for 'jax', the device mesh the variables are replicated on (None: parallel's default).
  """
  check(runtime, precision)
  if runtime == "jax":
    bcfg = branches_model_config.copy_and_resolve_references()
    pcfg = prn_model_config.copy_and_resolve_references()
    if precision == "bf16":
      bcfg.dtype, pcfg.dtype = "bfloat16", "bfloat16"
    predict = pipeline.make_predict_fn(models.build_multiposenet(bcfg), models.build_prn(pcfg),
                                       config, input_sigma=input_sigma, widen=widen)
    branch_vars, prn_vars = parallel.replicate((branches_variables, prn_variables),
                                               mesh if mesh is not None else parallel.create_mesh())
    if precision == "bf16":
      return lambda images, scales, **people: predict(branch_vars, prn_vars, images, scales,
                                                      **people)

    def fn(images, scales, **people):
      with jax.default_matmul_precision("float32"):  # fp32 exactly: no TF32 / bf16 passes on GPUs
        return predict(branch_vars, prn_vars, images, scales, **people)
    return fn
  network = OnnxNetwork(branches_model_config, branches_variables, runtime, precision)
  prn = OnnxPrn(models.build_prn(prn_model_config), prn_variables, runtime, precision)
  return make_staged_fn(network, prn, config, image_size, input_sigma=input_sigma, widen=widen)
