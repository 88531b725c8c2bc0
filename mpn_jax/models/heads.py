"""Keypoint subnet (heatmaps + person mask at stride 4) and the RetinaNet person-detection head."""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mpn_jax import errors
from mpn_jax.models import fpn

# RetinaNet head convs: normal(std=0.01) weights, zero biases (Lin et al. 2017, Sec. 4.1).
head_init = nn.initializers.normal(0.01)
# Keypoint-subnet output convs (KeypointHead.output_init).
OUTPUT_INITS = {"zeros": nn.initializers.zeros, "fan_in": fpn.fpn_init}
# What a head computes (`part`): 'all' (training and inference), or the network cut at its output
# layers: 'features' (the output layers' inputs, inference only) and 'outputs' (the output layers
# applied to those features), with the same parameters as 'all'.
PARTS = ("all", "features", "outputs")
# RetinaHead.norm: what follows each subnet conv, before its ReLU.
HEAD_NORMS = ("none", "group")


def check_part(part):
  if part not in PARTS:
    raise errors.ConfigError(f"model part must be one of {PARTS}, got {part!r}")


def _conv3(features, name, dtype, param_dtype, kernel_init=fpn.fpn_init, bias_init=None):
  return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=kernel_init,
                 bias_init=bias_init or nn.initializers.zeros, dtype=dtype,
                 param_dtype=param_dtype, name=name)


class KeypointHead(nn.Module):
  """MultiPoseNet keypoint subnet.

  On each of P2..P5: two 3x3 convs of `channels` (ReLU, separate weights per level); the level's
  features are upsampled to stride 4 (`upsample`: 'nearest' by default, or 'bilinear') and
  concatenated (4 * channels = 512), then a 3x3 conv of `fused_channels` (256) + ReLU and a 1x1 conv
  to `num_outputs` (17 heatmaps + 1 person mask).

  Intermediate supervision: a 1x1 conv to `num_outputs` on each level at native resolution, applied
  to the FPN output P_l (`intermediate_on='fpn'`, default, as in public MultiPoseNet
  reimplementations) or to the level's subnet features ('subnet', so that loss also reaches the
  per-level convs).

  `output_init`: 'zeros' (default) starts every output conv (final and intermediate) at exactly 0,
  which is where almost every heatmap cell's target is: a network trained from scratch (whose FPN
  outputs are not normalised) otherwise starts with outputs, and an L2 loss, in the thousands and
  spends its first hundreds of steps undoing them. 'fan_in' is the FPN convs' initialiser.

  Returns (final [B, h2, w2, num_outputs], [4 x [B, h_l, w_l, num_outputs]] for l = 2..5) float32.
  With part='features': the fused features [B, h2, w2, fused_channels] (the final output conv's
  input; no intermediate outputs); part='outputs' takes those features and returns final.
  """
  channels: int = 128
  fused_channels: int = 256
  num_outputs: int = 18
  upsample: str = "nearest"
  intermediate_on: str = "fpn"
  output_init: str = "zeros"
  part: str = "all"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.intermediate_on not in ("subnet", "fpn"):
      raise errors.ConfigError("keypoint_head.intermediate_on must be 'subnet' or 'fpn', got "
                               f"{self.intermediate_on!r}")
    if self.output_init not in OUTPUT_INITS:
      raise errors.ConfigError(f"keypoint_head.output_init must be one of {tuple(OUTPUT_INITS)}, got "
                               f"{self.output_init!r}")
    check_part(self.part)
    out_init = OUTPUT_INITS[self.output_init]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Output layers compute in float32 whatever the compute dtype: heatmap peaks and their
    # sub-pixel refinement read small differences between neighbouring outputs.
    out_kw = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
    out = nn.Conv(self.num_outputs, (1, 1), kernel_init=out_init, name="out", **out_kw)
    if self.part == "outputs":
      return out(x)
    pyramid = x
    size = pyramid["P2"].shape[1:3]
    upsampled, intermediate = [], []
    for l in (2, 3, 4, 5):
      p = pyramid[f"P{l}"]
      d = nn.relu(_conv3(self.channels, f"level{l}_conv0", **kw)(p))
      d = nn.relu(_conv3(self.channels, f"level{l}_conv1", **kw)(d))
      if self.part == "all":
        src = d if self.intermediate_on == "subnet" else p
        intermediate.append(nn.Conv(self.num_outputs, (1, 1), kernel_init=out_init,
                                    name=f"level{l}_out", **out_kw)(src))
      upsampled.append(d if l == 2 else fpn.upsample(d, 2**(l - 2), size, self.upsample))
    x = jnp.concatenate(upsampled, axis=-1)
    x = nn.relu(_conv3(self.fused_channels, "fuse", **kw)(x))
    if self.part == "features":
      return x
    return out(x), intermediate


class RetinaHead(nn.Module):
  """RetinaNet classification and box subnets, shared across pyramid levels.

  Each subnet: `num_convs` x (3x3 conv `channels` + ReLU), then a 3x3 conv to A*K class logits
  (bias -log((1 - prior) / prior)) or A*4 box deltas. Levels are concatenated in the anchor order of
  docs/design.md: level by level, each flattened [h, w, A] row-major.

  `norm`: 'none' (the paper's and RetinaNet's head) or 'group': GroupNorm (32 groups, fewer when
  the channels need it) after each subnet conv, shared across levels as the convs are (detectron2's
  RETINANET.NORM='GN', FCOS). From scratch, the unnormalised pyramid levels differ in scale by
  10-100x (P7 the largest) and the shared ReLU convs die: after 2,700 steps of the learning check
  with 384 px windows every channel of the last box and class conv was dead (docs/experiments.md,
  2026-12-04).

  Returns (cls_logits [B, sum_l h_l w_l A, K], box_deltas [B, sum_l h_l w_l A, 4]) float32.
  With part='features': (cls features, box features), each a tuple over levels of
  [B, h_l, w_l, channels] (the output convs' inputs); part='outputs' takes that pair.
  """
  num_classes: int = 1
  num_anchors: int = 9
  channels: int = 256
  num_convs: int = 4
  prior_prob: float = 0.01
  norm: str = "none"
  levels: tuple = (3, 4, 5, 6, 7)
  part: str = "all"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    check_part(self.part)
    if self.norm not in HEAD_NORMS:
      raise errors.ConfigError(f"retina_head.norm must be one of {HEAD_NORMS}, got {self.norm!r}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=head_init)
    # Modules are created once and applied to every level: the weights are shared.
    cls_convs = [_conv3(self.channels, f"cls_conv{i}", **kw) for i in range(self.num_convs)]
    box_convs = [_conv3(self.channels, f"box_conv{i}", **kw) for i in range(self.num_convs)]
    groups = math.gcd(32, self.channels)
    norms = {name: [nn.GroupNorm(num_groups=groups, dtype=self.dtype, param_dtype=self.param_dtype,
                                 name=f"{name}_norm{i}") if self.norm == "group" else (lambda y: y)
                    for i in range(self.num_convs)] for name in ("cls", "box")}
    prior_bias = -math.log((1.0 - self.prior_prob) / self.prior_prob)
    out_kw = dict(kw, dtype=jnp.float32)  # output layers in float32, as the keypoint head's
    cls_out = _conv3(self.num_anchors * self.num_classes, "cls_out",
                     bias_init=nn.initializers.constant(prior_bias), **out_kw)
    box_out = _conv3(self.num_anchors * 4, "box_out", **out_kw)
    if self.part == "outputs":
      cls_feats, box_feats = x
    else:
      cls_feats, box_feats = [], []
      for l in self.levels:
        c = b = x[f"P{l}"]
        for conv, norm in zip(cls_convs, norms["cls"]):
          c = nn.relu(norm(conv(c)))
        for conv, norm in zip(box_convs, norms["box"]):
          b = nn.relu(norm(conv(b)))
        cls_feats.append(c)
        box_feats.append(b)
      if self.part == "features":
        return tuple(cls_feats), tuple(box_feats)
    n = cls_feats[0].shape[0]
    # Channel a * K + k of cell (y, x) -> row (y * w + x) * A + a: [h, w, A] row-major.
    all_cls = [cls_out(c).reshape(n, -1, self.num_classes) for c in cls_feats]
    all_box = [box_out(b).reshape(n, -1, 4) for b in box_feats]
    return jnp.concatenate(all_cls, axis=1), jnp.concatenate(all_box, axis=1)
