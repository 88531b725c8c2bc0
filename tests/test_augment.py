"""Augmentation and targets on real COCO samples: geometry vs hand-computed values, invariants."""

import numpy as np
import pytest
from scipy import ndimage
import tensorflow as tf

from mpn_jax import coco
from mpn_jax import errors
from mpn_jax.configs import defaults
from mpn_jax.data import augment
from mpn_jax.data import coco_keypoints
from mpn_jax.data import pipeline
from mpn_jax.data import targets

S = 128
SIGMA = 1.5
IDENTITY = dict(scale=1.0, angle=0.0, translate=(0.0, 0.0), flip=False)
CASES = {
    "letterbox": {},
    "scale": dict(scale=1.4),
    "rotation": dict(angle=35.0),
    "translation": dict(translate=(0.15, -0.1)),
    "flip": dict(flip=True),
    "combined": dict(scale=0.8, angle=-25.0, translate=(-0.1, 0.05), flip=True),
}


def _params(case):
  return dict(IDENTITY, **CASES[case])


@pytest.fixture(scope="module")
def samples(coco_dir):
  """Two real train2017 examples: most labelled people, and one with a crowd region."""
  _, items = coco_keypoints.load_annotations(
      coco_dir / "annotations" / "person_keypoints_train2017_sample.json")
  by_people = max(items, key=lambda it: sum(a["num_keypoints"] > 0 for a in it[1]))
  crowd = next(it for it in items
               if any(a["iscrowd"] for a in it[1]) and any(a["num_keypoints"] for a in it[1]))
  make = lambda it: (pipeline.example_from_coco(it[0], it[1], coco_dir / "train2017"), it[1])
  return {"people": make(by_people), "crowd": make(crowd)}


def _tf(example):
  return tf.nest.map_structure(tf.convert_to_tensor, example)


def _bilinear(image, xy):
  """Samples [H, W, C] at continuous points [N, 2] (pixel centres at i + 0.5) in numpy."""
  x, y = xy[:, 0] - 0.5, xy[:, 1] - 0.5
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  g = lambda yy, xx: image[yy, xx]
  return ((1 - fy) * ((1 - fx) * g(y0, x0) + fx * g(y0, x0 + 1)) +
          fy * ((1 - fx) * g(y0 + 1, x0) + fx * g(y0 + 1, x0 + 1)))


def _iou(a, b):
  inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
  area = lambda x: np.prod(x[2:] - x[:2])
  return inter / (area(a) + area(b) - inter)


def test_affine_matrix_hand_computed():
  h, w = 100, 200  # letterbox scale 128 / 200 = 0.64, picture 64 x 128 in the top-left corner
  m = lambda **kw: augment.affine_matrix(h, w, S, **dict(IDENTITY, **kw))
  pts = lambda mat, p: augment.transform_points(np.asarray(p, np.float32), mat).numpy()
  np.testing.assert_allclose(pts(m(), [[0, 0], [200, 100], [50, 10]]),
                             [[0, 0], [128, 64], [32, 6.4]], atol=1e-4)
  # Flip mirrors the original first: x -> W - x.
  np.testing.assert_allclose(pts(m(flip=True), [[0, 0], [50, 10]]), [[128, 0], [96, 6.4]],
                             atol=1e-4)
  # Zoom about the picture centre (64, 32).
  np.testing.assert_allclose(pts(m(scale=2.0), [[0, 0], [100, 50]]), [[-64, -32], [64, 32]],
                             atol=1e-4)
  # 90 degrees counter-clockwise on screen: a point right of the centre moves above it.
  np.testing.assert_allclose(pts(m(angle=90.0), [[150, 50]]), [[64, 32 - 32]], atol=1e-4)
  np.testing.assert_allclose(pts(m(translate=(0.25, -0.5)), [[0, 0]]), [[32, -64]], atol=1e-4)


def test_sample_params_deterministic_and_in_range():
  aug = defaults.augment_config()
  draws = [augment.sample_params(tf.constant([3, i], tf.int64), aug) for i in range(64)]
  again = augment.sample_params(tf.constant([3, 5], tf.int64), aug)
  for k in again:
    np.testing.assert_array_equal(np.asarray(again[k]), np.asarray(draws[5][k]))
  scales = np.array([d["scale"] for d in draws])
  angles = np.array([d["angle"] for d in draws])
  flips = np.array([bool(d["flip"]) for d in draws])
  assert scales.min() >= aug.scale_min and scales.max() <= aug.scale_max
  assert np.abs(angles).max() <= aug.rotation and np.abs(angles).max() > aug.rotation / 2
  assert 0 < flips.sum() < len(flips)
  assert len(np.unique(scales)) == len(scales)


@pytest.mark.parametrize("case", list(CASES))
def test_image_warp_agrees_with_keypoints(samples, case):
  """Warp an image whose pixels hold their own coordinates: at each moved keypoint it reads the
  keypoint's original position. Checks the pixel path (inverse sampling, antialiased pre-resize)
  against the point path (forward matrix, flip permutation) independently."""
  example, _ = samples["people"]
  h, w = example["image"].shape[:2]
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
  field = dict(example, image=np.stack([xs, ys, np.zeros_like(xs)], -1))
  p = _params(case)
  matrix = augment.affine_matrix(h, w, S, **p)
  out = tf.nest.map_structure(np.asarray, augment.apply_affine(_tf(field), matrix, p["flip"],
                                                                (S, S)))
  src = example["people"]["keypoints"]
  if p["flip"]:
    src = src[:, coco.FLIP_PERM]
  vis = out["keypoints"][..., 2] > 0
  zoom = np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:2, :2])))
  # Away from the border, where bilinear sampling mixes in the zero padding.
  margin = 8.0 / zoom
  interior = ((src[..., 0] > margin) & (src[..., 0] < w - margin) & (src[..., 1] > margin) &
              (src[..., 1] < h - margin))
  xy_out = out["keypoints"][vis & interior][:, :2]
  assert len(xy_out) >= 10
  got = _bilinear(out["image"], xy_out)[:, :2]
  # One output pixel is 1 / zoom original pixels; ask for 2% of that.
  np.testing.assert_allclose(got, src[vis & interior][:, :2], atol=0.02 / zoom)
  # Labelled keypoints that stay on the canvas keep their visibility flag; the rest become 0.
  xy_all = augment.transform_points(example["people"]["keypoints"][..., :2], matrix).numpy()
  on = np.all((xy_all >= 0) & (xy_all < S), -1) & (example["people"]["keypoints"][..., 2] > 0)
  if p["flip"]:
    on = on[:, coco.FLIP_PERM]
  np.testing.assert_array_equal(vis, on)


@pytest.mark.parametrize("case", list(CASES))
def test_heatmap_peaks_at_keypoints(samples, case):
  example, _ = samples["people"]
  aug = augment.augment_example(_tf(example), S, _params(case))
  t = tf.nest.map_structure(np.asarray, targets.make_targets(aug, SIGMA, 50, 20))
  hm = t["heatmaps"]
  assert hm.shape == (S // 4, S // 4, 17) and hm.max() <= 1.0
  kps = np.asarray(aug["keypoints"])
  checked = 0
  for p, person in enumerate(kps):
    for k, (x, y, v) in enumerate(person):
      others = np.delete(kps[:, k], p, axis=0)
      others = others[others[:, 2] > 0]
      if v <= 0 or np.any(np.hypot(*(others[:, :2] - [x, y]).T) < 4 * 3 * SIGMA):
        continue  # the max over people may let a close neighbour's peak win; skip those
      u, vv = x / 4, y / 4  # heatmap coordinates, cell j centred at j + 0.5
      j0, i0 = int(u), int(vv)
      lo_i, lo_j = max(i0 - 2, 0), max(j0 - 2, 0)
      win = hm[lo_i:i0 + 3, lo_j:j0 + 3, k]
      i, j = np.unravel_index(np.argmax(win), win.shape)
      assert abs(lo_j + j + 0.5 - u) <= 1.0 and abs(lo_i + i + 0.5 - vv) <= 1.0, (k, x, y)
      # The Gaussian is centred on the keypoint, so the peak cell holds at least the value half a
      # cell diagonal away from it.
      assert win.max() >= np.exp(-0.5 / (2 * SIGMA**2)) - 1e-5
      checked += 1
  assert checked >= 10
  # Away from every keypoint the maps are ~0.
  far = np.ones(hm.shape[:2], bool)
  for x, y, v in kps.reshape(-1, 3):
    if v > 0:
      yy, xx = np.mgrid[0:S // 4, 0:S // 4] + 0.5
      far &= (xx - x / 4)**2 + (yy - y / 4)**2 > (4 * SIGMA)**2
  assert hm.max(-1)[far].max(initial=0) < 1e-3


def test_heatmap_subpixel_centre():
  """A lone keypoint's sampled Gaussian has its centroid at x / 4 (not at a snapped cell)."""
  kp = np.zeros((1, 17, 3), np.float32)
  kp[0, 3] = [45.3, 70.9, 2]
  hm = targets.gaussian_heatmaps(kp, (32, 32), SIGMA).numpy()
  assert hm[..., [c for c in range(17) if c != 3]].max() == 0
  m = hm[..., 3]
  yy, xx = np.mgrid[0:32, 0:32] + 0.5
  np.testing.assert_allclose([(m * xx).sum() / m.sum(), (m * yy).sum() / m.sum()],
                             [45.3 / 4, 70.9 / 4], atol=1e-3)
  # The value at a cell is the Gaussian of its distance to the keypoint.
  np.testing.assert_allclose(m[17, 11], np.exp(-((11.5 - 45.3 / 4)**2 + (17.5 - 70.9 / 4)**2) /
                                               (2 * SIGMA**2)), rtol=1e-5)


def test_flip_twice_is_identity(samples):
  example, _ = samples["crowd"]
  h, w = example["image"].shape[:2]
  m = augment.flip_matrix(w)
  once = augment.apply_affine(_tf(example), m, True, (h, w))
  to_example = lambda o: dict(
      image=o["image"], person_mask=o["person_mask"], ignore_mask=o["ignore_mask"],
      people=dict(bbox=tf.concat([o["boxes"][:, :2], o["boxes"][:, 2:] - o["boxes"][:, :2]], -1),
                  keypoints=o["keypoints"], iscrowd=o["iscrowd"]))
  twice = tf.nest.map_structure(np.asarray, augment.apply_affine(to_example(once), m, True, (h, w)))
  once = tf.nest.map_structure(np.asarray, once)
  # One flip, by hand: mirrored pixels, x -> W - x with left/right swapped, x1' = W - x2.
  np.testing.assert_allclose(once["image"], example["image"][:, ::-1], atol=1e-3)
  np.testing.assert_array_equal(once["ignore_mask"], example["ignore_mask"][:, ::-1])
  kp = example["people"]["keypoints"][:, coco.FLIP_PERM]
  lab = kp[..., 2] > 0
  np.testing.assert_allclose(once["keypoints"][lab][:, 0], w - kp[lab][:, 0], atol=1e-3)
  x, y, bw, bh = example["people"]["bbox"].T
  np.testing.assert_allclose(once["boxes"][:, 0], np.maximum(w - (x + bw), 0), atol=1e-3)
  np.testing.assert_allclose(once["boxes"][:, 2], np.minimum(w - x, w), atol=1e-3)
  # Twice: the identity on every field.
  np.testing.assert_allclose(twice["image"], example["image"], atol=1e-3)
  np.testing.assert_array_equal(twice["person_mask"], example["person_mask"])
  np.testing.assert_array_equal(twice["ignore_mask"], example["ignore_mask"])
  np.testing.assert_allclose(twice["keypoints"], example["people"]["keypoints"], atol=1e-3)
  np.testing.assert_allclose(
      twice["boxes"], np.clip(np.stack([x, y, x + bw, y + bh], -1), 0, [w, h, w, h]), atol=1e-3)


@pytest.mark.parametrize("case", list(CASES))
def test_ignored_regions_have_zero_weight(samples, case):
  example, anns = samples["crowd"]
  p = _params(case)
  aug = augment.augment_example(_tf(example), S, p)
  t = tf.nest.map_structure(np.asarray, targets.make_targets(aug, SIGMA, 50, 20))
  weights = t["weights"][..., 0]
  assert set(np.unique(weights)) <= {0.0, 1.0}
  assert (t["box_labels"] == -1).sum() == sum(a["iscrowd"] for a in anns)
  # Independently of the warp: move original pixels with the matrix and look up their cell.
  # Pixels far enough inside an ignored region must land in weight-0 cells, pixels far enough from
  # any must land in weight-1 cells (a cell spans 4 input pixels; nearest sampling moves <= 1).
  ignore = example["ignore_mask"][..., 0] > 0
  matrix = np.asarray(aug["matrix"])
  zoom = np.sqrt(abs(np.linalg.det(matrix[:2, :2])))
  rng = np.random.default_rng(0)
  # An ignored pixel's output pixel copies a source within half an output pixel diagonal of it; a
  # kept pixel's cell holds sources up to a cell diagonal (4 sqrt 2 input pixels) further away.
  for region, expected, margin in ((ignore, 0.0, 1.0 / zoom), (~ignore, 1.0, 7.0 / zoom)):
    deep = ndimage.distance_transform_edt(region) > margin
    ys, xs = np.nonzero(deep)
    assert len(ys) > 0
    pick = rng.choice(len(ys), min(len(ys), 3000), replace=False)
    pts = np.stack([xs[pick], ys[pick]], -1) + 0.5
    out = pts @ matrix[:2, :2].T + matrix[:2, 2]
    cells = np.floor(out / 4).astype(int)
    on = np.all((cells >= 0) & (cells < S // 4), -1)
    assert on.sum() > 20
    np.testing.assert_array_equal(weights[cells[on, 1], cells[on, 0]], expected)


@pytest.mark.parametrize("case", list(CASES))
def test_boxes_follow_people(samples, case):
  example, anns = samples["people"]
  p = _params(case)
  h, w = example["image"].shape[:2]
  matrix = augment.affine_matrix(h, w, S, **p)
  out = tf.nest.map_structure(np.asarray, augment.apply_affine(_tf(example), matrix, p["flip"],
                                                                (S, S)))
  m = np.asarray(matrix)
  x, y, bw, bh = example["people"]["bbox"].T
  corners = np.stack([np.stack([x, y], -1), np.stack([x + bw, y], -1),
                      np.stack([x, y + bh], -1), np.stack([x + bw, y + bh], -1)], 1)
  moved = corners @ m[:2, :2].T + m[:2, 2]
  # The rule (augment.py): labelled keypoints always end up inside their person's box.
  kp = example["people"]["keypoints"]
  kp_xy = kp[..., :2] @ m[:2, :2].T + m[:2, 2]
  lab = (kp[..., 2] > 0)[..., None]
  lo = np.minimum(moved.min(1), np.where(lab, kp_xy, np.inf).min(1))
  hi = np.maximum(moved.max(1), np.where(lab, kp_xy, -np.inf).max(1))
  corner_box = np.clip(np.concatenate([lo, hi], -1), 0, S)
  boxes, valid = out["boxes"], out["box_valid"]
  assert valid.sum() >= 3
  kps = out["keypoints"]
  ious = []
  for i in np.nonzero(valid)[0]:
    vis = kps[i][kps[i, :, 2] > 0][:, :2]
    assert np.all(vis >= boxes[i, :2] - 1e-3) and np.all(vis <= boxes[i, 2:] + 1e-3)
    if p["angle"] == 0:
      # No rotation: the box is exactly the moved (clipped) COCO box (with its keypoints).
      np.testing.assert_allclose(boxes[i], corner_box[i], atol=1e-3)
    else:
      # Rotated: never looser than the moved corners, and still holding most of the person.
      assert np.all(boxes[i, :2] >= corner_box[i, :2] - 1e-3)
      assert np.all(boxes[i, 2:] <= corner_box[i, 2:] + 1e-3)
      seg = coco_keypoints.segmentation_mask(anns[i], h, w)
      ys, xs = np.nonzero(seg)
      pts = np.stack([xs, ys], -1) + 0.5
      pts = pts @ m[:2, :2].T + m[:2, 2]
      pts = pts[np.all((pts >= 0) & (pts < S), -1)]
      if len(pts) > 50:
        inside = np.all((pts >= boxes[i, :2] - 0.5) & (pts <= boxes[i, 2:] + 0.5), -1)
        assert inside.mean() > 0.8, (i, inside.mean())
        true = np.concatenate([pts.min(0), pts.max(0)])
        ious.append((_iou(boxes[i], true), _iou(corner_box[i], true)))
  if ious:
    # Tighter than the rotated corners: closer to the box of the rotated person itself.
    ours, corners_iou = np.mean(ious, 0)
    assert ours > corners_iou + 0.02, (ours, corners_iou)
  # Invalid boxes are those pushed (almost) off the canvas.
  side = np.minimum(corner_box[:, 2] - corner_box[:, 0], corner_box[:, 3] - corner_box[:, 1])
  assert np.all(side[~valid] < 2.0 + 1e-3)


def test_letterbox_padding_is_zero_and_matches_preprocess(samples):
  from mpn_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  example, _ = samples["people"]
  aug = augment.augment_example(_tf(example), S, None,
                                color_seed=tf.constant([1, 2], tf.int64))
  image = np.asarray(aug["image"])
  ref, scale = preprocess.letterbox(example["image"], S)
  h, w = example["image"].shape[:2]
  nh, nw = round(h * scale), round(w * scale)
  assert np.all(image[nh + 1:] == 0) and np.all(image[:, nw + 1:] == 0)
  # Without colour jitter the geometry-only warp reproduces preprocess.letterbox (PIL resize).
  plain = np.asarray(augment.augment_example(_tf(example), S)["image"])
  diff = np.abs(plain[:nh - 1, :nw - 1] - ref[:nh - 1, :nw - 1])
  assert diff.mean() < 0.05, diff.mean()
  # Colour jitter changed the colours but not the layout.
  assert np.abs(image[:nh - 1, :nw - 1] - plain[:nh - 1, :nw - 1]).mean() > 1e-3


def test_image_without_people(samples):
  """Negatives for the detector: no people gives zero heatmaps, padding boxes, full weights."""
  example, _ = samples["people"]
  empty = dict(example, people={k: v[:0] for k, v in example["people"].items()},
               person_mask=np.zeros_like(example["person_mask"]),
               ignore_mask=np.zeros_like(example["ignore_mask"]))
  aug = augment.augment_example(_tf(empty), S, _params("combined"))
  t = tf.nest.map_structure(np.asarray, targets.make_targets(aug, SIGMA, 5, 3))
  assert t["heatmaps"].shape == (S // 4, S // 4, 17) and t["heatmaps"].max() == 0
  assert t["boxes"].shape == (5, 4) and np.all(t["boxes"] == 0) and np.all(t["box_labels"] == 0)
  assert t["keypoints"].shape == (3, 17, 3) and np.all(t["keypoints"] == 0)
  assert np.all(t["weights"] == 1) and np.all(t["mask"] == 0)


@pytest.mark.parametrize("field,value", [("scale_min", 2.0), ("rotation", -5.0), ("flip", 1.5)])
def test_bad_augment_config_names_the_field(field, value):
  aug = defaults.augment_config()
  aug[field] = value
  with pytest.raises(ValueError, match=f"config.input.augment.{field}"):
    augment.sample_params(tf.constant([0, 0], tf.int64), aug)


@pytest.mark.parametrize("case", ["scale", "combined"])
def test_crop_is_the_centre_of_the_full_canvas(samples, case):
  # input.crop_size: the same warp, shifted so the C x C output is the centre of the S x S one.
  example, _ = samples["people"]
  c = 96
  o = (S - c) // 2
  full = tf.nest.map_structure(np.asarray, augment.augment_example(_tf(example), S, _params(case)))
  crop = tf.nest.map_structure(np.asarray,
                               augment.augment_example(_tf(example), S, _params(case), crop=c))
  assert crop["image"].shape == (c, c, 3)
  np.testing.assert_allclose(crop["image"], full["image"][o:o + c, o:o + c], atol=1e-4)
  np.testing.assert_array_equal(crop["person_mask"], full["person_mask"][o:o + c, o:o + c])
  np.testing.assert_array_equal(crop["ignore_mask"], full["ignore_mask"][o:o + c, o:o + c])
  # Keypoints inside the window move by -o; boxes move by -o and are clipped to the window.
  xy = full["keypoints"][..., :2] - o
  inside = (full["keypoints"][..., 2] > 0) & np.all((xy >= 0) & (xy < c), -1)
  assert inside.sum() >= 10
  np.testing.assert_allclose(crop["keypoints"][..., :2][inside], xy[inside], atol=1e-3)
  both = crop["box_valid"] & full["box_valid"]
  assert both.sum() >= 2
  np.testing.assert_allclose(crop["boxes"][both], np.clip(full["boxes"][both] - o, 0, c), atol=1e-3)
  with pytest.raises(ValueError, match="crop_size"):
    augment.augment_example(_tf(example), S, _params(case), crop=S + 4)


@pytest.mark.parametrize("crop", [90, 132, -8])
def test_bad_crop_size_names_the_field(crop):
  cfg = pipeline.input_config()
  cfg.size, cfg.crop_size = 128, crop
  with pytest.raises(ValueError, match="config.input.crop_size"):
    pipeline.preprocess_train(None, None, cfg)


# ---------------------------------------------------------------------------------------------------
# Person-centred crops (config.input.augment.center = "person").

PERSON_SEEDS = (0, 1, 2, 3)


def _person_aug(**overrides):
  """The paper's ranges: rotation +-40, scale 0.8-1.2, flips half the time."""
  aug = defaults.augment_config()
  aug.update(dict(center="person", rotation=40.0, scale_min=0.8, scale_max=1.2, flip=0.5))
  aug.update(overrides)
  return aug


@pytest.fixture(scope="module")
def person_samples(samples, coco_dir):
  """Three real examples: many labelled people, a crowd region, a single person."""
  _, items = coco_keypoints.load_annotations(
      coco_dir / "annotations" / "person_keypoints_train2017_sample.json")
  single = next(it for it in items if len(it[1]) == 1 and it[1][0]["num_keypoints"] > 5)
  return [samples["people"][0], samples["crowd"][0],
          pipeline.example_from_coco(single[0], single[1], coco_dir / "train2017")]


def _eligible(people):
  """Indices a person-centred crop may pick (the rule written out in numpy)."""
  crowd = np.asarray(people["iscrowd"], bool)
  labelled = ~crowd & (np.asarray(people["keypoints"])[..., 2] > 0).any(-1)
  return set(np.nonzero(labelled if labelled.any() else ~crowd)[0].tolist())


def _name_flip_perm():
  """Left/right swap from the keypoint names, independent of coco.FLIP_PERM."""
  names = list(coco.KEYPOINT_NAMES)
  swap = lambda n: ("right_" + n[5:] if n.startswith("left_") else
                    "left_" + n[6:] if n.startswith("right_") else n)
  return np.array([names.index(swap(n)) for n in names])


def _np_person_matrix(h, w, size, box, p, person_height, max_zoom):
  """M = T(S/2 + t S) R(angle) Z(zoom * scale) T(-F c) F in numpy (augment.py's docstring)."""
  flip = np.array([[-1.0, 0, w], [0, 1, 0], [0, 0, 1]]) if p["flip"] else np.eye(3)
  c = flip @ [box[0] + box[2] / 2, box[1] + box[3] / 2, 1.0]
  zoom = min(person_height * size / box[3], max_zoom * size / max(h, w)) * p["scale"]
  a = np.deg2rad(p["angle"])
  # Counter-clockwise on screen with y pointing down.
  rot = np.array([[np.cos(a), np.sin(a), 0], [-np.sin(a), np.cos(a), 0], [0, 0, 1]])
  shift = lambda t: np.array([[1.0, 0, t[0]], [0, 1, t[1]], [0, 0, 1]])
  dst = size / 2 + np.asarray(p["translate"]) * size
  return shift(dst) @ rot @ np.diag([zoom, zoom, 1.0]) @ shift(-c[:2]) @ flip


@pytest.mark.parametrize("seed", PERSON_SEEDS)
def test_person_crop_keypoints_on_heatmap_peaks(person_samples, seed):
  """Every labelled keypoint that stays on the canvas is its own channel's peak after the
  person-centred warp, at positions computed here in numpy from the sampled parameters."""
  aug = _person_aug()
  perm = _name_flip_perm()
  checked, flips = 0, set()
  for e, example in enumerate(person_samples):
    h, w = example["image"].shape[:2]
    people = example["people"]
    p = tf.nest.map_structure(np.asarray, augment.sample_params(
        tf.constant([seed, e], tf.int64), aug, _tf(people)))
    assert int(p["person"]) in _eligible(people)
    box = people["bbox"][int(p["person"])]
    np.testing.assert_array_equal(p["box"], box)
    flips.add(bool(p["flip"]))
    out = augment.augment_example(_tf(example), S, p)
    t = tf.nest.map_structure(np.asarray, targets.make_targets(out, SIGMA, 50, 20))
    # The chosen person's box centre lands at the canvas centre + shift (flipped or not: the
    # matrix mirrors the original picture first).
    centre = np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])
    matrix = np.asarray(out["matrix"])
    np.testing.assert_allclose(matrix[:2, :2] @ centre + matrix[:2, 2],
                               S / 2 + p["translate"] * S, atol=1e-3)
    # Expected keypoints: original ones through the numpy matrix, flipped ones change sides.
    m = _np_person_matrix(h, w, S, box.astype(np.float64), p, aug.person_height, aug.max_zoom)
    kp = people["keypoints"].astype(np.float64)
    xy = kp[..., :2] @ m[:2, :2].T + m[:2, 2]
    on = (kp[..., 2] > 0) & np.all((xy >= 0) & (xy < S), -1)
    if p["flip"]:
      xy, on = xy[:, perm], on[:, perm]
    got = np.asarray(out["keypoints"])
    np.testing.assert_array_equal(got[..., 2] > 0, on)
    np.testing.assert_allclose(got[..., :2][on], xy[on], atol=2e-3)
    hm = t["heatmaps"]
    padded = np.pad(hm, [(1, 1), (1, 1), (0, 0)], constant_values=-1.0)
    for i_p, k in zip(*np.nonzero(on)):
      x, y = xy[i_p, k]
      rest = on[:, k].copy()
      rest[i_p] = False
      if np.any(np.hypot(*(xy[rest, k] - [x, y]).T) < 4 * 3 * SIGMA):
        continue  # the max over people lets a close neighbour's peak merge with this one
      u, v = x / 4, y / 4  # heatmap coordinates, cell j centred at j + 0.5
      lo_i, lo_j = max(int(v) - 2, 0), max(int(u) - 2, 0)
      win = hm[lo_i:int(v) + 3, lo_j:int(u) + 3, k]
      i, j = np.unravel_index(np.argmax(win), win.shape)
      i, j = lo_i + i, lo_j + j
      assert abs(j + 0.5 - u) <= 1.0 and abs(i + 0.5 - v) <= 1.0, (e, i_p, k, x, y)
      # A local maximum of its own channel, as high as the value half a cell diagonal away.
      assert hm[i, j, k] >= padded[i:i + 3, j:j + 3, k].max() - 1e-6
      assert hm[i, j, k] >= np.exp(-0.5 / (2 * SIGMA**2)) - 1e-5
      checked += 1
  assert checked >= 10, checked
  if seed == PERSON_SEEDS[0]:
    assert flips == {True, False}, flips  # both sides of the flip are exercised


def test_person_height_after_warp(person_samples):
  """Without rotation, the chosen person's output box is person_height * S * scale tall, or
  max_zoom * letterbox * scale * box height where the cap applies."""
  aug = _person_aug(rotation=0.0)
  capped, free = 0, 0
  for e, example in enumerate(person_samples):
    h, w = example["image"].shape[:2]
    for seed in range(6):
      p = augment.sample_params(tf.constant([seed, e], tf.int64), aug, _tf(example["people"]))
      out = tf.nest.map_structure(np.asarray, augment.augment_example(_tf(example), S, p))
      i = int(p["person"])
      bh = example["people"]["bbox"][i, 3]
      scale = float(p["scale"])
      cap = aug.max_zoom * S / max(h, w)
      if aug.person_height * S / bh > cap:
        want = cap * bh * scale
        capped += 1
      else:
        want = aug.person_height * S * scale
        free += 1
      y1, y2 = out["boxes"][i, [1, 3]]
      if 0 < y1 and y2 < S:  # not clipped by the canvas
        # The box may grow to hold a keypoint outside COCO's box: allow a few pixels.
        assert want - 1e-2 <= y2 - y1 <= want + 3.0, (e, seed, y2 - y1, want)
      zoom = np.sqrt(abs(np.linalg.det(out["matrix"][:2, :2])))  # det < 0 when flipped
      np.testing.assert_allclose(zoom * bh, want, rtol=1e-4)
  assert capped and free, (capped, free)


def test_person_height_zero_keeps_the_letterbox_scale(person_samples):
  """person_height=0: centred on the person at the letterbox scale (times the random scale)."""
  aug = _person_aug(rotation=0.0)
  aug.person_height = 0.0
  for e, example in enumerate(person_samples):
    h, w = example["image"].shape[:2]
    p = augment.sample_params(tf.constant([3, e], tf.int64), aug, _tf(example["people"]))
    out = tf.nest.map_structure(np.asarray, augment.augment_example(_tf(example), S, p))
    zoom = np.sqrt(abs(np.linalg.det(out["matrix"][:2, :2])))
    np.testing.assert_allclose(zoom, S / max(h, w) * float(p["scale"]), rtol=1e-5)
    box = example["people"]["bbox"][int(p["person"])]
    centre = out["matrix"] @ np.array([box[0] + box[2] / 2, box[1] + box[3] / 2, 1.0])
    np.testing.assert_allclose(centre[:2], S / 2 + np.asarray(p["translate"]) * S, atol=1e-3)


def test_person_crop_deterministic(person_samples):
  example = person_samples[0]
  cfg = pipeline.input_config()
  cfg.size, cfg.heatmap_sigma, cfg.augment = S, SIGMA, _person_aug()
  seed = tf.constant([7, 3], tf.int64)
  a = tf.nest.map_structure(np.asarray, pipeline.preprocess_train(_tf(example), seed, cfg))
  b = tf.nest.map_structure(np.asarray, pipeline.preprocess_train(_tf(example), seed, cfg))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  # The same in a tf.data graph (the training pipeline).
  ds = pipeline.examples_dataset([example]).map(
      lambda ex: pipeline.preprocess_train(ex, seed, cfg))
  c = next(iter(ds.as_numpy_iterator()))
  for k in ("heatmaps", "boxes", "keypoints", "mask", "weights"):
    np.testing.assert_allclose(c[k], a[k], atol=1e-4)
  np.testing.assert_allclose(c["image"], a["image"], atol=1e-2)
  # The pick is a stateless draw over the eligible people; the other draws ignore `center`.
  people = _tf(example["people"])
  picks = [int(augment.sample_params(tf.constant([s, 0], tf.int64), cfg.augment, people)["person"])
           for s in range(40)]
  assert set(picks) <= _eligible(example["people"]) and len(set(picks)) > 2
  lb = augment.sample_params(tf.constant([5, 0], tf.int64), defaults.augment_config())
  pc = augment.sample_params(tf.constant([5, 0], tf.int64), _person_aug(scale_min=0.75,
                                                                        scale_max=1.25), people)
  for k in lb:
    np.testing.assert_array_equal(np.asarray(lb[k]), np.asarray(pc[k]))


def test_choose_person_preferences():
  kp = np.zeros((3, 17, 3), np.float32)
  kp[2, 5] = [10, 10, 2]
  people = lambda crowd, kp=kp: dict(bbox=np.tile(np.float32([[1, 2, 30, 40]]), (3, 1)),
                                     keypoints=kp, iscrowd=np.array(crowd))
  seeds = [tf.constant([s, 1], tf.int64) for s in range(20)]
  pick = lambda ppl: {int(augment.choose_person(s, ppl)[0]) for s in seeds}
  assert pick(people([False, False, False])) == {2}  # the only one with a labelled keypoint
  assert pick(people([False, False, True])) == {0, 1}  # labelled one is crowd: any non-crowd
  assert pick(people([True, True, True])) == {-1}


def test_person_crop_falls_back_to_letterbox(person_samples):
  """No person (or crowds only): the crop is the letterbox one with the same random draws."""
  example = person_samples[1]
  h, w = example["image"].shape[:2]
  for keep in (np.zeros(len(example["people"]["bbox"]), bool), example["people"]["iscrowd"]):
    ppl = {k: v[keep] for k, v in example["people"].items()}
    p = augment.sample_params(tf.constant([4, 2], tf.int64), _person_aug(), _tf(ppl))
    assert int(p["person"]) == -1
    geo = {k: p[k] for k in ("scale", "angle", "translate", "flip")}
    out = augment.augment_example(_tf(dict(example, people=ppl)), S, p)
    np.testing.assert_allclose(out["matrix"], augment.affine_matrix(h, w, S, **geo), atol=1e-5)
    t = tf.nest.map_structure(np.asarray, targets.make_targets(out, SIGMA, 5, 3))
    assert t["heatmaps"].max() == 0 and np.all(np.isfinite(t["image"]))
  # center="person" without the people to choose from is a programming error.
  with pytest.raises(ValueError, match="people"):
    augment.sample_params(tf.constant([0, 0], tf.int64), _person_aug())


@pytest.mark.parametrize("field,value", [("center", "middle"), ("person_height", float("nan")),
                                         ("person_height", 1.5), ("person_height", -0.3),
                                         ("max_zoom", 0.5), ("max_zoom", float("inf"))])
def test_bad_person_config_names_the_field(field, value):
  aug = _person_aug()
  aug[field] = value
  with pytest.raises(errors.ConfigError, match=f"config.input.augment.{field}"):
    augment.sample_params(tf.constant([0, 0], tf.int64), aug, {})


def _jitter_cfg(**kw):
  import ml_collections  # pylint: disable=g-import-not-at-top
  base = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_color_jitter_keeps_greys_and_is_identity_when_off():
  """Hue and saturation act on the chroma plane only: a grey image (r = g = b) keeps its values
  under any hue turn and saturation; all ranges 0 leave any image as it is."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  grey = np.repeat(rng.uniform(0, 255, (8, 8, 1)), 3, -1).astype(np.float32)
  for i in range(5):
    got = augment.color_jitter(tf.constant(grey), tf.constant([i, 7], tf.int64),
                               _jitter_cfg(saturation=0.5, hue=0.2)).numpy()
    np.testing.assert_allclose(got, grey, atol=1e-3)
  colour = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
  got = augment.color_jitter(tf.constant(colour), tf.constant([1, 2], tf.int64), _jitter_cfg())
  np.testing.assert_allclose(got.numpy(), colour, atol=1e-3)


def test_color_jitter_hue_turns_the_chroma_and_keeps_luma():
  """A hue turn rotates the (I, Q) chroma of a colour: its luma Y = 0.299 r + 0.587 g + 0.114 b and
  its chroma's length stay (a colour well inside the gamut, so nothing is clipped)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rgb = np.array([[[150.0, 100.0, 80.0]]], np.float32)
  to_yiq = np.array(augment._RGB_TO_YIQ)  # pylint: disable=protected-access
  yiq = to_yiq @ (rgb[0, 0] / 255.0)
  for i in range(20):
    out = augment.color_jitter(tf.constant(rgb), tf.constant([i, 3], tf.int64),
                               _jitter_cfg(hue=0.5)).numpy()[0, 0] / 255.0
    got = to_yiq @ out
    assert abs(got[0] - yiq[0]) < 1e-4  # luma kept
    assert abs(np.hypot(got[1], got[2]) - np.hypot(yiq[1], yiq[2])) < 1e-3  # chroma length kept


def _heatmaps_by_numpy(kp, hw, sigma):
  """The max over people of every labelled keypoint's Gaussian, by NumPy (float64)."""
  h, w = hw
  yy, xx = np.mgrid[0:h, 0:w] + 0.5
  out = np.zeros((h, w, 17))
  for person in kp:
    for k, (x, y, v) in enumerate(person):
      if v > 0:
        g = np.exp(-((xx - x / 4) ** 2 + (yy - y / 4) ** 2) / (2 * sigma ** 2))
        out[..., k] = np.maximum(out[..., k], g)
  return out


def test_heatmaps_of_people_near_and_far_outside_the_map():
  """People far outside the map (whose Gaussians underflow to 0) change nothing: the maps equal
  those of the people near it alone, bit for bit, and NumPy's within float32 rounding."""
  rng = np.random.default_rng(3)
  near = np.concatenate([rng.uniform(-20, 150, (4, 17, 2)), rng.integers(0, 3, (4, 17, 1))], -1)
  far = np.concatenate([rng.uniform(-20, 150, (3, 17, 2)), rng.integers(1, 3, (3, 17, 1))], -1)
  far[0, :, 0] += 400   # right of the map
  far[1, :, 1] -= 400   # above it
  far[2, :, :2] = [[-300, 900]] * 17
  near[0, 5] = [128 + 4 * 13, 60, 2]  # just outside, well within reach: counts
  kp = np.concatenate([near, far]).astype(np.float32)
  got = targets.gaussian_heatmaps(kp, (32, 32), SIGMA).numpy()
  np.testing.assert_array_equal(got, targets.gaussian_heatmaps(near.astype(np.float32), (32, 32),
                                                               SIGMA).numpy())
  np.testing.assert_allclose(got, _heatmaps_by_numpy(kp, (32, 32), SIGMA), atol=1e-6)
  assert got[..., 5].max() > 0  # the keypoint just outside still reaches into the map


def test_masks_warp_as_one_packed_channel_exactly(samples):
  """uint8 masks (packed into one channel for the warp) come out exactly as the same masks warped
  as two float32 channels, on real COCO masks and a rotated, scaled, mirrored crop."""
  example, _ = samples["crowd"]
  h, w = example["image"].shape[:2]
  m = augment.params_matrix(h, w, S, _params("combined"))
  pm, im = example["person_mask"], example["ignore_mask"]
  assert pm.dtype == np.uint8 and im.dtype == np.uint8 and im.any() and pm.any()
  warp_masks = augment._warp_masks  # pylint: disable=protected-access
  packed = warp_masks(tf.constant(pm), tf.constant(im), m, (S, S))
  apart = warp_masks(tf.constant(pm, tf.float32), tf.constant(im, tf.float32), m, (S, S))
  for a, b in zip(packed, apart):
    assert a.dtype == tf.float32
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert packed[0].numpy().any() and packed[1].numpy().any()


@pytest.mark.parametrize("zoom,size,regime", [(0.5, S, "shrunk"), (1.0, 480, "whole"),
                                              (6.0, S, "window")])
def test_reduced_source_warps_like_the_whole_image(samples, zoom, size, regime):
  """augment_example works on fewer source pixels when zooming out (shrunk first) or far in (cut
  to what the output samples): the image, with colour jitter but no clipping at play, and the
  masks are what the whole source gives when normalised, jittered and warped as it is."""
  example, _ = samples["people"]
  h, w = example["image"].shape[:2]
  p = dict(IDENTITY, scale=zoom * max(h, w) / size, angle=15.0, translate=(0.05, -0.05))
  m = augment.params_matrix(h, w, size, p)
  np.testing.assert_allclose(np.sqrt(abs(np.linalg.det(m.numpy()[:2, :2]))), zoom, rtol=1e-5)
  x0, y0, x1, y1 = (int(v) for v in augment.source_window(h, w, m, (size, size)))
  assert regime == ("shrunk" if zoom < 0.75 else
                    "window" if (x1 - x0) * (y1 - y0) < 0.25 * h * w else "whole")
  # Mid-grey, low-contrast pixels: the jitter (brightness, contrast about the whole image's mean,
  # a colour matrix) never clips, so jittering before or after shrinking is the same map.
  grey = (96 + example["image"].astype(np.float32) / 4).astype(np.uint8)
  ex = _tf(dict(example, image=grey))
  jitter = _jitter_cfg(brightness=0.1, contrast=0.3, saturation=0.2, hue=0.05)
  seed = tf.constant([5, 6], tf.int64)
  aug = defaults.augment_config()
  aug.color_jitter.update(jitter)
  got = augment.augment_example(ex, size, p, seed, aug)
  whole = coco.normalize_image(augment.color_jitter(tf.cast(grey, tf.float32), seed, jitter))
  want = augment.apply_affine(dict(ex, image=whole), m, False, (size, size))
  np.testing.assert_allclose(got["image"].numpy(), want["image"].numpy(), atol=2e-3)
  for key in ("person_mask", "ignore_mask"):  # nearest samples; a rare tie may round otherwise
    assert np.mean(got[key].numpy() != want[key].numpy()) < 1e-3
  np.testing.assert_array_equal(got["keypoints"].numpy(), want["keypoints"].numpy())


def test_heatmaps_of_an_empty_map():
  kp = np.array([[[3.0, 4.0, 2.0]] * 17], np.float32)
  assert targets.gaussian_heatmaps(kp, (0, 8), SIGMA).numpy().shape == (0, 8, 17)
