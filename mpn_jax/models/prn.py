"""Pose Residual Network: per person box, picks per keypoint type the peaks that belong to it.

Input and output live on the PRN grid of `mpn_jax.prn_grid` (56 rows x 36 columns x 17 keypoints).
The paper's network is a residual MLP: flatten, Dense 1024 + ReLU, Dropout 0.5, Dense 56*36*17 +
ReLU, add the input, reshape; a softmax over the 56x36 positions of each channel gives, per keypoint
type, the distribution of where that person's keypoint is.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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
  """
  hidden_sizes: Sequence[int] = (1024,)
  dropout_rate: float = 0.5
  conv_dilations: Sequence[int] = ()
  conv_channels: int = 64
  input_scale: float = 1.0
  grid_shape: tuple = (prn_grid.GRID_H, prn_grid.GRID_W)
  num_keypoints: int = 17
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    expected = (*self.grid_shape, self.num_keypoints)
    if x.shape[1:] != expected:
      raise ValueError(f"PRN input must be [B, {', '.join(map(str, expected))}], got {x.shape}")
    if not self.hidden_sizes and not self.conv_dilations:
      raise ValueError("PRN needs hidden_sizes or conv_dilations (both are empty)")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    inputs = jnp.asarray(x, jnp.float32) * self.input_scale
    y = jnp.asarray(inputs, self.dtype)
    for i, d in enumerate(self.conv_dilations):
      y = nn.relu(nn.Conv(self.conv_channels, (3, 3), kernel_dilation=d, padding=((d, d), (d, d)),
                          name=f"conv{i}", **kw)(y))
    if self.hidden_sizes:
      y = y.reshape(y.shape[0], -1)
      for i, h in enumerate(self.hidden_sizes):
        y = nn.relu(nn.Dense(h, name=f"dense{i}", **kw)(y))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
      size = self.grid_shape[0] * self.grid_shape[1] * self.num_keypoints
      y = nn.relu(nn.Dense(size, name="output", **kw)(y)).reshape(x.shape)
    else:
      y = nn.relu(nn.Conv(self.num_keypoints, (1, 1), name="output", **kw)(y))
    return y.astype(jnp.float32) + inputs


def prn_probabilities(logits):
  """Softmax over the H x W positions of each channel: [B, H, W, K] -> [B, H, W, K] float32."""
  b, h, w, k = logits.shape
  flat = jnp.asarray(logits, jnp.float32).reshape(b, h * w, k)
  return jax.nn.softmax(flat, axis=1).reshape(b, h, w, k)
