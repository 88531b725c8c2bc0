"""Exporting a trained model (a model path: branches/ and prn/) for serving (`export.py`).

  export_model(model, "stablehlo", out)   # the whole pipeline, jax.export + params.npz
  export_model(model, "onnx", out)        # the network, for ONNX Runtime / OpenVINO
  export_model(model, "saved_model", out) # the network, a TF SavedModel

Layer: above inference (it builds on `mpn_jax.inference`), beside evaluation. docs/export.md.
"""

import os

from mpn_jax.export import common

FORMATS = common.FORMATS
ExportError = common.ExportError


def export_model(model, fmt, output, assign_method=None, platforms=None, batch_size=None):
  """Exports the model folder `model` as `fmt` into the new or empty folder `output`.

  Returns: a one-line summary (what was written and its size).
  """
  if fmt not in FORMATS:
    raise ExportError(f"--format={fmt}: use one of {', '.join(FORMATS)}")
  common.check_model_path(model)
  common.check_output(output)
  if fmt == "stablehlo":
    from mpn_jax.export import stablehlo  # pylint: disable=g-import-not-at-top
    if assign_method is not None and assign_method not in stablehlo.DEVICE_METHODS:
      raise ExportError(f"--assign_method={assign_method}: use one of "
                        f"{', '.join(stablehlo.DEVICE_METHODS)}")
    stablehlo.export(model, output, assign_method=assign_method, platforms=platforms)
  elif fmt == "onnx":
    from mpn_jax.export import onnx as onnx_export  # pylint: disable=g-import-not-at-top
    onnx_export.export(model, output, batch_size=batch_size)
  else:
    from mpn_jax.export import saved_model  # pylint: disable=g-import-not-at-top
    saved_model.export(model, output)
  size = common.folder_size(output)
  names = ", ".join(sorted(os.listdir(output)))
  return f"exported {fmt} to {output} ({names}; {size / 1e6:.1f} MB)"
