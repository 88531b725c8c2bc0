"""MultiPoseNet: one ResNet pass feeding the keypoint subnet and the RetinaNet person detector.

Configs (ml_collections) and builders:

  cfg = multiposenet_config()            # paper defaults: ResNet-50 v1.5, FPN 256, 128-ch subnet
  cfg = multiposenet_config("tiny")      # same architecture, a few channels: for tests / CPU smoke
  cfg.backbone.depth = 101               # any field can be overridden afterwards
  model = build_multiposenet(cfg)
  variables = model.init(rng, images, train=False)
  out, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])

  prn = build_prn(prn_config())          # the paper's residual MLP (1024 hidden, dropout 0.5)

Tiny variants only shrink widths / depths (backbone.width, backbone.stage_sizes, fpn channels,
subnet channels, PRN hidden sizes); the wiring, strides and output shapes are those of the paper.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mpn_jax import errors
from mpn_jax.configs.defaults import MODEL_SIZES
from mpn_jax.configs.defaults import multiposenet_config  # noqa: F401  (models.multiposenet_config)
from mpn_jax.configs.defaults import prn_config  # noqa: F401  (models.prn_config)
from mpn_jax.models import fpn
from mpn_jax.models import heads
from mpn_jax.models import prn as prn_lib
from mpn_jax.models import resnet

NUM_OUTPUTS = 18  # 17 keypoint heatmaps + 1 person mask
SIZES = MODEL_SIZES


def _dtype(name):
  try:
    return jnp.dtype(name)
  except TypeError as e:
    raise errors.ConfigError("model dtype/param_dtype must be e.g. 'float32' or 'bfloat16', "
                             f"got {name!r}") from e


class MultiPoseNet(nn.Module):
  """Backbone once, then keypoint FPN + subnet and detection FPN + RetinaNet head.

  __call__(images [B, H, W, 3] float32 ImageNet-normalised, train) -> dict of float32 arrays:
    'keypoints' [B, ceil(H/4), ceil(W/4), 18], 'keypoints_intermediate' 4 x [B, ceil(H/2^l), .., 18]
    (l = 2..5), 'cls_logits' [B, A, num_classes], 'box_deltas' [B, A, 4] (anchor order of
    mpn_jax.boxes.generate_anchors).

  The network cut at its output layers (`build_multiposenet(cfg, part=...)`, same parameters):
  part='features' maps images (inference) to the output layers' inputs, a dict of
  'keypoint_features' [B, ceil(H/4), ceil(W/4), fused_channels], 'cls_features' and 'box_features'
  (tuples over P3..P7 of [B, h_l, w_l, channels]), in the compute dtype; part='outputs' maps that
  dict to 'keypoints', 'cls_logits', 'box_deltas' float32 (no intermediate outputs). A runtime that
  computes in bfloat16 runs the first and leaves the output layers to float32.
  """
  backbone: resnet.ResNet
  keypoint_fpn: fpn.KeypointFPN
  keypoint_head: heads.KeypointHead
  detection_fpn: fpn.DetectionFPN
  retina_head: heads.RetinaHead
  part: str = "all"

  def __call__(self, images, train: bool = False):
    heads.check_part(self.part)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # losses in float32 whatever the compute dtype
    if self.part == "outputs":
      cls_logits, box_deltas = self.retina_head((images["cls_features"], images["box_features"]))
      return {"keypoints": f32(self.keypoint_head(images["keypoint_features"])),
              "cls_logits": f32(cls_logits), "box_deltas": f32(box_deltas)}
    feats = self.backbone(images, train=train)
    if self.part == "features":
      cls_features, box_features = self.retina_head(self.detection_fpn(feats))
      return {"keypoint_features": self.keypoint_head(self.keypoint_fpn(feats)),
              "cls_features": cls_features, "box_features": box_features}
    keypoints, intermediate = self.keypoint_head(self.keypoint_fpn(feats))
    cls_logits, box_deltas = self.retina_head(self.detection_fpn(feats))
    return {
        "keypoints": f32(keypoints),
        "keypoints_intermediate": [f32(x) for x in intermediate],
        "cls_logits": f32(cls_logits),
        "box_deltas": f32(box_deltas),
    }


def build_backbone(backbone_cfg, dtype="float32", param_dtype="float32"):
  """ResNet from a `multiposenet_config().backbone` ConfigDict."""
  b = backbone_cfg
  stage_sizes = tuple(b.stage_sizes) or resnet.stage_sizes_for_depth(b.depth)
  return resnet.ResNet(
      stage_sizes=stage_sizes, width=b.width, variant=b.variant, bn_epsilon=b.bn_epsilon,
      bn_momentum=b.bn_momentum, frozen_bn=b.frozen_bn, freeze_at=b.freeze_at,
      zero_init_residual=b.get("zero_init_residual", False),
      dtype=_dtype(dtype), param_dtype=_dtype(param_dtype))


def build_multiposenet(cfg, part="all"):
  """MultiPoseNet from `multiposenet_config()` (possibly overridden); `part`: 'all', or the
  network cut at its output layers ('features' / 'outputs', see MultiPoseNet)."""
  kw: dict[str, Any] = dict(dtype=_dtype(cfg.dtype), param_dtype=_dtype(cfg.param_dtype))
  kh, rh = cfg.keypoint_head, cfg.retina_head
  return MultiPoseNet(
      backbone=build_backbone(cfg.backbone, cfg.dtype, cfg.param_dtype),
      keypoint_fpn=fpn.KeypointFPN(channels=cfg.fpn_channels, **kw),
      keypoint_head=heads.KeypointHead(
          channels=kh.channels, fused_channels=kh.fused_channels, num_outputs=NUM_OUTPUTS,
          upsample=kh.upsample, intermediate_on=kh.intermediate_on,
          output_init=kh.get("output_init", "zeros"), part=part, **kw),
      detection_fpn=fpn.DetectionFPN(channels=cfg.fpn_channels,
                                     p6_input=cfg.detection_fpn.p6_input, **kw),
      retina_head=heads.RetinaHead(
          num_classes=rh.num_classes, num_anchors=rh.num_anchors, channels=rh.channels,
          num_convs=rh.num_convs, prior_prob=rh.prior_prob,
          norm=rh.get("norm", "none"), part=part, **kw),
      part=part)


def build_prn(cfg):
  """PoseResidualNet from `prn_config()` (possibly overridden)."""
  return prn_lib.PoseResidualNet(
      hidden_sizes=tuple(cfg.hidden_sizes), dropout_rate=cfg.dropout_rate,
      conv_dilations=tuple(cfg.conv_dilations), conv_channels=cfg.conv_channels,
      input_scale=cfg.get("input_scale", 1.0), dtype=_dtype(cfg.dtype), param_dtype=_dtype(cfg.param_dtype))
