"""The PyTorch peer the benchmark times (mpn_jax.peer): its size against torchvision's published
ResNet-50 count plus a hand count of the rest, its output shapes, and that the layouts and
precisions it is timed in compute the same function."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mpn_jax import peer  # pylint: disable=wrong-import-position

# torchvision.models.resnet50(): 25,557,032 parameters, of which the 1000-class fc is 2048*1000+1000.
RESNET50_WITHOUT_FC = 25_557_032 - (2048 * 1000 + 1000)


def _conv(cin, cout, k):
  return k * k * cin * cout + cout  # with bias


def test_full_size_matches_a_hand_count():
  fpn = 256
  people = (sum(_conv(c, fpn, 1) for c in (512, 1024, 2048)) + 3 * _conv(fpn, fpn, 3)
            + _conv(2048, fpn, 3) + _conv(fpn, fpn, 3))
  keypoint_fpn = sum(_conv(c, fpn, 1) for c in (256, 512, 1024, 2048)) + 3 * _conv(fpn, fpn, 3)
  keypoint_subnet = (4 * (_conv(fpn, 128, 3) + _conv(128, 128, 3)) + _conv(512, fpn, 3)
                     + _conv(fpn, 18, 1))
  heads = sum(4 * _conv(fpn, fpn, 3) + _conv(fpn, 9 * k, 3) for k in (4, 1))
  expected = RESNET50_WITHOUT_FC + people + keypoint_fpn + keypoint_subnet + heads
  assert peer.parameter_count(peer.PeerNetwork()) == expected
  n = 56 * 36 * 17
  assert peer.parameter_count(peer.PeerPrn()) == (n * 1024 + 1024) + (1024 * 1024 + 1024) + (
      1024 * n + n)


def _tiny():
  torch.manual_seed(0)
  return peer.PeerNetwork(stage_sizes=(1, 1, 1, 1), width=8, fpn=16, keypoint_width=8)


@pytest.mark.parametrize("size", [64, 96])
def test_outputs_have_the_shapes_of_the_heads(size):
  keypoints, deltas, scores = peer.make_runner(_tiny(), (2, 3, size, size), "fp32", False)()
  assert keypoints.shape == (2, 18, size // 4, size // 4)
  # P3-P7: strides 8 ... 128, each level ceil(previous / 2) cells a side, 9 anchors per cell.
  side, cells = size // 8, 0
  for _ in range(5):
    cells += side * side
    side = -(-side // 2)
  assert deltas.shape == (2, 9 * cells, 4) and scores.shape == (2, 9 * cells, 1)
  assert ((scores > 0) & (scores < 1)).all()


def test_channels_last_computes_the_same_network():
  nchw = peer.make_runner(_tiny(), (1, 3, 64, 64), "fp32", False)()
  last = peer.make_runner(_tiny(), (1, 3, 64, 64), "fp32", True)()
  for a, b in zip(nchw, last):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_prn_is_a_distribution_over_the_grid_and_bf16_stays_close():
  torch.manual_seed(0)
  prn = peer.PeerPrn(hidden=32)
  (fp32,) = peer.make_runner(prn, (3, *peer.GRID), "fp32", False)()
  (bf16,) = peer.make_runner(prn, (3, *peer.GRID), "bf16", False)()
  assert fp32.shape == (3, *peer.GRID)
  np.testing.assert_allclose(fp32.reshape(3, -1).sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(bf16.reshape(3, -1).sum(1), 1.0, rtol=2e-2)
  assert np.abs(bf16 - fp32).max() < 0.05 * fp32.max()


def test_a_channels_last_runner_leaves_the_module_as_it_was():
  net = _tiny()
  nchw = peer.make_runner(net, (1, 3, 64, 64), "fp32", False)
  peer.make_runner(net, (1, 3, 64, 64), "fp32", True)
  assert all(p.is_contiguous() for p in net.parameters())  # still NCHW for the first runner
  assert nchw()[0].shape == (1, 18, 16, 16)
