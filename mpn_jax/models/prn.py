"""Pose Residual Network: per person box, picks per keypoint type the peaks that belong to it.

Input and output live on the PRN grid of `mpn_jax.prn_grid` (56 rows x 36 columns x 17 keypoints).
The paper's network is a residual MLP: flatten, Dense 1024 + ReLU, Dropout 0.5, Dense 56*36*17 +
ReLU, add the input, reshape; a softmax over the 56x36 positions of each channel gives, per keypoint
type, the distribution of where that person's keypoint is. With a scaled input (`input_scale`) the
output layer is linear (`output_relu`).
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpn_jax import errors
from mpn_jax import prn_grid


class PoseResidualNet(nn.Module):
  """[B, 56, 36, K] cropped heatmaps -> [B, 56, 36, K] float32 logits.

  Attributes:
    hidden_sizes: widths of the hidden Dense layers ((1024,) in the paper); () for no MLP.
    dropout_rate: dropout after each hidden layer (0.5); rng collection 'dropout' when train=True.
    conv_dilations: optional stack of 3x3 convs (ReLU) with these dilations applied to the grid
      before the MLP (e.g. (1, 2, 4)); with hidden_sizes=() a 1x1 conv to K + ReLU replaces the MLP.
      Default () = the paper's MLP only.
    conv_channels: width of those convs.
    input_scale: multiplies the input (and so the residual it adds to the logits). 1 is the paper;
      inputs peak at 1, so with 1 the residual alone cannot make a sharp softmax and the MLP must
      learn the whole peak (measured on COCO prn_val: x8 lowers the validation loss a lot).
    output_relu: the paper's ReLU on the MLP (or 1x1 conv) output before the residual is added.
      None (default) = the paper's ReLU when input_scale is 1, a linear output otherwise: with a
      scaled input the residual already puts a peak on every candidate, and an output that can
      only add to it learns by pushing the wrong candidates' cells below 0, where the ReLU stops
      their gradient. Measured on COCO prn_val (docs/experiments.md, x8, 256 hidden, 600
      steps): with the ReLU the training loss only goes 4.77 -> 4.64, linear -> 4.49 and +0.06 AP.
  """
  hidden_sizes: Sequence[int] = (1024,)
  dropout_rate: float = 0.5
  conv_dilations: Sequence[int] = ()
  conv_channels: int = 64
  input_scale: float = 1.0
  output_relu: Optional[bool] = None
  grid_shape: tuple = (prn_grid.GRID_H, prn_grid.GRID_W)
  num_keypoints: int = 17
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _output_relu(self):
    return self.input_scale == 1.0 if self.output_relu is None else bool(self.output_relu)

  @nn.compact
  def __call__(self, x, train: bool = False):
    expected = (*self.grid_shape, self.num_keypoints)
    if x.shape[1:] != expected:
      raise ValueError(f"PRN input must be [B, {', '.join(map(str, expected))}], got {x.shape}")
    if not self.hidden_sizes and not self.conv_dilations:
      raise errors.ConfigError("PRN needs hidden_sizes or conv_dilations (both are empty)")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    inputs = jnp.asarray(x, jnp.float32) * self.input_scale
    y = jnp.asarray(inputs, self.dtype)
    for i, d in enumerate(self.conv_dilations):
      y = nn.relu(nn.Conv(self.conv_channels, (3, 3), kernel_dilation=d, padding=((d, d), (d, d)),
                          name=f"conv{i}", **kw)(y))
    if self.hidden_sizes:
      y = y.reshape(y.shape[0], -1)
      dense_kw = dict(kw)
      if jnp.dtype(self.dtype).itemsize < 4:
        # bfloat16 / float16 products summed in float32 over the 34,272 inputs (as GPUs and TPUs
        # do natively); a bfloat16 sum of that many terms loses the small logit differences.
        dense_kw["dot_general"] = functools.partial(jax.lax.dot_general,
                                                    preferred_element_type=jnp.float32)
      for i, h in enumerate(self.hidden_sizes):
        y = nn.relu(nn.Dense(h, name=f"dense{i}", **dense_kw)(y))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
      size = self.grid_shape[0] * self.grid_shape[1] * self.num_keypoints
      y = nn.Dense(size, name="output", **dense_kw)(y).reshape(x.shape)
    else:
      y = nn.Conv(self.num_keypoints, (1, 1), name="output", **kw)(y)
    if self._output_relu():
      y = nn.relu(y)
    return y.astype(jnp.float32) + inputs


def prn_probabilities(logits):
  """Softmax over the H x W positions of each channel: [B, H, W, K] -> [B, H, W, K] float32."""
  b, h, w, k = logits.shape
  flat = jnp.asarray(logits, jnp.float32).reshape(b, h * w, k)
  return jax.nn.softmax(flat, axis=1).reshape(b, h, w, k)
