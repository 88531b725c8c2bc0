"""Anchors, box coding, IoU, anchor targets and NMS (mpn_jax.boxes)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpn_jax import boxes


def _random_boxes(rng, n, size=100.0, min_side=1.0):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(min_side, size / 2, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _iou_ref(a, b):
  """Brute-force IoU of two xyxy boxes in float64."""
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# Anchors.

def test_anchor_count_480():
  a = boxes.generate_anchors((480, 480))
  assert a.shape == (9 * (60 ** 2 + 30 ** 2 + 15 ** 2 + 8 ** 2 + 4 ** 2), 4)
  assert a.dtype == jnp.float32


@pytest.mark.parametrize("size", [(480, 480), (100, 37), (129, 257)])
def test_anchors_match_explicit_loops(size):
  """Order [level][y][x][ratio][scale], centres stride * (j + 0.5), h / w = ratio, area (s*size)^2."""
  got = np.asarray(boxes.generate_anchors(size))
  ref = []
  for l, base in zip((3, 4, 5, 6, 7), (32, 64, 128, 256, 512)):
    s = 2 ** l
    for i in range(math.ceil(size[0] / s)):
      for j in range(math.ceil(size[1] / s)):
        for r in (0.5, 1.0, 2.0):
          for sc in (1.0, 2 ** (1 / 3), 2 ** (2 / 3)):
            area = (base * sc) ** 2
            w = math.sqrt(area / r)
            h = w * r
            cx, cy = s * (j + 0.5), s * (i + 0.5)
            ref.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
  np.testing.assert_allclose(got, np.array(ref), rtol=1e-6, atol=1e-4)


def test_anchor_centres_and_sizes_480():
  a = np.asarray(boxes.generate_anchors((480, 480)))
  ctr = (a[:, :2] + a[:, 2:]) / 2
  # First P3 position: centre (4, 4); P3 position (row 1, col 2) is anchor block 1 * 60 + 2.
  np.testing.assert_allclose(ctr[:9], 4.0)
  np.testing.assert_allclose(ctr[9 * 62], [8 * 2.5, 8 * 1.5])
  # The P3 square anchor at scale 1 is 32 x 32.
  np.testing.assert_allclose(a[3], [-12, -12, 20, 20])
  # First P7 anchor (after 9 * (3600 + 900 + 225 + 64)) is centred at 64 with 512-sized square.
  p7 = 9 * (3600 + 900 + 225 + 64)
  np.testing.assert_allclose(ctr[p7], [64, 64])
  np.testing.assert_allclose(a[p7 + 3, 2] - a[p7 + 3, 0], 512, rtol=1e-6)


def test_anchors_reject_mismatched_levels():
  with pytest.raises(ValueError, match="sizes"):
    boxes.generate_anchors((64, 64), levels=(3, 4), sizes=(32,))


# ------------------------------------------------------------------------------------------------
# Coding and IoU.

def test_decode_inverts_encode():
  rng = np.random.default_rng(0)
  b = _random_boxes(rng, 200)
  a = _random_boxes(rng, 200, min_side=8.0)
  d = boxes.encode(b, a)
  np.testing.assert_allclose(np.asarray(boxes.decode(d, a)), b, rtol=1e-5, atol=1e-3)


def test_encode_hand_values():
  anchor = np.array([[0, 0, 10, 20]], np.float32)
  box = np.array([[1, 2, 21, 22]], np.float32)  # centre (11, 12) vs (5, 10); size (20, 20) vs (10, 20)
  d = np.asarray(boxes.encode(box, anchor))[0]
  np.testing.assert_allclose(d, [0.6 / 0.1, 0.1 / 0.1, math.log(2) / 0.2, 0.0], rtol=1e-5)


def test_decode_clamps_size():
  anchor = np.array([[0, 0, 16, 16]], np.float32)
  out = np.asarray(boxes.decode(np.array([[0, 0, 1e4, 1e4]], np.float32), anchor))[0]
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out[2] - out[0], 1000.0, rtol=1e-4)


def test_iou_against_bruteforce():
  rng = np.random.default_rng(1)
  a, b = _random_boxes(rng, 13), _random_boxes(rng, 7)
  got = np.asarray(boxes.iou(a, b))
  ref = np.array([[_iou_ref(x, y) for y in b] for x in a])
  np.testing.assert_allclose(got, ref, atol=1e-6)
  np.testing.assert_allclose(np.asarray(boxes.iou(np.array([[0, 0, 2, 2]], np.float32),
                                                  np.array([[1, 1, 3, 3]], np.float32))),
                             [[1 / 7]], rtol=1e-6)


def test_flip_twice_is_identity():
  b = _random_boxes(np.random.default_rng(2), 5)
  once = np.asarray(boxes.flip_horizontal(b, 100.0))
  np.testing.assert_allclose(once[:, 0], 100 - b[:, 2])
  np.testing.assert_allclose(np.asarray(boxes.flip_horizontal(once, 100.0)), b, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Anchor targets.

ANCHORS_128 = boxes.generate_anchors((128, 128))


def test_targets_recover_gt_box_after_decoding():
  gt = np.array([[20, 10, 84, 106], [0, 0, 0, 0]], np.float32)
  labels = np.array([1, 0], np.int32)
  cls, deltas = boxes.anchor_targets(gt, labels, ANCHORS_128)
  cls = np.asarray(cls)
  pos = cls == 1
  assert pos.sum() >= 1
  dec = np.asarray(boxes.decode(deltas, ANCHORS_128))
  np.testing.assert_allclose(dec[pos], np.broadcast_to(gt[0], dec[pos].shape), atol=1e-3)
  ious = np.asarray(boxes.iou(ANCHORS_128, gt[:1]))[:, 0]
  # Thresholds: >= 0.5 positive, < 0.4 negative, in between ignored (except the forced best anchor).
  assert np.all(pos[ious >= 0.5])
  assert np.all(cls[ious < 0.4][~pos[ious < 0.4]] == 0)
  mid = (ious >= 0.4) & (ious < 0.5) & ~pos
  assert np.all(cls[mid] == -1)
  np.testing.assert_array_equal(np.asarray(deltas)[~pos], 0.0)


def test_small_box_gets_its_best_anchor():
  """A 10x10 person overlaps no anchor with IoU >= 0.4; its best anchor is still positive."""
  gt = np.array([[50, 50, 60, 60]], np.float32)
  cls, deltas = boxes.anchor_targets(gt, np.array([1], np.int32), ANCHORS_128)
  ious = np.asarray(boxes.iou(ANCHORS_128, gt))[:, 0]
  assert ious.max() < 0.4
  cls = np.asarray(cls)
  np.testing.assert_array_equal(np.nonzero(cls == 1)[0], np.nonzero(ious == ious.max())[0])
  dec = np.asarray(boxes.decode(deltas, ANCHORS_128))[cls == 1]
  np.testing.assert_allclose(dec, np.broadcast_to(gt[0], dec.shape), atol=1e-3)
  assert np.all(cls[cls != 1] == 0)


def test_crowd_and_padding():
  crowd = np.array([0, 0, 64, 64], np.float32)
  gt = np.stack([crowd, np.array([0, 0, 128, 128], np.float32)])
  # Padding box covering the whole image: must change nothing.
  cls_pad, _ = boxes.anchor_targets(gt, np.array([-1, 0], np.int32), ANCHORS_128)
  cls_pad = np.asarray(cls_pad)
  a = np.asarray(ANCHORS_128)
  inter = (np.clip(np.minimum(a[:, 2], 64) - np.maximum(a[:, 0], 0), 0, None) *
           np.clip(np.minimum(a[:, 3], 64) - np.maximum(a[:, 1], 0), 0, None))
  ioa = inter / ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))
  np.testing.assert_array_equal(cls_pad, np.where(ioa >= 0.5, -1, 0))
  assert (cls_pad == -1).sum() > 0 and (cls_pad == 0).sum() > 0
  # With only padding everything is negative.
  cls_none, d_none = boxes.anchor_targets(gt, np.array([0, 0], np.int32), ANCHORS_128)
  assert np.all(np.asarray(cls_none) == 0) and np.all(np.asarray(d_none) == 0)
  # A person inside the crowd keeps its positives.
  person = np.array([[8, 8, 40, 40]], np.float32)
  cls_p, _ = boxes.anchor_targets(np.concatenate([gt[:1], person]), np.array([-1, 1], np.int32),
                                  ANCHORS_128)
  ious = np.asarray(boxes.iou(ANCHORS_128, person))[:, 0]
  assert np.all(np.asarray(cls_p)[ious >= 0.5] == 1)


def test_targets_vmap_jit_and_empty():
  rng = np.random.default_rng(3)
  gt = np.stack([_random_boxes(rng, 4, size=100, min_side=10) for _ in range(3)])
  labels = np.array([[1, 1, 0, 0], [1, -1, 1, 0], [0, 0, 0, 0]], np.int32)
  fn = jax.jit(jax.vmap(boxes.anchor_targets, in_axes=(0, 0, None)))
  cls, deltas = fn(gt, labels, ANCHORS_128)
  assert cls.shape == (3, ANCHORS_128.shape[0]) and deltas.shape == (3, ANCHORS_128.shape[0], 4)
  for i in range(3):
    c1, d1 = boxes.anchor_targets(gt[i], labels[i], ANCHORS_128)
    np.testing.assert_array_equal(np.asarray(cls[i]), np.asarray(c1))
    np.testing.assert_allclose(np.asarray(deltas[i]), np.asarray(d1), atol=1e-5)
  assert np.all(np.isfinite(np.asarray(deltas)))
  c0, d0 = boxes.anchor_targets(np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), ANCHORS_128)
  assert np.all(np.asarray(c0) == 0) and d0.shape == (ANCHORS_128.shape[0], 4)


# ------------------------------------------------------------------------------------------------
# NMS.

def _nms_ref(b, s, thr, max_out):
  """Textbook greedy NMS in Python (float64)."""
  order = sorted([i for i in range(len(s)) if np.isfinite(s[i])], key=lambda i: -s[i])
  keep = []
  while order and len(keep) < max_out:
    i = order.pop(0)
    keep.append(i)
    order = [j for j in order if _iou_ref(b[i], b[j]) <= thr]
  return keep


@pytest.mark.parametrize("seed,thr,n,max_out", [(0, 0.5, 60, 10), (1, 0.3, 100, 100),
                                                 (2, 0.7, 40, 50), (3, 0.0, 30, 8)])
def test_nms_matches_greedy_reference(seed, thr, n, max_out):
  rng = np.random.default_rng(seed)
  b = _random_boxes(rng, n)
  s = rng.uniform(size=n).astype(np.float32)
  s[rng.uniform(size=n) < 0.2] = -np.inf  # below a score threshold
  keep, valid = jax.jit(boxes.nms, static_argnums=(2, 3))(b, s, thr, max_out)
  ref = _nms_ref(b.astype(np.float64), s, thr, max_out)
  keep, valid = np.asarray(keep), np.asarray(valid)
  assert keep.shape == (max_out,) and valid.shape == (max_out,)
  np.testing.assert_array_equal(keep[valid], ref)
  assert valid.sum() == len(ref) and not valid[len(ref):].any()


def test_nms_matches_tensorflow():
  tf = pytest.importorskip("tensorflow")
  rng = np.random.default_rng(5)
  b = _random_boxes(rng, 80)
  s = rng.uniform(size=80).astype(np.float32)
  ref = tf.image.non_max_suppression(b[:, [1, 0, 3, 2]], s, 15, iou_threshold=0.45).numpy()
  keep, valid = boxes.nms(b, s, 0.45, 15)
  np.testing.assert_array_equal(np.asarray(keep)[np.asarray(valid)], ref)


def test_nms_vmaps_over_batch():
  rng = np.random.default_rng(4)
  b = np.stack([_random_boxes(rng, 20) for _ in range(3)])
  s = rng.uniform(size=(3, 20)).astype(np.float32)
  keep, valid = jax.vmap(lambda x, y: boxes.nms(x, y, 0.5, 6))(b, s)
  for i in range(3):
    ref = _nms_ref(b[i].astype(np.float64), s[i], 0.5, 6)
    np.testing.assert_array_equal(np.asarray(keep[i])[np.asarray(valid[i])], ref)
