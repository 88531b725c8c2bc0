"""Losses against hand-computed values and independent implementations (optax, TensorFlow)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpn_jax import losses


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("x,label", [(0.5, 1.0), (0.5, 0.0), (-3.0, 1.0), (4.0, 0.0)])
def test_focal_single_logit_by_hand(x, label):
  p = _sigmoid(x)
  p_t = p if label else 1 - p
  alpha_t = 0.25 if label else 0.75
  expected = -alpha_t * (1 - p_t) ** 2 * math.log(p_t)
  got = losses.focal_loss_terms(jnp.float32(x), jnp.float32(label), 0.25, 2.0)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_focal_matches_optax():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 50, 1)).astype(np.float32) * 4
  labels = (rng.random((3, 50, 1)) < 0.2).astype(np.float32)
  ours = losses.focal_loss_terms(logits, labels, alpha=0.25, gamma=2.0)
  ref = optax.sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


def test_focal_stable_for_large_logits():
  got = losses.focal_loss_terms(jnp.array([80.0, -80.0]), jnp.array([0.0, 1.0]))
  assert np.all(np.isfinite(got)) and np.all(np.asarray(got) > 0)


@pytest.mark.parametrize("beta", [0.11, 1 / 9, 1.0])
def test_smooth_l1_is_scaled_huber(beta):
  x = np.linspace(-2, 2, 41).astype(np.float32)
  np.testing.assert_allclose(losses.smooth_l1(x, beta), optax.huber_loss(x, delta=beta) / beta,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(losses.smooth_l1(jnp.float32(0.05), 0.11), 0.5 * 0.05**2 / 0.11,
                             rtol=1e-5)
  np.testing.assert_allclose(losses.smooth_l1(jnp.float32(-0.5), 0.11), 0.5 - 0.055, rtol=1e-5)


def test_detection_loss_by_hand():
  # 2 images x 3 anchors: image 0 has one positive, one negative, one ignored; image 1 one positive.
  logits = np.array([[[1.0], [-2.0], [5.0]], [[0.0], [3.0], [-1.0]]], np.float32)
  targets = np.array([[1, 0, -1], [0, 1, 0]], np.int32)
  deltas = np.zeros((2, 3, 4), np.float32)
  box_t = np.zeros((2, 3, 4), np.float32)
  box_t[0, 0] = [0.05, -0.5, 0.0, 2.0]   # positive: counts
  box_t[1, 1] = [0.0, 0.0, 0.2, 0.0]     # positive: counts
  box_t[0, 1] = [9.0, 9.0, 9.0, 9.0]     # negative: must not count
  beta = 0.11

  def fl(x, y):
    p = _sigmoid(x)
    p_t = p if y else 1 - p
    return -(0.25 if y else 0.75) * (1 - p_t) ** 2 * math.log(p_t)

  def sl1(v):
    return 0.5 * v * v / beta if abs(v) < beta else abs(v) - 0.5 * beta

  focal_sum = fl(1, 1) + fl(-2, 0) + fl(0, 0) + fl(3, 1) + fl(-1, 0)
  box_sum = sl1(0.05) + sl1(0.5) + sl1(2.0) + sl1(0.2)
  focal, box, npos = losses.detection_loss(logits, deltas, targets, box_t, beta=beta)
  assert float(npos) == 2
  np.testing.assert_allclose(focal, focal_sum / 2, rtol=1e-5)
  np.testing.assert_allclose(box, box_sum / 2, rtol=1e-5)


def test_detection_loss_without_positives_normalises_by_one():
  logits = np.full((1, 4, 1), -1.0, np.float32)
  targets = np.zeros((1, 4), np.int32)
  focal, box, npos = losses.detection_loss(logits, np.ones((1, 4, 4)), targets, np.zeros((1, 4, 4)))
  p = _sigmoid(-1.0)
  np.testing.assert_allclose(focal, 4 * 0.75 * p**2 * -math.log(1 - p), rtol=1e-5)
  assert float(box) == 0 and float(npos) == 0


def test_weighted_l2_by_hand():
  pred = np.zeros((2, 2, 2, 3), np.float32)
  target = np.zeros_like(pred)
  target[0, 0, 0] = [1.0, 0.5, 0.0]
  target[1, 1, 1] = [0.0, 0.0, 2.0]
  weights = np.ones((2, 2, 2, 1), np.float32)
  weights[1, 1, 1] = 0.0  # ignored region: its error must not count
  np.testing.assert_allclose(losses.weighted_l2(pred, target, weights), (1 + 0.25) / 8, rtol=1e-6)
  # peak_weight 4: the cell errors count 1 + 4 * target: 1 * (1 + 4) + 0.25 * (1 + 2) = 5.75.
  np.testing.assert_allclose(losses.weighted_l2(pred, target, weights, peak_weight=4.0),
                             (5.0 + 0.75) / 8, rtol=1e-6)
  # The weight follows the target, not the prediction: a false positive counts once.
  fp = np.zeros_like(pred)
  fp[0, 1, 1, 2] = 3.0
  np.testing.assert_allclose(losses.weighted_l2(fp, np.zeros_like(pred), weights, peak_weight=9.0),
                             9.0 / 8, rtol=1e-6)


def _ramp(n, stride):
  """x-coordinate of cell centres at `stride`, as an [1, n, n, 1] map (a linear function of x)."""
  x = stride * (np.arange(n) + 0.5)
  return np.broadcast_to(x[None, None, :, None], (1, n, n, 1)).astype(np.float32)


@pytest.mark.parametrize("image,level", [(64, 3), (64, 5), (100, 4), (100, 5)])
def test_upsample_keeps_cell_centre_convention(image, level):
  # A linear function of input x sampled at level-l cell centres, upsampled to stride 4, equals the
  # same function at stride-4 cell centres (away from the border, where bilinear clamps).
  n_level, n4 = -(-image // 2**level), image // 4
  up = losses.upsample_to(_ramp(n_level, 2**level), (n4, n4), 2**(level - 2))
  want = _ramp(n4, 4)
  f = 2**(level - 2)
  inner = slice(f, n4 - f)
  assert up.shape == (1, n4, n4, 1)
  np.testing.assert_allclose(up[:, inner, inner], want[:, inner, inner], rtol=1e-5)


def test_upsample_matches_tensorflow_bilinear():
  tf = pytest.importorskip("tensorflow")
  x = np.random.default_rng(1).normal(size=(2, 5, 5, 3)).astype(np.float32)
  ours = losses.upsample_to(x, (20, 20), 4)
  ref = tf.image.resize(x, (20, 20), method="bilinear").numpy()  # half-pixel centres
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_keypoint_loss_sums_final_and_intermediate():
  rng = np.random.default_rng(2)
  target = rng.random((1, 8, 8, 18)).astype(np.float32)
  weights = np.ones((1, 8, 8, 1), np.float32)
  final = np.zeros_like(target)
  inter = [np.zeros((1, 8 // 2**i, 8 // 2**i, 18), np.float32) for i in range(3)]
  total, parts = losses.keypoint_loss(final, inter, target, weights, intermediate_weight=0.5)
  per = np.sum(target**2) / 64
  np.testing.assert_allclose(parts["keypoint_final"], per, rtol=1e-5)
  np.testing.assert_allclose(parts["keypoint_intermediate"], 3 * per, rtol=1e-5)
  np.testing.assert_allclose(total, per + 0.5 * 3 * per, rtol=1e-5)


def test_prn_loss_by_hand_and_against_optax():
  b, h, w, k = 2, 4, 3, 5
  # Uniform logits: cross-entropy of any distribution is log(h*w).
  targets = np.zeros((b, h, w, k), np.float32)
  targets[:, 1, 2, :] = 1.0
  valid = np.ones((b, k), np.float32)
  np.testing.assert_allclose(losses.prn_loss(np.zeros((b, h, w, k)), targets, valid),
                             math.log(h * w), rtol=1e-6)
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(b, h, w, k)).astype(np.float32)
  t = rng.random((b, h, w, k)).astype(np.float32)
  t /= t.sum(axis=(1, 2), keepdims=True)
  valid = np.array([[1, 0, 1, 1, 0], [0, 0, 1, 0, 0]], np.float32)
  per = optax.softmax_cross_entropy(np.moveaxis(logits.reshape(b, h * w, k), 1, 2),
                                    np.moveaxis(t.reshape(b, h * w, k), 1, 2))  # [b, k]
  want = float(np.sum(per * valid) / valid.sum())
  np.testing.assert_allclose(losses.prn_loss(logits, t, valid), want, rtol=1e-5)
  # No valid channel at all: zero, not NaN.
  assert float(losses.prn_loss(logits, t, np.zeros((b, k)))) == 0.0


def test_losses_are_differentiable_and_jittable():
  logits = jnp.zeros((1, 6, 1))
  g = jax.jit(jax.grad(lambda l: losses.detection_loss(
      l, jnp.zeros((1, 6, 4)), jnp.array([[1, 0, 0, -1, 0, 0]]), jnp.zeros((1, 6, 4)))[0]))(logits)
  assert np.all(np.isfinite(g)) and float(g[0, 3, 0]) == 0.0  # ignored anchor gets no gradient
