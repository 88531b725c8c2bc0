"""The PyTorch peer, rebuilt for timing side by side: `python -m mpn_jax.benchmark --parts=peer`.

The peer is LiMeng95/MultiPoseNet.pytorch (the most used PyTorch MultiPoseNet), inference network
as its `network/posenet.py` defines it (read there, written anew here; random weights, since only
speed is measured):
  - ResNet-50 (v1.5, stride on the 3x3), BatchNorm in eval mode;
  - one FPN for keypoints: 1x1 laterals on C2-C5, nearest-neighbour top-down sums, 3x3 smoothing
    on P2-P4 (256 channels);
  - one FPN for people: P3-P5 the same way (3x3 after each sum, and on P5), P6 a stride-2 3x3 on
    C5, P7 a stride-2 3x3 on relu(P6);
  - keypoint subnet: per level two 3x3 convolutions to 128 channels (no activation between them),
    nearest upsampling of P3-P5 to stride 4, concatenation (512), 3x3 to 256 + ReLU, 1x1 to 18
    (17 heatmaps + the person mask);
  - RetinaNet heads shared over P3-P7: four 3x3 convolutions of 256 + ReLU, then 9 x 4 box deltas
    and 9 x 1 sigmoid scores;
  - the PRN: flatten 56x36x17 -> 1024 -> 1024 -> 56x36x17 (ReLU), plus the input, softmax.
Network-only timing (as the peer's figures are quoted): images in, the heads' outputs out; anchor
decoding and NMS are not part of it.

Needs PyTorch (`pip install -e ".[peer]"`); imported by the benchmark only when asked for.
"""

import copy

import torch
from torch import nn
import torch.nn.functional as F

from mpn_jax import coco
from mpn_jax import prn_grid

GRID = (prn_grid.GRID_H, prn_grid.GRID_W, coco.NUM_KEYPOINTS)  # the PRN's input


class Bottleneck(nn.Module):
  """ResNet v1.5 bottleneck: 1x1, 3x3 (stride), 1x1 x4, BatchNorm after each, projection shortcut
  where the shape changes."""

  def __init__(self, cin, width, stride):
    super().__init__()
    cout = 4 * width
    self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(cout)
    self.shortcut = None
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def _stage(cin, width, blocks, stride):
  layers = [Bottleneck(cin, width, stride)]
  layers += [Bottleneck(4 * width, width, 1) for _ in range(blocks - 1)]
  return nn.Sequential(*layers)


def _up_add(top, lateral):
  return F.interpolate(top, size=lateral.shape[-2:], mode="nearest") + lateral


def _conv3(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 3, stride, 1)


class RetinaHead(nn.Module):
  """Four 3x3 convolutions + ReLU, then `outputs` channels per anchor ([B, H*W*A, outputs])."""

  def __init__(self, outputs, anchors=9, width=256):
    super().__init__()
    self.tower = nn.Sequential(*[m for _ in range(4) for m in (_conv3(width, width), nn.ReLU())])
    self.out = _conv3(width, anchors * outputs)
    self.outputs = outputs

  def forward(self, x):
    y = self.out(self.tower(x)).permute(0, 2, 3, 1)
    return y.reshape(y.shape[0], -1, self.outputs)


class PeerNetwork(nn.Module):
  """Images [B, 3, S, S] float32 -> (keypoints [B, 18, S/4, S/4], box deltas [B, N, 4],
  person scores [B, N, 1]) with N = 9 * sum over P3-P7 of (S / 2^l)^2."""

  def __init__(self, stage_sizes=(3, 4, 6, 3), width=64, fpn=256, keypoint_width=128):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    cin, stages = width, []
    for i, blocks in enumerate(stage_sizes):
      stages.append(_stage(cin, width * 2**i, blocks, 1 if i == 0 else 2))
      cin = 4 * width * 2**i
    self.stages = nn.ModuleList(stages)
    c2, c3, c4, c5 = (4 * width * 2**i for i in range(4))
    # People: P3-P7.
    self.p_lateral = nn.ModuleList([nn.Conv2d(c, fpn, 1) for c in (c3, c4, c5)])
    self.p_smooth = nn.ModuleList([_conv3(fpn, fpn) for _ in range(3)])
    self.p6 = _conv3(c5, fpn, 2)
    self.p7 = _conv3(fpn, fpn, 2)
    # Keypoints: P2-P5.
    self.k_lateral = nn.ModuleList([nn.Conv2d(c, fpn, 1) for c in (c2, c3, c4, c5)])
    self.k_smooth = nn.ModuleList([_conv3(fpn, fpn) for _ in range(3)])
    self.d_first = nn.ModuleList([_conv3(fpn, keypoint_width) for _ in range(4)])
    self.d_second = nn.ModuleList([_conv3(keypoint_width, keypoint_width) for _ in range(4)])
    self.fuse = _conv3(4 * keypoint_width, fpn)
    self.keypoints = nn.Conv2d(fpn, 18, 1)
    self.boxes = RetinaHead(4, width=fpn)
    self.scores = RetinaHead(1, width=fpn)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    c = []
    for stage in self.stages:
      x = stage(x)
      c.append(x)
    c2, c3, c4, c5 = c
    # People.
    p5 = self.p_lateral[2](c5)
    p4 = _up_add(p5, self.p_lateral[1](c4))
    p3 = _up_add(p4, self.p_lateral[0](c3))
    p3, p4, p5 = (s(p) for s, p in zip(self.p_smooth, (p3, p4, p5)))
    p6 = self.p6(c5)
    p7 = self.p7(F.relu(p6))
    # Keypoints.
    k5 = self.k_lateral[3](c5)
    k4 = _up_add(k5, self.k_lateral[2](c4))
    k3 = _up_add(k4, self.k_lateral[1](c3))
    k2 = _up_add(k3, self.k_lateral[0](c2))
    k2, k3, k4 = (s(k) for s, k in zip(self.k_smooth, (k2, k3, k4)))
    d = [second(first(k)) for first, second, k in
         zip(self.d_first, self.d_second, (k2, k3, k4, k5))]
    d = [d[0]] + [F.interpolate(t, scale_factor=2**i, mode="nearest")
                  for i, t in enumerate(d[1:], 1)]
    keypoints = self.keypoints(F.relu(self.fuse(torch.cat(d[::-1], 1))))
    levels = (p3, p4, p5, p6, p7)
    deltas = torch.cat([self.boxes(p) for p in levels], 1)
    scores = torch.sigmoid(torch.cat([self.scores(p) for p in levels], 1))
    return keypoints, deltas, scores


class PeerPrn(nn.Module):
  """The peer's PRN: crops [P, 56, 36, 17] -> per-person probabilities [P, 56, 36, 17] (softmax
  over the whole flattened grid, as the peer does)."""

  def __init__(self, hidden=1024, grid=GRID):
    super().__init__()
    n = grid[0] * grid[1] * grid[2]
    self.grid = grid
    self.dense1 = nn.Linear(n, hidden)
    self.bottleneck = nn.Linear(hidden, hidden)
    self.dense2 = nn.Linear(hidden, n)

  def forward(self, x):
    flat = x.reshape(x.shape[0], -1)
    y = F.relu(self.bottleneck(F.relu(self.dense1(flat))))
    y = F.relu(self.dense2(y)) + flat
    return torch.softmax(y, dim=1).reshape(x.shape[0], *self.grid)


def cpu_has_bf16():
  """Whether this CPU has bfloat16 instructions (AVX512_BF16 or AMX), as oneDNN uses them."""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((line for line in f if line.startswith("flags")), "").split()
  except OSError:
    return False
  return "avx512_bf16" in flags or "amx_bf16" in flags


def make_runner(module, shape, precision, channels_last, seed=0):
  """A no-argument callable running `module` in inference mode on a fixed random input of `shape`
  at `precision` ('fp32', or 'bf16': CPU autocast, as the peer would be served); returns numpy."""
  torch.manual_seed(seed)
  module = module.eval()
  x = torch.randn(*shape)
  if channels_last:
    # A copy: Module.to converts the parameters in place, and the NCHW runner keeps the original.
    module = copy.deepcopy(module).to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)

  def call():
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                enabled=precision == "bf16"):
      out = module(x)
    outs = out if isinstance(out, tuple) else (out,)
    return [o.float().numpy() for o in outs]
  return call


def parameter_count(module):
  return sum(p.numel() for p in module.parameters())
