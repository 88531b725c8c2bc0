r"""Speed and memory of inference and training, against the machine's own matmul peak.

  python -m mpn_jax.benchmark --output=/tmp/bench.json            # ResNet-50, 480x480, float32
  python -m mpn_jax.benchmark --quick --output=/tmp/quick.json    # tiny model, seconds
  python -m mpn_jax.benchmark --precision=fp32,bf16 --parts=peak,forward,pipeline
  python -m mpn_jax.benchmark --runtime=openvino --precision=bf16 --parts=peak,forward,pipeline,prn

What is timed, every part after compilation and `--warmup` calls, `--repeats` times:
  peak            a large dense square matmul (the best of `--peak_sizes`) in the same dtype on
                  the same device: the FLOP/s the machine reaches at its best here;
  forward         MultiPoseNet.apply (train=False) on [B, S, S, 3] images, each of --batch_sizes;
  pipeline        inference.make_predict_fn: network + peaks + NMS + PRN + keypoint selection, one
                  jitted function (same batch sizes);
  prn             the PoseResidualNet + softmax alone on --prn_batch crops;
  train_branches  one optimizer step of stage one (training.steps.make_train_step with the loss,
                  optimizer and model of configs/branches.py), --train_batch images;
  train_prn       the same for stage two (configs/prn.py), --prn_train_batch people;
  input           (only asked for: --parts=input --input_coco_dir=DIR) the coco recipe's training
                  input (480 px, augmentation, targets, tf.data) on real COCO images, timed alone,
                  images/s and images/s per CPU core;
  peer            (only asked for; needs PyTorch: pip install -e ".[peer]") the PyTorch peer,
                  LiMeng95/MultiPoseNet.pytorch's network and PRN as `mpn_jax.peer` rebuilds them:
                  network forward at each batch size and its PRN on --prn_batch people, fp32 and
                  (on a CPU with bfloat16 instructions) bf16 autocast, each in the peer's NCHW
                  layout and in channels_last; timed in the same rounds as the other parts, so
                  `pipeline_over_peer_best_bs{B}` (this project's whole pipeline against the
                  peer's fastest network-only variant) and `prn_over_peer_best` are same-run
                  ratios.
--gpu is the prepared one-GPU run (fp32 and bf16, batch 1 and 32, the largest stage-one
batch that fits, XLA's memory preallocation off).

--runtime=onnxruntime|openvino times forward, pipeline and PRN through that CPU runtime
(`mpn_jax.inference.runtimes`: the network and the PRN converted to ONNX, the rest of the pipeline
jitted JAX; the first call, conversion and the runtime's compilation, is the compile time; FLOPs are
those of the same functions in JAX), under the same JSON keys; the peak and the training steps stay
JAX.

Every JAX part is compiled once ahead of time (`jit(...).lower(...).compile()`, so nothing retraces)
and called with arguments already on the device. Training steps are the library's own
`make_train_step` (train state donated; the JSON says whether the backend honoured the donation)
and feed each step's new state into the next. The pipeline's executable is checked for host
callbacks (`pipeline_host_callbacks_bs{B}`, 0 = no host round-trip inside).

The timed parts run round-robin (one call of each per round) so that on a shared, noisy machine
every part sees the same load and ratios between parts (forward vs matmul peak, pipeline vs
forward) stay meaningful; medians over the rounds are reported, and the same ratios from the
fastest call of each part (`*_from_min`, less sensitive to other processes). The 1-minute load
average before and after is recorded: a value above the core count means the machine was shared
and absolute numbers are pessimistic.

FLOPs come from XLA's cost analysis of each compiled executable (`compiled.cost_analysis()`).
Peak memory: the device's `memory_stats()['peak_bytes_in_use']` where the backend has it (GPU, TPU),
else the process's maximum resident set size (`resource.getrusage`, CPU); the JSON says which.
Defaults take about 3 minutes on a quiet 2-core CPU (compilation included).

Output: a table on stdout and a JSON file. Its top level holds, for the default device and the
first precision (fp32 unless --precision says otherwise; 'dtype' names it as float32 / bfloat16,
'runtime' the runtime): forward_images_per_s_bs{B},
pipeline_images_per_s_bs{B}, forward_flops_per_image, matmul_peak_flops_per_s,
forward_fraction_of_peak_bs{B}, pipeline_over_forward_bs{B}, prn_us_per_person,
train_branches_images_per_s, train_prn_people_per_s, peak_memory_bytes, device; 'results' has
every dtype's full set and 'timings' every part's raw seconds.
"""

import dataclasses
import inspect
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mpn_jax import boxes
from mpn_jax import cli
from mpn_jax import errors
from mpn_jax import models
from mpn_jax import parallel
from mpn_jax import prn_grid
from mpn_jax.configs import branches as branches_config
from mpn_jax.configs import defaults
from mpn_jax.configs import prn as prn_config
from mpn_jax.data import pipeline as input_pipeline
from mpn_jax.evaluation import coco_io
from mpn_jax.inference import pipeline
from mpn_jax.inference import runtimes
from mpn_jax.training import state as state_lib
from mpn_jax.training import steps

PARTS = ("peak", "forward", "pipeline", "prn", "train_branches", "train_prn", "input", "peer")
# Asked for by name: `input` reads COCO images (--input_coco_dir=DIR), `peer` needs PyTorch.
DEFAULT_PARTS = PARTS[:-2]
PEER_HINT = 'pip install -e ".[peer]"'
PEER_LAYOUTS = ("nchw", "channels_last")

_OUTPUT = flags.DEFINE_string("output", "", "write the results as JSON to this file")
_PARTS = flags.DEFINE_list("parts", list(DEFAULT_PARTS), f"parts to run, any of {PARTS}")
_COCO_DIR = flags.DEFINE_string(
    "input_coco_dir", "", "input part: a COCO folder with annotations/ and train2017/ (e.g. "
    "../shared/data/coco)")
_INPUT_BATCHES = flags.DEFINE_integer("input_batches", 40, "input part: batches timed")
_RUNTIME = flags.DEFINE_enum(
    "runtime", "jax", list(runtimes.RUNTIMES), "where forward, pipeline and PRN run: jax, or on "
    "the CPU onnxruntime / openvino (the [export] extra; the training steps are JAX's)")
_PRECISION = flags.DEFINE_list(
    "precision", [], "precisions, comma-separated (fp32, bf16); default fp32 on CPU, both on "
    "GPU/TPU")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 480, "square network input side S")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8"], "forward / pipeline batch sizes")
_PRN_BATCH = flags.DEFINE_integer("prn_batch", 64, "people per PRN inference call")
_TRAIN_BATCH = flags.DEFINE_integer(
    "train_batch", 0, "stage-one global training batch; 0: 2 per CPU device, 8 per accelerator; "
    "-1: the largest that fits in memory (64, 32, 16, ... tried in turn)")
_GPU = flags.DEFINE_bool(
    "gpu", False, "the prepared one-GPU run (under 5 minutes): forward and "
    "pipeline in fp32 and bf16 at batch 1 and 32, the stage-one step at the largest batch that "
    "fits, PRN, peak memory (and the input part with --input_coco_dir); XLA's memory "
    "preallocation off so peak memory is what the parts use")
_PRN_TRAIN_BATCH = flags.DEFINE_integer(
    "prn_train_batch", 0, "stage-two global training batch; 0: configs/prn.py's data.batch_size")
_REPEATS = flags.DEFINE_integer("repeats", 0, "timed rounds (medians over these); 0: 3 on CPU, "
                                "10 on accelerators")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed calls of each part after compilation")
_PEAK_SIZES = flags.DEFINE_list(
    "peak_sizes", [], "square matmul sides tried for the peak (the best is the peak); default "
    "2048 on CPU, 8192,16384 on accelerators")
_MODEL_SIZE = flags.DEFINE_enum("model_size", "full", ["full", "tiny"],
                                "full: the paper's ResNet-50 MultiPoseNet and PRN; tiny: tests")
_QUICK = flags.DEFINE_bool(
    "quick", False, "smoke run: tiny models, 64x64 images, batches 1 and 2, PRN batch 8, "
    "2 repeats, 256x256 peak matmul, 3 input batches (overrides those flags)")


@dataclasses.dataclass
class Settings:
  """What to run; `settings_from_flags` fills it from the command line."""
  parts: tuple = DEFAULT_PARTS
  precisions: tuple = ("fp32",)
  runtime: str = "jax"
  image_size: int = 480
  batch_sizes: tuple = (1, 8)
  prn_batch: int = 64
  train_batch: int = 0
  prn_train_batch: int = 0
  repeats: int = 5
  warmup: int = 1
  peak_sizes: tuple = ()
  model_size: str = "full"
  input_coco_dir: str = ""
  input_batches: int = 40

  def validate(self):
    bad = [p for p in self.parts if p not in PARTS]
    if bad:
      raise ValueError(f"--parts: unknown part(s) {bad}; use any of {PARTS}")
    for d in self.precisions:
      if d not in runtimes.PRECISIONS:
        raise ValueError(f"--precision: {d!r} is not supported; use fp32 and/or bf16")
    if self.runtime not in runtimes.RUNTIMES:
      raise ValueError(f"--runtime={self.runtime}: use one of {', '.join(runtimes.RUNTIMES)}")
    if self.image_size < 32 or self.image_size % 32:
      raise ValueError(f"--image_size={self.image_size}: use a multiple of 32 (>= 32), the "
                       "backbone's total stride")
    if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
      raise ValueError(f"--batch_sizes={self.batch_sizes}: give positive integers")
    if "input" in self.parts and not self.input_coco_dir:
      raise ValueError("--parts=input reads real COCO images: give --input_coco_dir=FOLDER (with "
                       "annotations/ and train2017/)")
    if self.repeats < 1 or self.warmup < 0:
      raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    return self


def _ints(flag):
  try:
    return tuple(int(v) for v in flag.value)
  except ValueError as e:
    raise ValueError(f"--{flag.name}={','.join(flag.value)}: give comma-separated integers") from e


def settings_from_flags():
  """Settings of the command line (--quick replaces the sizes with a seconds-long smoke run)."""
  s = Settings(
      parts=tuple(_PARTS.value), precisions=tuple(_PRECISION.value) or default_precisions(),
      runtime=_RUNTIME.value,
      image_size=_IMAGE_SIZE.value, batch_sizes=_ints(_BATCH_SIZES),
      prn_batch=_PRN_BATCH.value, train_batch=_TRAIN_BATCH.value,
      prn_train_batch=_PRN_TRAIN_BATCH.value,
      repeats=_REPEATS.value or (3 if jax.default_backend() == "cpu" else 10), warmup=_WARMUP.value,
      peak_sizes=_ints(_PEAK_SIZES), model_size=_MODEL_SIZE.value, input_coco_dir=_COCO_DIR.value,
      input_batches=_INPUT_BATCHES.value)
  if _GPU.value:
    given = {name for name in ("parts", "precision", "batch_sizes", "train_batch", "repeats",
                               "warmup") if flags.FLAGS[name].present}
    s = gpu_preset(s, keep=given)
  if _QUICK.value:
    s = dataclasses.replace(s, model_size="tiny", image_size=64, batch_sizes=(1, 2), prn_batch=8,
                            train_batch=0, prn_train_batch=8, repeats=2, peak_sizes=(256,),
                            input_batches=3)
  return s.validate()


def gpu_preset(s, keep=()):
  """`--gpu`: the settings of the prepared one-GPU run; the fields of the flags named in
  `keep` (given on the command line) keep their values."""
  preset = dict(parts=DEFAULT_PARTS + (("input",) if s.input_coco_dir else ()),
                precision=("fp32", "bf16"), batch_sizes=(1, 32), train_batch=-1, repeats=10,
                warmup=2)
  fields = {"precision": "precisions"}
  return dataclasses.replace(s, **{fields.get(k, k): v for k, v in preset.items() if k not in keep})


def default_precisions():
  return ("fp32",) if jax.default_backend() == "cpu" else ("fp32", "bf16")


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # precision -> the JAX compute dtype


# ------------------------------------------------------------------------------------------------
# Timing.

@dataclasses.dataclass
class Part:
  """One timed callable.

  call: () -> pytree, one execution (its result is blocked on).
  units: images / people processed per call (throughput = units / seconds).
  flops: FLOPs per call from XLA's cost analysis (0 if unknown).
  """
  name: str
  call: Callable[[], Any]
  units: int
  unit_name: str
  flops: float = 0.0
  compile_s: float = 0.0
  times: list = dataclasses.field(default_factory=list)
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def median_s(self):
    return statistics.median(self.times)

  def per_s(self):
    return self.units / self.median_s


def compiled_cost(compiled, key="flops"):
  """`key` ('flops', 'bytes accessed') of a compiled executable from XLA's cost analysis (0.0 when
  the backend has none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends do not implement it)
    return 0.0
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get(key, 0.0))


def compile_part(name, jitted, args, units, unit_name, stateful=False):
  """AOT-compiles `jitted` for `args` and wraps it as a Part.

  With `stateful`, the first argument is a donated state and the call feeds each call's new state
  into the next one (a training loop); otherwise every call gets the same arguments.
  """
  t = time.perf_counter()
  lowered = jitted.lower(*args)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  text = lowered.as_text()
  info = {"host_callbacks": text.count("callback"),  # host round-trips inside the executable
          "bytes_accessed": compiled_cost(compiled, "bytes accessed")}
  if stateful:
    box = {"state": args[0]}

    def call():
      old = box["state"]
      box["state"], out = compiled(old, *args[1:])
      # Donation lets XLA update the state in place; record whether the backend honoured it.
      info.setdefault("state_donated", all(
          x.is_deleted() for x in jax.tree.leaves(old) if isinstance(x, jax.Array)))
      return out
  else:
    call = lambda: compiled(*args)
  return Part(name, call, units, unit_name, compiled_cost(compiled), compile_s, info=info)


def run_round_robin(parts, repeats, warmup, log=None):
  """Warm-up calls, then `repeats` rounds each calling every part once; fills `part.times`."""
  for p in parts:
    for _ in range(warmup):
      jax.block_until_ready(p.call())
  for r in range(repeats):
    t_round = time.perf_counter()
    for p in parts:
      t = time.perf_counter()
      jax.block_until_ready(p.call())
      p.times.append(time.perf_counter() - t)
    if log is not None:
      log(f"  round {r + 1}/{repeats}: {time.perf_counter() - t_round:.1f} s")


# ------------------------------------------------------------------------------------------------
# The parts.

def _init_key(seed=0):
  # The 'unsafe_rbg' generator compiles far faster than threefry for the ~300 initializers of the
  # full network (values do not matter for timing; the initializers are the models' own).
  return jax.random.key(seed, impl="unsafe_rbg")


def _stage_config(name, preset=""):
  """The stage config mpn_jax/configs/{name}.py[:preset] (train / loss / model settings)."""
  return {"branches": branches_config, "prn": prn_config}[name].get_config(preset or None)


def model_configs(model_size, dtype):
  mcfg, pcfg = models.multiposenet_config(model_size), models.prn_config(model_size)
  for c in (mcfg, pcfg):
    c.dtype = dtype
  return mcfg, pcfg


def peak_parts(dtype, sizes):
  """Dense square matmuls [n, n] @ [n, n] of `dtype`; 2 n^3 FLOPs each."""
  parts = []
  for n in sizes:
    rng = np.random.default_rng(n)
    a = jnp.asarray(rng.standard_normal((n, n), np.float32), dtype)
    b = jnp.asarray(rng.standard_normal((n, n), np.float32), dtype)
    p = compile_part(f"matmul_{n}", jax.jit(jnp.matmul), (a, b), 1, "matmul")
    p.flops = p.flops or 2.0 * n**3
    parts.append(p)
  return parts


def best_peak(parts):
  """The matmul part with the highest median FLOP/s (the peak every fraction is taken of)."""
  mm = [p for p in parts if p.name.startswith("matmul_")]
  return max(mm, key=lambda p: p.flops / p.median_s) if mm else None


def network_parts(model, variables, prn_model, prn_variables, settings, with_forward,
                  with_pipeline):
  s = settings.image_size
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  # The PRN input drawing (input_sigma, widen): make_predict_fn's defaults, a PRN run's data fields.
  predict = pipeline.make_predict_fn(model, prn_model, defaults.inference_config())
  parts = []
  rng = np.random.default_rng(0)
  for b in settings.batch_sizes:
    images = jnp.asarray(rng.standard_normal((b, s, s, 3), np.float32))
    if with_forward:
      parts.append(compile_part(f"forward_bs{b}", forward, (variables, images), b, "images"))
    if with_pipeline:
      scales = jnp.ones((b,), jnp.float32)
      parts.append(compile_part(f"pipeline_bs{b}", predict,
                                (variables, prn_variables, images, scales), b, "images"))
  return parts


def prn_part(prn_model, prn_variables, batch, name="prn"):
  fn = jax.jit(lambda v, x: models.prn_probabilities(prn_model.apply(v, x, train=False)))
  x = jnp.asarray(np.random.default_rng(1).uniform(
      size=(batch, prn_grid.GRID_H, prn_grid.GRID_W, 17)).astype(np.float32))
  return compile_part(f"{name}_bs{batch}", fn, (prn_variables, x), batch, "people")


def lowered_flops(fn, args):
  """FLOPs of jax.jit(fn)(*args) from XLA's cost analysis of the lowered (uncompiled) function."""
  return compiled_cost(jax.jit(fn).lower(*args))


def host_part(name, call, units, unit_name, flops):
  """A Part of a callable outside JAX (an ONNX runtime); its first call (ONNX conversion and the
  runtime's compilation) counts as the compile time."""
  t = time.perf_counter()
  jax.block_until_ready(call())
  return Part(name, call, units, unit_name, flops, time.perf_counter() - t,
              info={"host_callbacks": 0, "bytes_accessed": 0.0})


def runtime_parts(mcfg, pcfg, variables, prn_variables, settings, precision, want):
  """forward / pipeline / prn through an ONNX runtime (`runtimes`): the network and the PRN
  converted to ONNX, the rest of the pipeline jitted JAX. FLOPs are those of the same functions in
  JAX (the same arithmetic)."""
  s, rt = settings.image_size, settings.runtime
  model, prn_model = models.build_multiposenet(mcfg), models.build_prn(pcfg)
  net = runtimes.OnnxNetwork(mcfg, variables, rt, precision)
  predict = runtimes.make_predict_fn(mcfg, pcfg, variables, prn_variables,
                                     defaults.inference_config(), (s, s), runtime=rt,
                                     precision=precision)
  parts = []
  rng = np.random.default_rng(0)
  forward = lambda v, x: model.apply(v, x, train=False)
  for b in settings.batch_sizes:
    images = rng.standard_normal((b, s, s, 3)).astype(np.float32)
    flops = lowered_flops(forward, (variables, images))
    if "forward" in want:
      parts.append(host_part(f"forward_bs{b}", lambda x=images: net(x), b, "images", flops))
    if "pipeline" in want:
      scales = np.ones((b,), np.float32)
      parts.append(host_part(f"pipeline_bs{b}", lambda x=images, sc=scales: predict(x, sc), b,
                             "images", flops))
  if "prn" in want:
    n = settings.prn_batch
    x = rng.uniform(size=(n, prn_grid.GRID_H, prn_grid.GRID_W, 17)).astype(np.float32)
    prn = runtimes.OnnxPrn(prn_model, prn_variables, rt, precision)
    parts.append(host_part(f"prn_bs{n}", lambda: prn(x), n, "people",
                           lowered_flops(runtimes.prn_fn(prn_model, prn_variables), (x,))))
  return parts


def import_peer():
  """(torch, mpn_jax.peer), or errors.ConfigError with the install hint."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from mpn_jax import peer  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise errors.ConfigError(f"--parts=peer needs PyTorch, which is not installed: {PEER_HINT}"
                             ) from e
  return torch, peer


def peer_parts(settings, log=print):
  """The PyTorch peer (`mpn_jax.peer`): network forward at each batch size and its PRN, in every
  precision this CPU runs fast (fp32; bf16 autocast where it has bfloat16 instructions) and both
  layouts (the peer's NCHW; channels_last, PyTorch's faster CPU layout); the peer's best is the
  fastest of them. Random weights: only speed is measured. FLOPs unknown (0)."""
  torch, peer = import_peer()
  tiny = settings.model_size == "tiny"
  net = (peer.PeerNetwork(stage_sizes=(1, 1, 1, 1), width=8, fpn=16, keypoint_width=8) if tiny
         else peer.PeerNetwork())
  prn = peer.PeerPrn(hidden=32 if tiny else 1024)
  precisions = ("fp32", "bf16") if peer.cpu_has_bf16() else ("fp32",)
  log(f"[peer] PyTorch {torch.__version__}, {torch.get_num_threads()} threads: network "
      f"({peer.parameter_count(net) / 1e6:.1f}M parameters) and PRN in {', '.join(precisions)} x "
      f"{', '.join(PEER_LAYOUTS)}")
  s, parts = settings.image_size, []
  for b in settings.batch_sizes:
    for precision in precisions:
      for layout in PEER_LAYOUTS:
        call = peer.make_runner(net, (b, 3, s, s), precision, layout == "channels_last")
        parts.append(host_part(f"peer_forward_{precision}_{layout}_bs{b}", call, b, "images",
                               0.0))
  for precision in precisions:
    call = peer.make_runner(prn, (settings.prn_batch, *peer.GRID), precision, False)
    parts.append(host_part(f"peer_prn_{precision}_bs{settings.prn_batch}", call,
                           settings.prn_batch, "people", 0.0))
  for p in parts:
    p.info.update(torch_version=torch.__version__)
  return parts


def coco_small_prn_part(dtype, batch):
  """The PRN of configs/prn.py:coco_small (the one trained on real annotations here), if its size
  differs from the paper's."""
  cfg = _stage_config("prn", "coco_small").model
  if tuple(cfg.hidden_sizes) == tuple(models.prn_config().hidden_sizes) and not cfg.conv_dilations:
    return None
  cfg.dtype = dtype
  model = models.build_prn(cfg)
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 56, 36, 17))))(_init_key(2))
  return prn_part(model, variables, batch, "prn_coco_small")


def _step_args(step, state, batch, mesh):
  """Arguments of a `steps.make_train_step` function: (state, batch) or (state, batch, rng)."""
  if len(inspect.signature(step).parameters) == 3:
    return state, batch, jax.device_put(jax.random.key(0), parallel.replicated_sharding(mesh))
  return state, batch


def _round_to_devices(batch, mesh):
  return -(-batch // mesh.size) * mesh.size


def _out_of_memory(e):
  return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def branches_train_part(settings, dtype, mesh, log=print):
  """One stage-one optimizer step as the training loop does it (the library's step function);
  settings.train_batch=-1: the largest global batch of 64, 32, 16, ... whose step compiles and runs
  in memory."""
  if settings.train_batch >= 0:
    return _branches_train_part(settings, dtype, mesh)
  b = _round_to_devices(64, mesh)
  while True:
    try:
      part = _branches_train_part(dataclasses.replace(settings, train_batch=b), dtype, mesh)
      jax.block_until_ready(part.call())  # a step runs, not only compiles
      return part
    except Exception as e:  # pylint: disable=broad-except  (XLA reports OOM as a runtime error)
      if not _out_of_memory(e) or b <= mesh.size:
        raise
      log(f"  train_branches: batch {b} does not fit, trying {b // 2}")
      b = _round_to_devices(b // 2, mesh)


def _branches_train_part(settings, dtype, mesh):
  config = _stage_config("branches")
  mcfg, _ = model_configs(settings.model_size, dtype)
  mcfg.backbone.frozen_bn = config.model.backbone.frozen_bn
  model = models.build_multiposenet(mcfg)
  s = settings.image_size
  per_dev = 2 if jax.default_backend() == "cpu" else 8
  b = _round_to_devices(settings.train_batch or per_dev * mesh.size, mesh)
  anchors = boxes.generate_anchors((s, s))
  loss_fn = steps.branches_loss_fn(model, anchors, config.loss, config.train.trainable)
  frozen = state_lib.frozen_fn(config.train.trainable)
  tx, schedule = state_lib.make_optimizer(config.train, frozen)

  def init(rng):
    v = model.init(rng, jnp.zeros((1, 32, 32, 3)), train=False)
    return state_lib.TrainState.create(v["params"], v.get("batch_stats", {}), tx, frozen)

  state = jax.jit(init, out_shardings=parallel.replicated_sharding(mesh))(_init_key())
  batch = parallel.shard_batch(synthetic_branches_batch(b, s, config.input.max_boxes,
                                                        config.input.max_people), mesh)
  step = steps.make_train_step(loss_fn, mesh, schedule)
  return compile_part("train_branches", step, _step_args(step, state, batch, mesh), b, "images",
                      stateful=True)


def input_part(settings, log=print):
  """The stage-one training input of the coco recipe (configs/branches.py:coco: 480 px, its
  augmentation and targets, tf.data with its parallelism) on real COCO images, timed alone (its
  background threads would compete with the other parts): `settings.input_batches` batches after
  5 untimed ones. The TFDS records are built first (not timed), in a temporary folder, from
  COCO_DIR/annotations/person_keypoints_{train,val}2017_sample.json where those exist (the samples
  beside this project), else from the full person_keypoints_{train,val}2017.json. Per core =
  images/s / the CPU cores this process may use."""
  config = _stage_config("branches", "coco")
  folder = os.path.join(settings.input_coco_dir, "annotations")
  names = [f"person_keypoints_{{}}2017{suffix}.json" for suffix in ("_sample", "")]
  name = next((n for n in names if os.path.isfile(os.path.join(folder, n.format("train")))), None)
  if name is None:
    raise errors.MissingFileError(
        f"--input_coco_dir={settings.input_coco_dir}: no "
        f"{' or '.join(n.format('train') for n in names)} in {folder} (the input part reads a "
        "COCO annotation file and its images)")
  with tempfile.TemporaryDirectory(prefix="mpn_bench_tfds_") as data_dir:
    config.dataset.update(dict(coco_dir=settings.input_coco_dir, train_ann=name.format("train"),
                               val_ann=name.format("val"), data_dir=data_dir))
    ann = os.path.join(folder, name.format("train"))
    log(f"[input] building TFDS records of {ann} in a temporary folder")
    t = time.perf_counter()
    it = input_pipeline.make_train_iterator(config)
    batch = next(it)
    prepare_s = time.perf_counter() - t
    for _ in range(4):
      next(it)
    times = []
    for _ in range(settings.input_batches):
      t = time.perf_counter()
      next(it)
      times.append(time.perf_counter() - t)
  b = len(batch["image"])
  part = Part("input", lambda: None, b, "images", 0.0, prepare_s, times=times,
              info={"host_callbacks": 0, "bytes_accessed": 0.0,
                    "image_dtype": str(batch["image"].dtype),
                    "batch_bytes": int(sum(v.nbytes for v in batch.values()))})
  return part


def synthetic_branches_batch(b, s, max_boxes, max_people, seed=0):
  """A stage-one batch with the keys and shapes of data.pipeline.make_train_iterator (random)."""
  rng = np.random.default_rng(seed)
  h = s // 4
  xy = rng.uniform(0, s * 0.6, size=(b, max_boxes, 2))
  wh = rng.uniform(s * 0.1, s * 0.4, size=(b, max_boxes, 2))
  labels = np.zeros((b, max_boxes), np.int32)
  labels[:, :min(5, max_boxes)] = 1  # a few people per image, the rest padding
  box = np.concatenate([xy, xy + wh], -1) * (labels[..., None] != 0)
  kps = np.concatenate([rng.uniform(0, s, (b, max_people, 17, 2)),
                        rng.integers(0, 3, (b, max_people, 17, 1))], -1)
  return {
      "image": rng.standard_normal((b, s, s, 3)).astype(np.float32),
      "heatmaps": rng.uniform(size=(b, h, h, 17)).astype(np.float32),
      "mask": (rng.uniform(size=(b, h, h, 1)) > 0.5).astype(np.float32),
      "weights": np.ones((b, h, h, 1), np.float32),
      "boxes": box.astype(np.float32),
      "box_labels": labels,
      "keypoints": kps.astype(np.float32),
  }


def prn_train_part(settings, dtype, mesh):
  """One stage-two optimizer step (the library's step function, configs/prn.py's optimizer)."""
  config = _stage_config("prn")
  _, pcfg = model_configs(settings.model_size, dtype)
  model = models.build_prn(pcfg)
  b = _round_to_devices(settings.prn_train_batch or config.data.batch_size, mesh)
  tx, schedule = state_lib.make_optimizer(config.train)
  shape = (prn_grid.GRID_H, prn_grid.GRID_W, 17)

  def init(rng):
    v = model.init(rng, jnp.zeros((1,) + shape), train=False)
    return state_lib.TrainState.create(v["params"], v.get("batch_stats", {}), tx)

  state = jax.jit(init, out_shardings=parallel.replicated_sharding(mesh))(_init_key())
  rng = np.random.default_rng(2)
  targets = rng.uniform(size=(b, shape[0] * shape[1], 17)).astype(np.float32)
  targets /= targets.sum(1, keepdims=True)
  batch = parallel.shard_batch({
      "inputs": rng.uniform(size=(b,) + shape).astype(np.float32),
      "targets": targets.reshape((b,) + shape),
      "target_valid": np.ones((b, 17), np.float32)}, mesh)
  step = steps.make_train_step(steps.prn_loss_fn(model), mesh, schedule)
  return compile_part("train_prn", step, _step_args(step, state, batch, mesh), b, "people",
                      stateful=True)


# ------------------------------------------------------------------------------------------------
# Memory and the machine.

def peak_memory():
  """(bytes, source): device peak where the backend reports it, else the process max RSS."""
  stats = None
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device memory_stats()['peak_bytes_in_use']"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports kilobytes, macOS bytes.
  return int(rss if sys.platform == "darwin" else rss * 1024), \
      "process max RSS (resource.getrusage ru_maxrss)"


def _cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return ""


def device_description():
  """e.g. 'gpu: NVIDIA H100 x1 (16 host CPU cores)' or 'cpu: AMD EPYC x1 (2 host CPU cores)'."""
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", "") or d.platform
  if d.platform == "cpu":
    kind = _cpu_model() or kind
  return f"{d.platform}: {kind} x{jax.device_count()} ({os.cpu_count()} host CPU cores)"


def load_average():
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


# ------------------------------------------------------------------------------------------------
# One dtype, everything.

def benchmark_dtype(settings, precision, log=print):
  """Runs the selected parts at `precision` ('fp32' | 'bf16'; the JAX compute dtype, or the ONNX
  runtime's inference precision); returns (metrics dict, parts)."""
  want = set(settings.parts)
  dtype = DTYPES[precision]
  parts = []
  if "input" in want and precision == settings.precisions[0]:
    parts.append(input_part(settings, log))
  if "peak" in want:
    sizes = settings.peak_sizes or ((2048,) if jax.default_backend() == "cpu" else (8192, 16384))
    log(f"[{dtype}] matmul peak: n = {', '.join(map(str, sizes))}")
    parts += peak_parts(dtype, sizes)

  onnx = settings.runtime != "jax"
  # An ONNX runtime converts the float32 network and applies its own precision.
  mcfg, pcfg = model_configs(settings.model_size, "float32" if onnx else dtype)
  model, prn_model = models.build_multiposenet(mcfg), models.build_prn(pcfg)
  if want & {"forward", "pipeline"}:
    log(f"[{dtype}] initialising the {settings.model_size} MultiPoseNet and PRN")
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3)), train=False))(
        _init_key())
  if want & {"forward", "pipeline", "prn"}:
    prn_variables = jax.jit(lambda r: prn_model.init(r, jnp.zeros((1, 56, 36, 17))))(_init_key(1))
  if onnx and want & {"forward", "pipeline", "prn"}:
    log(f"[{dtype}] converting to ONNX and compiling forward / pipeline / PRN in "
        f"{settings.runtime} at {settings.image_size}x{settings.image_size}, batch "
        f"{settings.batch_sizes}")
    parts += runtime_parts(mcfg, pcfg, variables if want & {"forward", "pipeline"} else None,
                           prn_variables, settings, precision, want)
  if not onnx and want & {"forward", "pipeline"}:
    log(f"[{dtype}] compiling forward / pipeline at {settings.image_size}x{settings.image_size}, "
        f"batch {settings.batch_sizes}")
    parts += network_parts(model, variables, prn_model, prn_variables, settings,
                           "forward" in want, "pipeline" in want)
  if not onnx and "prn" in want:
    parts.append(prn_part(prn_model, prn_variables, settings.prn_batch))
    small = (coco_small_prn_part(dtype, settings.prn_batch) if settings.model_size == "full"
             else None)
    if small is not None:
      parts.append(small)
  if "peer" in want and precision == settings.precisions[0]:
    parts += peer_parts(settings, log)
  mesh = parallel.create_mesh()
  if "train_branches" in want:
    log(f"[{dtype}] compiling the stage-one train step")
    parts.append(branches_train_part(settings, dtype, mesh, log))
  if "train_prn" in want:
    log(f"[{dtype}] compiling the stage-two train step")
    parts.append(prn_train_part(settings, dtype, mesh))

  for p in parts:
    log(f"  {p.name}: compiled in {p.compile_s:.1f} s, {p.flops / 1e9:.2f} GFLOP per call")
  log(f"[{dtype}] timing {len(parts)} parts: {settings.warmup} warm-up + {settings.repeats} "
      "round-robin rounds")
  timed = [p for p in parts if p.name != "input"]  # input: timed on its own, above
  if timed:
    run_round_robin(timed, settings.repeats, settings.warmup, log)
  return summarize(parts), parts


def summarize(parts):
  """Flat metrics of one dtype from its timed parts (medians; fractions of the best matmul)."""
  by = {p.name: p for p in parts}
  m = {}
  peak_fps = None
  peak = best_peak(parts)
  if peak is not None:
    peak_fps = peak.flops / peak.median_s
    m["matmul_peak_flops_per_s"] = peak_fps
    m["matmul_peak_size"] = int(peak.name.split("_")[1])
  for p in parts:
    if p.name.startswith(("forward_bs", "pipeline_bs")):
      kind, b = p.name.split("_bs")
      m[f"{kind}_images_per_s_bs{b}"] = p.per_s()
      m[f"{kind}_flops_per_image_bs{b}"] = p.flops / p.units
      m[f"{kind}_flops_per_s_bs{b}"] = p.flops / p.median_s
      if peak_fps:
        m[f"{kind}_fraction_of_peak_bs{b}"] = p.flops / p.median_s / peak_fps
        # The same from the fastest call of each (less sensitive to other processes' load).
        m[f"{kind}_fraction_of_peak_bs{b}_from_min"] = (p.flops / min(p.times)) / (
            peak.flops / min(peak.times))
      if kind == "pipeline":
        m[f"pipeline_host_callbacks_bs{b}"] = p.info["host_callbacks"]
        fwd = by.get(f"forward_bs{b}")
        if fwd is not None:
          m[f"pipeline_over_forward_bs{b}"] = p.median_s / fwd.median_s
          m[f"pipeline_over_forward_bs{b}_from_min"] = min(p.times) / min(fwd.times)
    elif p.name.startswith(("prn_bs", "prn_coco_small_bs")):
      key = p.name.split("_bs")[0]
      m[f"{key}_batch"] = p.units
      m[f"{key}_us_per_person"] = p.median_s / p.units * 1e6
      m[f"{key}_flops_per_person"] = p.flops / p.units
      if peak_fps:
        m[f"{key}_fraction_of_peak"] = p.flops / p.median_s / peak_fps
        # What the PRN would take at the same-run matmul peak: the floor for this device and dtype.
        m[f"{key}_us_per_person_at_peak"] = p.flops / p.units / peak_fps * 1e6
    elif p.name == "input":
      cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
      m["input_images_per_s"] = p.units * len(p.times) / sum(p.times)
      m["input_cores"] = cores
      m["input_images_per_s_per_core"] = m["input_images_per_s"] / cores
      m["input_batch"] = p.units
      m["input_image_dtype"] = p.info["image_dtype"]
      m["input_batch_bytes"] = p.info["batch_bytes"]
    elif p.name in ("train_branches", "train_prn"):
      units, unit = ("images", "image") if p.name == "train_branches" else ("people", "person")
      m[f"{p.name}_{units}_per_s"] = p.per_s()
      m[f"{p.name}_batch"] = p.units
      m[f"{p.name}_state_donated"] = p.info.get("state_donated")
      m[f"{p.name}_flops_per_{unit}"] = p.flops / p.units
      if peak_fps:
        m[f"{p.name}_fraction_of_peak"] = p.flops / p.median_s / peak_fps
  first = [p for p in parts if p.name.startswith("forward_bs")]
  if first:
    m["forward_flops_per_image"] = first[0].flops / first[0].units
  m.update(peer_metrics(parts, m))
  return m


def _peer_precision(part):
  """'fp32' | 'bf16' of a peer part, from its name: peer_<forward|prn>_<precision>_..."""
  return part.name.split("_")[2]


def peer_metrics(parts, m):
  """The peer's throughput per variant, its best, and this project's parts over that best (the
  same rounds). `m`: the other metrics of these parts."""
  out = {}
  nets = [p for p in parts if p.name.startswith("peer_forward_")]
  for p in nets:
    out[p.name.replace("peer_forward_", "peer_forward_images_per_s_")] = p.per_s()
  for b in sorted({int(p.name.rsplit("_bs", 1)[1]) for p in nets}):
    best = max((p for p in nets if p.name.endswith(f"_bs{b}")), key=lambda p: p.per_s())
    out[f"peer_best_forward_images_per_s_bs{b}"] = best.per_s()
    out[f"peer_best_forward_variant_bs{b}"] = best.name[len("peer_forward_"):].rsplit("_bs", 1)[0]
    for kind in ("forward", "pipeline"):
      if f"{kind}_images_per_s_bs{b}" in m:
        out[f"{kind}_over_peer_best_bs{b}"] = m[f"{kind}_images_per_s_bs{b}"] / best.per_s()
  prns = [p for p in parts if p.name.startswith("peer_prn_")]
  for p in prns:
    out[f"peer_prn_us_per_person_{_peer_precision(p)}"] = p.median_s / p.units * 1e6
  if prns:
    best = min(prns, key=lambda p: p.median_s / p.units)
    out["peer_prn_best_us_per_person"] = best.median_s / best.units * 1e6
    out["peer_prn_best_precision"] = _peer_precision(best)
    if "prn_us_per_person" in m:
      out["prn_over_peer_best"] = m["prn_us_per_person"] / out["peer_prn_best_us_per_person"]
  if nets:
    out["peer_torch_version"] = nets[0].info.get("torch_version", "")
  return out


def format_table(rows):
  """rows: (dtype, Part, peak_flops_per_s or None) -> fixed-width text table."""
  head = (f"{'part':<34} {'dtype':<9} {'batch':>5} {'median ms':>11} {'min ms':>11} "
          f"{'throughput':>18} {'GFLOP/s':>9} {'of peak':>8} {'compile s':>9}")
  lines = [head, "-" * len(head)]
  for dtype, p, peak in rows:
    if p.name.startswith("peer_"):  # the peer's own precision
      dtype = DTYPES[_peer_precision(p)]
    fps = p.flops / p.median_s if p.flops else 0.0
    frac = f"{fps / peak:8.1%}" if peak and fps else f"{'':>8}"
    if p.name.startswith(("prn_bs", "prn_coco_small_bs", "peer_prn_")):
      thr = f"{p.median_s / p.units * 1e6:.1f} us/person"
    elif p.name.startswith("matmul"):
      thr = f"n={p.name.split('_')[1]}"
    else:
      thr = f"{p.per_s():.2f} {p.unit_name}/s"
    lines.append(f"{p.name:<34} {dtype:<9} {p.units:>5} {p.median_s * 1e3:>11.1f} "
                 f"{min(p.times) * 1e3:>11.1f} {thr:>18} {fps / 1e9:>9.1f} {frac} "
                 f"{p.compile_s:>9.1f}")
  return "\n".join(lines)


def run(settings, log=print):
  """Runs the benchmark; returns the JSON-ready result dict (and logs the table)."""
  settings.validate()
  t0 = time.time()
  load_before = load_average()
  results, rows, timings = {}, [], {}
  for precision in settings.precisions:
    runtimes.check(settings.runtime, precision)
  if "peer" in settings.parts:
    import_peer()
  for precision in settings.precisions:
    dtype = DTYPES[precision]
    metrics, parts = benchmark_dtype(settings, precision, log)
    results[dtype] = metrics
    peak = metrics.get("matmul_peak_flops_per_s")
    rows += [(dtype, p, peak) for p in parts]
    timings[dtype] = {p.name: {"times_s": p.times, "median_s": p.median_s, "min_s": min(p.times),
                               "compile_s": p.compile_s, "flops": p.flops, "units": p.units,
                               "bytes_accessed": p.info["bytes_accessed"]}
                      for p in parts}
  mem, mem_source = peak_memory()
  out = {
      "device": device_description(),
      "platform": jax.default_backend(),
      "jax_version": jax.__version__,
      "dtype": DTYPES[settings.precisions[0]],
      "precision": settings.precisions[0],
      "runtime": settings.runtime,
      "image_size": settings.image_size,
      "model_size": settings.model_size,
      "repeats": settings.repeats,
      "load_average_1min": {"before": load_before, "after": load_average(),
                            "cpu_count": os.cpu_count()},
      "peak_memory_bytes": mem,
      "peak_memory_source": mem_source,
      "wall_s": time.time() - t0,
  }
  out.update(results[DTYPES[settings.precisions[0]]])
  out["results"] = results
  out["timings"] = timings
  log(format_table(rows))
  log(f"peak memory {mem / 2**20:.0f} MiB ({mem_source}); device {out['device']}; load average "
      f"{load_before} -> {out['load_average_1min']['after']} on {os.cpu_count()} cores; "
      f"{out['wall_s']:.0f} s")
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}: every option is a --flag")
  if _GPU.value and "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ:
    # Before the first JAX call: the backend reads it when it starts. Without it JAX takes 75% of
    # GPU memory up front and peak memory says nothing.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  try:
    settings = settings_from_flags()
  except ValueError as e:
    raise errors.ConfigError(str(e)) from e
  if _OUTPUT.value:  # before the measurements, not after them
    coco_io.check_writable_file(_OUTPUT.value, "--output")
  out = run(settings)
  if _OUTPUT.value:
    coco_io.write_json(_OUTPUT.value, out)
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main, "mpn_jax.benchmark")
