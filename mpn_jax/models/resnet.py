"""Bottleneck ResNet-50/101 backbone returning the C2..C5 feature maps (Flax Linen, NHWC).

Layer names follow torchvision (`conv1`, `bn1`, `layer1_0/conv1`, `layer1_0/downsample_0`, ...: a
torchvision key `layer1.0.downsample.0.weight` is the Flax path `layer1_0/downsample_0/kernel`), so
that `mpn_jax.weights` can import ImageNet checkpoints by name.

Two stride placements:
  'v1.5' (torchvision, default): the stride of a downsampling block sits on its 3x3 conv;
  'v1'   (the original paper, Keras applications, Caffe): the stride sits on the first 1x1 conv.
Weights have the same shapes in both, so a checkpoint must be used with the variant it was trained
with (the importer records it).

Padding is explicit and symmetric like torchvision/Keras (7x7: 3, 3x3: 1, max-pool: 1), so a side
of H gives ceil(H / 2^l) at level l (480 -> 240, 120, 60, 30, 15) and imported weights see exactly
the borders they were trained with (SAME padding would pad stride-2 convs asymmetrically).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpn_jax import errors

STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4  # bottleneck output channels = EXPANSION * inner width
VARIANTS = ("v1", "v1.5")

# torchvision initialises convs with kaiming_normal(mode='fan_out', nonlinearity='relu').
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def stage_sizes_for_depth(depth):
  """Blocks per stage for a bottleneck ResNet of `depth` (50, 101 or 152)."""
  sizes = STAGE_SIZES.get(depth)
  if sizes is None:
    raise errors.ConfigError(f"backbone depth {depth} is not a bottleneck ResNet; use 50, 101 or 152 "
                             "(or give backbone.stage_sizes explicitly)")
  return sizes


def max_pool_3x3_s2(x):
  """The stem's 3x3 / stride-2 max-pool (padding 1), [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C].

  The same values (and gradients, ties aside) as nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))),
  written as the maximum of 9 strided slices: XLA on CPUs differentiates a reduce-window max with
  index arrays (iota, a variadic reduce-window); in a training step of configs/branches.py:synthetic
  (128 px, batch 8, 2 cores) that took ~15-20 ms of ~240 ms, the slices' gradient ~7 ms.
  """
  _, h, w, _ = x.shape
  oh, ow = (h + 1) // 2, (w + 1) // 2
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out = None
  for dy in range(3):
    for dx in range(3):
      s = xp[:, dy:dy + 2 * oh - 1:2, dx:dx + 2 * ow - 1:2]
      out = s if out is None else jnp.maximum(out, s)
  return out


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 channels) residual block; [B, H, W, C] -> [B, H/s, W/s, 4 * features]."""
  features: int
  strides: int = 1
  variant: str = "v1.5"
  norm: Any = nn.BatchNorm
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    s1, s2 = (self.strides, 1) if self.variant == "v1" else (1, self.strides)
    y = conv(self.features, (1, 1), strides=s1, padding="VALID", name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = conv(self.features, (3, 3), strides=s2, padding=((1, 1), (1, 1)), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = conv(self.features * EXPANSION, (1, 1), padding="VALID", name="conv3")(y)
    # Zero-initialised bn3 scale: every block starts as the identity (Goyal et al. 2017), which keeps
    # activations bounded when training from scratch with frozen (identity) BatchNorm.
    last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = self.norm(name="bn3", scale_init=last_scale)(y)
    if x.shape[-1] != self.features * EXPANSION or self.strides != 1:
      x = conv(self.features * EXPANSION, (1, 1), strides=self.strides, padding="VALID",
               name="downsample_0")(x)
      x = self.norm(name="downsample_1")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Bottleneck ResNet trunk (no classifier).

  Attributes:
    stage_sizes: blocks per stage, (3, 4, 6, 3) for ResNet-50, (3, 4, 23, 3) for ResNet-101.
    width: inner width of the first stage (64); stage i has width * 2^i inner and 4x that out.
    variant: 'v1.5' (stride on the 3x3 conv, torchvision) or 'v1' (stride on the first 1x1, Keras).
    bn_epsilon: 1e-5 (torchvision) or 1.001e-5 (Keras applications).
    bn_momentum: running-average decay (torchvision's momentum 0.1 is 0.9 here).
    frozen_bn: BatchNorm always normalises with the running averages and never updates them, also
      when train=True (detection practice with small per-device batches). Scale/bias remain params:
      exclude them from the optimizer if they should stay fixed too.
    freeze_at: stop gradients below this point: 0 nothing, 1 the stem (conv1/bn1), k >= 2 the stem
      and layer1..layer(k-1) (5 = the whole backbone).
    zero_init_residual: initialise each block's last BN scale to 0 (only matters without
      pretrained weights).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  variant: str = "v1.5"
  bn_epsilon: float = 1e-5
  bn_momentum: float = 0.9
  frozen_bn: bool = True
  freeze_at: int = 0
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """[B, H, W, 3] images -> {'C2': [B, H/4, W/4, 4w], ..., 'C5': [B, H/32, W/32, 32w]} float32
    (BatchNorm's output; the convolutions compute in `dtype`)."""
    if self.variant not in VARIANTS:
      raise ValueError(f"backbone.variant must be one of {VARIANTS}, got {self.variant!r}")
    if not 0 <= self.freeze_at <= len(self.stage_sizes) + 1:
      raise ValueError(f"backbone.freeze_at must be in 0..{len(self.stage_sizes) + 1}, "
                       f"got {self.freeze_at}")
    # BatchNorm computes and returns float32 whatever the compute dtype, so the residual sums that
    # follow it are not rounded to bfloat16 at every block (the convolutions still compute in
    # `dtype`); that rounding costs keypoint AP (docs/experiments.md, 2026-12-03).
    norm = functools.partial(
        nn.BatchNorm, use_running_average=(not train) or self.frozen_bn,
        momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=jnp.float32,
        param_dtype=self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    x = nn.Conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False,
                kernel_init=conv_init, dtype=self.dtype, param_dtype=self.param_dtype,
                name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    x = max_pool_3x3_s2(x)
    if self.freeze_at >= 1:
      x = jax.lax.stop_gradient(x)
    features = {}
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = Bottleneck(self.width * 2**i, strides=2 if (i > 0 and j == 0) else 1,
                       variant=self.variant, norm=norm,
                       zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"layer{i + 1}_{j}")(x)
      if self.freeze_at >= i + 2:
        x = jax.lax.stop_gradient(x)
      features[f"C{i + 2}"] = x
    return features
