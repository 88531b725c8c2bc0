r"""ImageNet ResNet weights (torchvision or Keras) -> the Flax backbone's params and batch_stats.

Command line (writes an Orbax checkpoint that `config.init_from` can start from):

  python -m mpn_jax.weights --source=torchvision --input=resnet50-0676ba61.pth --depth=50 \
      --output=/tmp/mpn/imagenet_r50_tv
  python -m mpn_jax.weights --source=keras --depth=50 \
      --input=resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      --output=/tmp/mpn/imagenet_r50_keras

Sources:
  torchvision  a ResNet-50/101 state dict: `.pth`/`.pt` (needs torch), `.npz` holding the same
               tensors under the same names (`np.savez(f, **{k: v.numpy() ...})`), or `.safetensors`
               (needs the `safetensors` package). `fc.*` and `*.num_batches_tracked` are ignored.
               Variant v1.5 (stride on the 3x3 conv), BN epsilon 1e-5, input ImageNet-normalised RGB
               (exactly `coco.normalize_image`), so nothing is folded.
  keras        `keras.applications.ResNet50/101` weights (`.h5` as downloaded by keras.applications,
               with or without top, or a Keras 3 `.weights.h5`), or a built Keras model.
               Variant v1 (stride on the first 1x1 conv), BN epsilon 1.001e-5. Keras convs have
               biases; each is folded into the following BatchNorm (BN(conv + b) is BN with its
               moving mean lowered by b), so the tree is exactly the torchvision-shaped one.

Keras preprocessing fold. Keras ResNets expect Caffe-style input: BGR, 0..255, minus the mean
(103.939, 116.779, 123.68), no std division. The project feeds ImageNet-normalised RGB
z = (rgb - m) / s (m, s = coco.IMAGENET_MEAN_RGB / IMAGENET_STD_RGB). Since conv1 is linear, with
caffe input k[c'] = rgb[2 - c'] - mean_bgr[c'] = z[2 - c'] * s[2 - c'] + m[2 - c'] - mean_bgr[c']:
  conv1 kernel over RGB  W'[..., c, :] = W[..., 2 - c, :] * s[c]     (channel swap and std scale)
  constant               b'[o] = sum_{h,w,c'} W[h, w, c', o] * (m[2 - c'] - mean_bgr[c'])
and b' (a per-channel constant) is folded into bn1's moving mean. This is exact wherever conv1's 7x7
window lies inside the image; in the 3-pixel border that sees conv1's zero padding the two models
differ only by the gap between the ImageNet mean and the Caffe mean (< 0.5 grey levels), i.e. a
padded pixel is the ImageNet mean colour instead of the Caffe mean colour. With --no_fold (or
`fold_preprocessing=False`) the kernel is kept as is and the network expects Caffe input
(`ImportedBackbone.preprocessing == 'caffe_bgr'`); the project's pipeline does not produce that.

Checkpoint format (the contract with the training code). `--output=DIR` is an Orbax checkpoint
directory (orbax.checkpoint.StandardCheckpointer) holding the pytree

  {'params': {'backbone': <ResNet params>}, 'batch_stats': {'backbone': <ResNet batch_stats>}}

with Flax paths such as params/backbone/layer1_0/conv1/kernel [1, 1, 64, 64] float32 (HWIO) and
batch_stats/backbone/bn1/mean [64]. Restore it with `StandardCheckpointer().restore(DIR)` (or
`restore_pretrained(DIR)`) and merge the 'backbone' subtrees into freshly initialised variables.
Beside it, `DIR.json` records source, depth, stage_sizes, width, variant, bn_epsilon and
preprocessing; `restore_pretrained(DIR, backbone_config)` checks those against
`config.model.backbone` and raises when, e.g., Keras (v1) weights meet a v1.5 config (the shapes
are identical, so nothing else would notice). Keras weights need
`--config.model.backbone.variant=v1 --config.model.backbone.bn_epsilon=1.001e-5`.

Every tensor of the backbone must come from the source: missing, misshaped or unexpected tensors
raise a ValueError listing them; nothing is left at its random initialisation.
"""

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mpn_jax import cli
from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import files
from mpn_jax.models import resnet

SOURCES = ("torchvision", "keras")
TORCHVISION_BN_EPSILON = 1e-5
KERAS_BN_EPSILON = 1.001e-5
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float64)
TORCHVISION_IGNORED = (re.compile(r"^fc\."), re.compile(r"\.num_batches_tracked$"))
KERAS_IGNORED_LAYERS = ("predictions",)  # the ImageNet classifier of include_top models


@dataclasses.dataclass
class ImportedBackbone:
  """Flax backbone variables plus what the weights expect of the model and its input."""
  params: dict
  batch_stats: dict
  source: str
  stage_sizes: tuple
  width: int
  variant: str          # 'v1.5' (torchvision) or 'v1' (Keras)
  bn_epsilon: float
  preprocessing: str    # 'imagenet_rgb' (coco.normalize_image) or 'caffe_bgr'

  def metadata(self):
    return {"source": self.source, "stage_sizes": list(self.stage_sizes), "width": self.width,
            "variant": self.variant, "bn_epsilon": self.bn_epsilon,
            "preprocessing": self.preprocessing}

  def variables(self):
    """The checkpoint pytree {'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}."""
    return {"params": {"backbone": self.params}, "batch_stats": {"backbone": self.batch_stats}}


def _stage_sizes(depth, stage_sizes):
  return tuple(stage_sizes) if stage_sizes else resnet.stage_sizes_for_depth(depth)


def expected_shapes(stage_sizes, width=64):
  """{(collection, *flax path): shape} for every leaf of ResNet(stage_sizes, width)."""
  model = resnet.ResNet(stage_sizes=tuple(stage_sizes), width=width)
  tree = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _natural_key(name):
  """'layer3.6' sorts before 'layer3.10' in listings."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _fail(source, missing=(), misshaped=(), unexpected=()):
  """Raises one ValueError listing every problem (so a wrong depth shows up in one go)."""
  parts = []
  for title, items in (("missing", missing), ("with the wrong shape", misshaped),
                       ("unexpected", unexpected)):
    items = sorted(items, key=_natural_key)
    if items:
      listing = "\n    ".join(list(items)[:40])
      more = f"\n    ... and {len(items) - 40} more" if len(items) > 40 else ""
      parts.append(f"  {len(items)} tensors {title}:\n    {listing}{more}")
  if parts:
    raise ValueError(f"cannot import {source} ResNet weights (check --depth / the file):\n"
                     + "\n".join(parts))


def _unflatten(flat):
  tree = flax.traverse_util.unflatten_dict(flat)
  return tree.get("params", {}), tree.get("batch_stats", {})


# ------------------------------------------------------------------------------------ torchvision

def torchvision_name(collection, path):
  """Flax leaf -> torchvision key: ('params', 'layer1_0', 'downsample_0', 'kernel') ->
  'layer1.0.downsample.0.weight'; batch_stats mean/var -> running_mean/running_var."""
  *modules, leaf = path
  prefix = ".".join(re.sub(r"_(\d+)$", r".\1", m) for m in modules)
  suffix = {("params", "kernel"): "weight", ("params", "scale"): "weight",
            ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
            ("batch_stats", "var"): "running_var"}[(collection, leaf)]
  return f"{prefix}.{suffix}"


def from_torchvision(state_dict, depth=50, stage_sizes=None, width=64):
  """torchvision ResNet state dict {name: array} -> ImportedBackbone (v1.5, eps 1e-5).

  Conv weights are OIHW and become HWIO kernels; BN weight/bias/running_mean/running_var become
  scale/bias (params) and mean/var (batch_stats).
  """
  stage_sizes = _stage_sizes(depth, stage_sizes)
  state = {k: np.asarray(v) for k, v in state_dict.items()}
  flat, missing, misshaped, used = {}, [], [], set()
  for (collection, *path), shape in expected_shapes(stage_sizes, width).items():
    name = torchvision_name(collection, path)
    if name not in state:
      missing.append(name)
      continue
    used.add(name)
    value = state[name]
    if path[-1] == "kernel" and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.shape != shape:
      misshaped.append(f"{name}: {tuple(state[name].shape)} (expected the torchvision layout of "
                       f"Flax {shape})")
      continue
    flat[(collection, *path)] = value.astype(np.float32)
  unexpected = sorted(k for k in state if k not in used
                      and not any(p.search(k) for p in TORCHVISION_IGNORED))
  _fail("torchvision", missing, misshaped, unexpected)
  params, stats = _unflatten(flat)
  return ImportedBackbone(params, stats, "torchvision", stage_sizes, width, "v1.5",
                          TORCHVISION_BN_EPSILON, "imagenet_rgb")


def load_state_dict(path):
  """Reads a torchvision state dict from .pth/.pt (torch), .npz or .safetensors -> {name: array}."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(f"weights file {path} does not exist")
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  if path.endswith(".safetensors"):
    try:
      # Here, not at the top: safetensors, torch and keras are optional (one weights format each).
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError(f"{path}: reading .safetensors needs `pip install safetensors`") from e
    return load_file(path)
  if path.endswith((".pth", ".pt", ".bin")):
    try:
      import torch  # pylint: disable=g-import-not-at-top  (optional, as above)
    except ImportError as e:
      raise ValueError(f"{path}: reading a torch checkpoint needs torch installed; or convert it "
                       "elsewhere with np.savez(out, **{k: v.numpy() for k, v in sd.items()}) and "
                       "pass the .npz") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # training checkpoints wrap the state dict
      if isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}  # DataParallel prefix
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}
  raise ValueError(f"{path}: unknown state-dict format; use .pth/.pt, .npz or .safetensors")


# ------------------------------------------------------------------------------------------ keras

def keras_layer_name(path):
  """Flax module path -> keras.applications layer name: ('layer2_0', 'conv1') ->
  'conv3_block1_1_conv', ('layer2_0', 'downsample_1') -> 'conv3_block1_0_bn',
  ('bn1',) -> 'conv1_bn'."""
  if len(path) == 1:
    return {"conv1": "conv1_conv", "bn1": "conv1_bn"}[path[0]]
  stage, block = re.fullmatch(r"layer(\d+)_(\d+)", path[0]).groups()
  prefix = f"conv{int(stage) + 1}_block{int(block) + 1}"
  kind, index = re.fullmatch(r"(conv|bn|downsample_)(\d)", path[1]).groups()
  if kind == "downsample_":
    return f"{prefix}_0_{'conv' if index == '0' else 'bn'}"
  return f"{prefix}_{index}_{kind}"


def keras_weights(model):
  """{layer name: {'kernel', 'bias'} or {'gamma', 'beta', 'moving_mean', 'moving_variance',
  'epsilon'}} of a Keras model's Conv2D / BatchNormalization / Dense layers (numpy)."""
  out = {}
  for layer in model.layers:
    if not layer.weights:
      continue
    if hasattr(layer, "moving_mean"):
      out[layer.name] = {"gamma": layer.gamma, "beta": layer.beta, "moving_mean": layer.moving_mean,
                         "moving_variance": layer.moving_variance}
      out[layer.name] = {k: np.asarray(v) for k, v in out[layer.name].items()}
      out[layer.name]["epsilon"] = float(layer.epsilon)
    else:
      out[layer.name] = {"kernel": np.asarray(layer.kernel)}
      if getattr(layer, "bias", None) is not None:
        out[layer.name]["bias"] = np.asarray(layer.bias)
  return out


def load_keras_model(path, depth=50):
  """Builds keras.applications.ResNet{depth} and loads the weights file (with or without top)."""
  import keras  # pylint: disable=g-import-not-at-top  (optional: only for Keras weights)
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(f"weights file {path} does not exist")
  builders = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101}
  if depth not in builders:
    raise ValueError(f"--depth={depth}: Keras applications provide ResNet50 and ResNet101 only")
  errors = []
  for include_top in (False, True):
    model = builders[depth](weights=None, include_top=include_top,
                            input_shape=(224, 224, 3) if include_top else (None, None, 3))
    try:
      model.load_weights(path)
      return model
    except Exception as e:  # Keras raises ValueError/KeyError/... depending on the format.
      errors.append(f"include_top={include_top}: {type(e).__name__}: {e}"[:500])
  raise ValueError(f"{path} is not a Keras ResNet{depth} weights file:\n  " + "\n  ".join(errors))


def fold_caffe_preprocessing(kernel_bgr):
  """conv1 kernel [kh, kw, 3 (BGR), O] for Caffe input -> (kernel [kh, kw, 3 (RGB), O] for
  ImageNet-normalised RGB input, constant [O] to add to the conv output); see the module
  docstring."""
  mean, std = coco.IMAGENET_MEAN_RGB.astype(np.float64), coco.IMAGENET_STD_RGB.astype(np.float64)
  k = np.asarray(kernel_bgr, np.float64)
  kernel_rgb = k[:, :, ::-1, :] * std[None, None, :, None]
  shift_bgr = mean[::-1] - CAFFE_MEAN_BGR  # (m - caffe mean) per BGR input channel
  constant = np.einsum("hwco,c->o", k, shift_bgr)
  return kernel_rgb.astype(np.float32), constant


def from_keras(source, depth=50, stage_sizes=None, fold_preprocessing=True):
  """Keras ResNet (a built model, a weights file, or a `keras_weights` dict) -> ImportedBackbone.

  Variant v1, the Keras BN epsilon (1.001e-5, read from the layers); conv biases folded into the
  BNs; with fold_preprocessing the network takes ImageNet-normalised RGB (module docstring).
  """
  if isinstance(source, (str, os.PathLike)):
    source = load_keras_model(source, depth)
  weights = source if isinstance(source, dict) else keras_weights(source)
  stage_sizes = _stage_sizes(depth, stage_sizes)
  shapes = expected_shapes(stage_sizes, 64)
  modules = sorted({tuple(k[1:-1]) for k in shapes})
  flat, missing, misshaped, used, epsilons = {}, [], [], set(), set()
  conv_bias = {}
  for path in modules:
    name = keras_layer_name(path)
    if name not in weights:
      missing.append(name)
      continue
    used.add(name)
    w = weights[name]
    if path[-1].startswith(("conv", "downsample_0")):
      target = {("params", *path, "kernel"): np.asarray(w["kernel"], np.float32)}
      bn_name = path[-1].replace("conv", "bn").replace("downsample_0", "downsample_1")
      bn_path = path[:-1] + (bn_name,)
      conv_bias[bn_path] = np.asarray(w.get("bias", 0.0), np.float64)
    else:
      epsilons.add(float(w.get("epsilon", KERAS_BN_EPSILON)))
      target = {("params", *path, "scale"): w["gamma"], ("params", *path, "bias"): w["beta"],
                ("batch_stats", *path, "mean"): w["moving_mean"],
                ("batch_stats", *path, "var"): w["moving_variance"]}
    for key, value in target.items():
      value = np.asarray(value, np.float32)
      if value.shape != shapes[key]:
        misshaped.append(f"{name} ({key[-1]}): {value.shape}, expected {shapes[key]}")
      flat[key] = value
  unexpected = sorted(n for n in weights if n not in used and n not in KERAS_IGNORED_LAYERS)
  if len(epsilons) > 1:
    misshaped.append(f"BatchNorm epsilons differ between layers: {sorted(epsilons)}")
  _fail("Keras", missing, misshaped, unexpected)

  # BN(conv(x) + b) == BN'(conv(x)) with BN' = BN with moving mean - b.
  for bn_path, bias in conv_bias.items():
    flat[("batch_stats", *bn_path, "mean")] = (
        flat[("batch_stats", *bn_path, "mean")] - bias).astype(np.float32)
  preprocessing = "caffe_bgr"
  if fold_preprocessing:
    kernel, constant = fold_caffe_preprocessing(flat[("params", "conv1", "kernel")])
    flat[("params", "conv1", "kernel")] = kernel
    flat[("batch_stats", "bn1", "mean")] = (
        flat[("batch_stats", "bn1", "mean")] - constant).astype(np.float32)
    preprocessing = "imagenet_rgb"
  params, stats = _unflatten(flat)
  eps = epsilons.pop() if epsilons else KERAS_BN_EPSILON
  return ImportedBackbone(params, stats, "keras", stage_sizes, 64, "v1", eps, preprocessing)


# ------------------------------------------------------------------------------------ checkpoints

def check_output(directory, overwrite):
  """ConfigError naming --output when the checkpoint folder or its .json exists and not
  `overwrite`."""
  directory = os.path.abspath(os.fspath(directory))
  for path in (directory, directory + ".json"):
    if os.path.lexists(path) and not overwrite:
      raise errors.ConfigError(f"--output={directory}: {path} already exists; remove it or pass "
                               "--overwrite")


def save_pretrained(imported, directory, overwrite=False):
  """Writes the Orbax checkpoint `directory` and its metadata `directory`.json (see the module
  docstring); returns the absolute directory.

  Both are written under temporary names and renamed into place when complete, so a kill or a
  full disk leaves the earlier pair (with overwrite=True) or nothing, never half of one; the
  earlier checkpoint is deleted only once the new one is in place.
  """
  directory = os.path.abspath(os.fspath(directory))
  meta = directory + ".json"
  check_output(directory, overwrite)
  folder, base = os.path.split(directory)
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
  old = os.path.join(folder, f".{base}.old-{os.getpid()}")
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp, jax.tree.map(np.asarray, imported.variables()), force=True)
    checkpointer.wait_until_finished()
    if os.path.lexists(directory):
      os.replace(directory, old)
    os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  files.replace_atomically(meta, lambda f: json.dump(imported.metadata(), f, indent=2), mode="t")
  shutil.rmtree(old, ignore_errors=True)
  return directory


def check_backbone_config(metadata, backbone_config):
  """Raises ValueError when `config.model.backbone` does not fit weights with this metadata."""
  want = {"variant": metadata["variant"], "bn_epsilon": metadata["bn_epsilon"],
          "width": metadata["width"], "stage_sizes": tuple(metadata["stage_sizes"])}
  have = {"variant": backbone_config.variant, "bn_epsilon": backbone_config.bn_epsilon,
          "width": backbone_config.width,
          "stage_sizes": (tuple(backbone_config.stage_sizes)
                          or resnet.stage_sizes_for_depth(backbone_config.depth))}
  wrong = [k for k in want if (not np.isclose(want[k], have[k], rtol=1e-6, atol=0)
                               if k == "bn_epsilon" else want[k] != have[k])]
  if wrong:
    flags = " ".join(f"--config.model.backbone.{k}={want[k]}" for k in wrong)
    raise errors.ConfigError(f"pretrained {metadata['source']} weights need a different backbone config: "
                     + ", ".join(f"{k}={want[k]} (config has {have[k]})" for k in wrong)
                     + f"; set {flags}")


def restore_pretrained(directory, backbone_config=None):
  """Reads a checkpoint written by `save_pretrained` -> {'params': {'backbone'}, 'batch_stats':
  {'backbone'}} (numpy). With `backbone_config` (config.model.backbone), checks it fits first."""
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise ValueError(f"pretrained checkpoint {directory} does not exist")
  if backbone_config is not None:
    meta_file = directory + ".json"
    if not os.path.exists(meta_file):
      raise ValueError(f"{meta_file} (written by mpn_jax.weights beside the checkpoint) is "
                       "missing: cannot check the backbone variant")
    with open(meta_file) as f:
      check_backbone_config(json.load(f), backbone_config)
  tree = ocp.StandardCheckpointer().restore(directory)
  return jax.tree.map(np.asarray, tree)


def read_metadata(directory):
  """The `directory`.json metadata written by `save_pretrained`."""
  with open(os.path.abspath(os.fspath(directory)) + ".json") as f:
    return json.load(f)


# ------------------------------------------------------------------------------------------- main

def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m mpn_jax.weights",
      description="Convert ImageNet ResNet weights to an Orbax checkpoint for config.init_from.")
  parser.add_argument("--source", required=True, choices=SOURCES)
  parser.add_argument("--input", required=True, help="weights file (.pth/.npz/.safetensors; .h5)")
  parser.add_argument("--depth", type=int, default=50, help="50 or 101")
  parser.add_argument("--output", required=True, help="Orbax checkpoint directory to write")
  parser.add_argument("--no_fold", action="store_true",
                      help="keras: keep Caffe BGR preprocessing instead of folding it into conv1")
  parser.add_argument("--overwrite", action="store_true")
  parser.add_argument("--stage_sizes", default="",
                      help="blocks per stage, e.g. 1,1,1,1 (non-standard nets); default: --depth")
  parser.add_argument("--width", type=int, default=64, help="first-stage width (torchvision)")
  args = parser.parse_args(argv)
  check_output(args.output, args.overwrite)  # before the (slow) conversion
  stage_sizes = tuple(int(s) for s in args.stage_sizes.split(",")) if args.stage_sizes else None
  if args.source == "torchvision":
    imported = from_torchvision(load_state_dict(args.input), args.depth, stage_sizes, args.width)
  else:
    imported = from_keras(args.input, args.depth, stage_sizes, fold_preprocessing=not args.no_fold)
  out = save_pretrained(imported, args.output, overwrite=args.overwrite)
  print(f"wrote {out} (+ {out}.json): {json.dumps(imported.metadata())}")
  print("train from it with: --config.init_from=" + out
        + f" --config.model.backbone.variant={imported.variant}"
        + f" --config.model.backbone.bn_epsilon={imported.bn_epsilon}")
  if imported.preprocessing != "imagenet_rgb":
    print("WARNING: these weights expect Caffe BGR input, which the project's pipeline does not "
          "produce; drop --no_fold", file=sys.stderr)


if __name__ == "__main__":
  try:
    main()
  except (errors.UserError, ValueError) as e:  # bad file / flags: the message says what to fix
    cli.fail("mpn_jax.weights", str(e))
  except OSError as e:
    if e.filename is None:
      raise
    cli.fail("mpn_jax.weights", cli.describe_os_error(e))
