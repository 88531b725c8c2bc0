"""What every export format shares: the model path restored, the output folder checked and written
all at once, and the optional packages' install hint."""

import contextlib
import json
import os
import shutil
import tempfile

from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import files
from mpn_jax.inference import runtimes

FORMATS = ("stablehlo", "onnx", "saved_model")
EXTRA_HINT = runtimes.EXTRA_HINT


class ExportError(errors.UserError):
  """The model cannot be exported as asked (an unexportable setting, a missing optional package)."""


def require(*modules, fmt):
  """Imports the optional packages `modules` (returned in order), or ExportError with the hint."""
  try:
    return runtimes.require(*modules, what=f"--format={fmt}")
  except errors.ConfigError as e:
    raise ExportError(str(e)) from None


def check_model_path(model):
  """ExportError unless `model` is a folder holding the branches/ and prn/ stage workdirs."""
  if not model:
    raise ExportError("--model: give the model folder (holding branches/ and prn/)")
  if not os.path.isdir(model):
    raise errors.MissingFileError(f"--model={model}: no such folder (the model folder holds "
                                  "branches/ and prn/, e.g. what python -m mpn_jax.quickstart "
                                  "--workdir=DIR leaves in DIR)")
  missing = [s for s in ("branches", "prn") if not os.path.isdir(os.path.join(model, s))]
  if missing:
    raise errors.MissingFileError(f"--model={model}: no {' or '.join(m + '/' for m in missing)} "
                                  "in it (a model folder holds the branches/ and prn/ stage "
                                  "workdirs)")


def check_output(output):
  """ExportError unless `output` is a new or empty folder (nothing of the user's is overwritten)."""
  if not output:
    raise ExportError("--output: give a folder for the exported files")
  if os.path.lexists(output):
    if not os.path.isdir(output):
      raise ExportError(f"--output={output}: a file stands there; give a new or empty folder")
    if os.listdir(output):
      raise ExportError(f"--output={output}: the folder is not empty; give a new or empty folder "
                        "(nothing in it is overwritten)")


@contextlib.contextmanager
def staging(output):
  """Yields a temporary folder beside `output`; on success its files move into `output` (each
  with os.replace, after which the temporary folder is removed), on an error it is removed and
  `output` is untouched. `output` is created if missing (re-checked empty first)."""
  check_output(output)
  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(os.path.abspath(output)) + ".",
                         suffix=".tmp")
  try:
    yield tmp
    check_output(output)
    if not os.path.exists(output):
      os.replace(tmp, output)  # one rename: the whole folder appears at once
      os.chmod(output, 0o777 & ~files.umask())
      return
    for name in os.listdir(tmp):  # an empty folder the user made: move the files in
      os.replace(os.path.join(tmp, name), os.path.join(output, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def restore_model(model, overrides=None):
  """(branches variables, prn variables, branches config, prn config, inference config) of a model
  path, restored like `Predictor.load` (the configs saved in the checkpoints)."""
  check_model_path(model)
  from mpn_jax.inference import predictor  # pylint: disable=g-import-not-at-top
  branch_vars, bcfg = predictor.restore(model, "branches")
  prn_vars, pcfg = predictor.restore(model, "prn")
  icfg = predictor.inference_settings(pcfg, bcfg, overrides)
  return branch_vars, prn_vars, bcfg, pcfg, icfg


def preprocessing(size):
  """The manifest's description of the network input."""
  return {
      "layout": "NHWC float32 [B, S, S, 3], RGB",
      "size": int(size),
      "letterbox": "longest side scaled to S (PIL bilinear), the rest zero after normalisation, "
                   "at the bottom/right; scale = S / max(H, W); original pixels = input / scale",
      "mean_rgb_0_255": [float(v) for v in coco.IMAGENET_MEAN_RGB],
      "std_rgb_0_255": [float(v) for v in coco.IMAGENET_STD_RGB],
      "normalize": "(rgb_0_255 - mean) / std",
  }


def to_plain(value):
  """A ConfigDict / numpy value as plain JSON data."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, dict):
    return {str(k): to_plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_plain(v) for v in value]
  if hasattr(value, "item") and getattr(value, "shape", None) == ():
    return value.item()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return str(value)


def write_json(path, data):
  files.replace_atomically(path, lambda f: json.dump(data, f, indent=1), mode="t")


def folder_size(folder):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
