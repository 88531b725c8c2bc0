"""Feature pyramids: the keypoint FPN (C2..C5 -> P2..P5) and the detection FPN (C3..C5 -> P3..P7).

Level l has ceil(H / 2^l) rows (SAME-style geometry), so a coarse map upsampled x2 can be one cell
larger than the finer map (e.g. 8 -> 16 vs 15); `upsample` crops the excess at the bottom/right,
which keeps cell j of level l+1 aligned with cells 2j, 2j+1 of level l (cell centres s * (j + 0.5)).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpn_jax import errors

UPSAMPLE_METHODS = ("nearest", "bilinear")

# Detectron/torchvision FPN convs: kaiming_uniform(a=1), i.e. variance 1/fan_in.
fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def upsample(x, factor, size, method="nearest"):
  """Upsamples [B, h, w, C] by an integer `factor` and crops to `size` = (H, W) <= (h, w) * factor.

  'nearest' repeats each cell factor x factor times; 'bilinear' interpolates with half-pixel centres
  (jax.image.resize), which is the stride geometry: fine cell i lies at coarse (i + 0.5) / f - 0.5.
  """
  b, h, w, c = x.shape
  if size[0] > h * factor or size[1] > w * factor:
    raise ValueError(f"cannot upsample {(h, w)} x{factor} to {tuple(size)}")
  if method == "nearest":
    y = jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
  elif method == "bilinear":
    y = jax.image.resize(x, (b, h * factor, w * factor, c), "bilinear").astype(x.dtype)
  else:
    raise errors.ConfigError(f"upsample method must be one of {UPSAMPLE_METHODS}, got {method!r}")
  return y[:, :size[0], :size[1]]


def _conv(features, kernel, name, strides=1, dtype=jnp.float32, param_dtype=jnp.float32):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=strides, padding=((pad, pad), (pad, pad)),
                 kernel_init=fpn_init, dtype=dtype, param_dtype=param_dtype, name=name)


def top_down(feats, levels, channels, dtype, param_dtype):
  """Shared FPN top-down pathway: 1x1 laterals, x2 nearest upsample + add, 3x3 smoothing."""
  laterals = {l: _conv(channels, 1, f"lateral{l}", dtype=dtype, param_dtype=param_dtype)(
      feats[f"C{l}"]) for l in levels}
  merged = {levels[-1]: laterals[levels[-1]]}
  for l in reversed(levels[:-1]):
    merged[l] = laterals[l] + upsample(merged[l + 1], 2, laterals[l].shape[1:3])
  return {f"P{l}": _conv(channels, 3, f"smooth{l}", dtype=dtype, param_dtype=param_dtype)(
      merged[l]) for l in levels}


class KeypointFPN(nn.Module):
  """{'C2'..'C5'} -> {'P2'..'P5'}, each [B, ceil(H/2^l), ceil(W/2^l), channels]."""
  channels: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats):
    return top_down(feats, (2, 3, 4, 5), self.channels, self.dtype, self.param_dtype)


class DetectionFPN(nn.Module):
  """RetinaNet FPN: {'C3'..'C5'} -> {'P3'..'P7'}, each [B, ceil(H/2^l), ceil(W/2^l), channels].

  P6 is a stride-2 3x3 conv on C5 (`p6_input='C5'`, the RetinaNet paper) or on P5 ('P5',
  torchvision's LastLevelP6P7 default); P7 is a stride-2 3x3 conv on ReLU(P6).
  """
  channels: int = 256
  p6_input: str = "C5"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats):
    if self.p6_input not in ("C5", "P5"):
      raise errors.ConfigError(f"detection_fpn.p6_input must be 'C5' or 'P5', got {self.p6_input!r}")
    out = top_down(feats, (3, 4, 5), self.channels, self.dtype, self.param_dtype)
    src = feats["C5"] if self.p6_input == "C5" else out["P5"]
    out["P6"] = _conv(self.channels, 3, "p6", strides=2, dtype=self.dtype,
                      param_dtype=self.param_dtype)(src)
    out["P7"] = _conv(self.channels, 3, "p7", strides=2, dtype=self.dtype,
                      param_dtype=self.param_dtype)(nn.relu(out["P6"]))
    return out
