"""MultiPoseNet networks (Flax Linen, NHWC): ResNet backbone, FPNs, keypoint and RetinaNet heads,
and the Pose Residual Network."""

from mpn_jax.models.fpn import DetectionFPN
from mpn_jax.models.fpn import KeypointFPN
from mpn_jax.models.heads import KeypointHead
from mpn_jax.models.heads import RetinaHead
from mpn_jax.models.multiposenet import build_backbone
from mpn_jax.models.multiposenet import build_multiposenet
from mpn_jax.models.multiposenet import build_prn
from mpn_jax.models.multiposenet import MultiPoseNet
from mpn_jax.models.multiposenet import multiposenet_config
from mpn_jax.models.multiposenet import NUM_OUTPUTS
from mpn_jax.models.multiposenet import prn_config
from mpn_jax.models.prn import PoseResidualNet
from mpn_jax.models.prn import prn_probabilities
from mpn_jax.models.resnet import ResNet
from mpn_jax.models.resnet import stage_sizes_for_depth
