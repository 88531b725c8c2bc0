"""Inference pipeline (mpn_jax.inference): peaks, detections, PRN crops, TTA, full pipeline, COCO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from mpn_jax import boxes as box_lib
from mpn_jax import coco
from mpn_jax import prn_grid
from mpn_jax.configs import defaults
from mpn_jax.data import preprocess
from mpn_jax.evaluation import coco_io
from mpn_jax.inference import pipeline
from mpn_jax.inference import postprocess
from mpn_jax.inference import tta

K = coco.NUM_KEYPOINTS


def _config(**kw):
  c = defaults.inference_config()
  c.update(kw)
  return c


# ------------------------------------------------------------------------------------------------
# find_peaks.

def test_peaks_match_scipy_maximum_filter():
  rng = np.random.default_rng(0)
  hm = ndimage.gaussian_filter(rng.normal(size=(2, 14, 11, 3)), sigma=(0, 1, 1, 0)).astype(np.float32)
  thr = 0.0
  xy, scores, valid = postprocess.find_peaks(hm, thr, 40, stride=4, refine="none")
  ref = (hm == ndimage.maximum_filter(hm, size=(1, 3, 3, 1), mode="constant", cval=-np.inf)) & (hm > thr)
  for b in range(2):
    for k in range(3):
      v = np.asarray(valid[b, k])
      cells = np.asarray(xy[b, k])[v] / 4 - 0.5  # (col, row)
      got = {(int(round(c[1])), int(round(c[0]))) for c in cells}
      assert got == set(zip(*np.nonzero(ref[b, :, :, k])))
      assert len(got) == v.sum() > 0
      np.testing.assert_allclose(np.asarray(scores[b, k])[v],
                                 [hm[b, r, c, k] for r, c in
                                  (tuple(np.round(cc[::-1]).astype(int)) for cc in cells)])
      assert np.all(np.diff(np.asarray(scores[b, k])[v]) <= 0)  # highest first


def _cell_grid(h, w):
  v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
  return u, v


def test_quadratic_refinement_is_exact_on_a_paraboloid():
  u, v = _cell_grid(12, 16)
  x0, y0 = 7.3, 5.8  # heatmap coordinates of the true maximum
  hm = (10.0 - (u - x0) ** 2 - 0.5 * (v - y0) ** 2).astype(np.float32)[None, :, :, None]
  xy, _, valid = postprocess.find_peaks(hm, 0.0, 1, stride=4, refine="quadratic")
  assert bool(valid[0, 0, 0])
  np.testing.assert_allclose(np.asarray(xy[0, 0, 0]), [4 * x0, 4 * y0], atol=1e-3)


@pytest.mark.parametrize("refine,tol_cells", [("quadratic", 0.1), ("quarter", 0.3), ("none", 0.5)])
def test_refinement_on_a_gaussian(refine, tol_cells):
  u, v = _cell_grid(20, 20)
  x0, y0 = 9.85, 10.2
  hm = np.exp(-((u - x0) ** 2 + (v - y0) ** 2) / (2 * 1.5 ** 2)).astype(np.float32)[None, :, :, None]
  xy, scores, _ = postprocess.find_peaks(hm, 0.1, 2, stride=4, refine=refine)
  err = np.abs(np.asarray(xy[0, 0, 0]) / 4 - [x0, y0])
  assert np.all(err <= tol_cells), err
  if refine == "quarter":  # exactly a quarter cell toward the higher neighbour
    np.testing.assert_allclose(np.asarray(xy[0, 0, 0]) / 4, [9.5 + 0.25, 10.5 - 0.25])
  assert float(scores[0, 0, 1]) == 0.0  # one peak only: second slot empty


def test_plateau_gives_one_peak_at_its_middle():
  u, v = _cell_grid(10, 10)
  x0, y0 = 5.0, 4.0  # between cells 4 and 5 along x, between cells 3 and 4 along y: 4 equal cells
  hm = np.exp(-((u - x0) ** 2 + (v - y0) ** 2) / 2.0).astype(np.float32)[None, :, :, None]
  xy, _, valid = postprocess.find_peaks(hm, 0.1, 3, stride=4)
  np.testing.assert_array_equal(np.asarray(valid[0, 0]), [True, False, False])
  np.testing.assert_allclose(np.asarray(xy[0, 0, 0]), [4 * x0, 4 * y0], atol=0.05)


def test_peaks_threshold_padding_and_border():
  hm = np.zeros((1, 2, 3, 2), np.float32)
  hm[0, 0, 0, 0] = 0.9  # corner peak: no refinement possible
  hm[0, 1, 2, 0] = 0.05  # below threshold
  xy, scores, valid = postprocess.find_peaks(hm, 0.1, 8, stride=4)  # top_k > h * w: padded
  assert xy.shape == (1, 2, 8, 2) and scores.shape == valid.shape == (1, 2, 8)
  np.testing.assert_array_equal(np.asarray(valid[0, 0]), [True] + [False] * 7)
  assert not np.asarray(valid[0, 1]).any()
  np.testing.assert_allclose(np.asarray(xy[0, 0, 0]), [2.0, 2.0])
  np.testing.assert_allclose(np.asarray(scores[0, 0]), [0.9] + [0] * 7, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(xy)[~np.asarray(valid)], 0.0)


# ------------------------------------------------------------------------------------------------
# detect_people.

S = 64
ANCHORS = box_lib.generate_anchors((S, S))


_anchor_targets = jax.jit(box_lib.anchor_targets)


def _detector_outputs(people_per_image, logits_per_person):
  """Fake RetinaNet outputs: each person's positive anchors (anchor_targets) fire with the exact box
  deltas; every other anchor is background."""
  a = ANCHORS.shape[0]
  cls = np.full((len(people_per_image), a, 1), -10.0, np.float32)
  deltas = np.zeros((len(people_per_image), a, 4), np.float32)
  for i, (people, logits) in enumerate(zip(people_per_image, logits_per_person)):
    for box, logit in zip(people, logits):
      c, d = _anchor_targets(np.asarray([box], np.float32), np.array([1], np.int32), ANCHORS)
      pos = np.asarray(c) == 1
      cls[i, pos, 0] = logit
      deltas[i, pos] = np.asarray(d)[pos]
  return cls, deltas


def test_detect_people_recovers_boxes():
  people = [[(4, 6, 30, 50), (36, 10, 60, 62)], [(10, 20, 70, 40)]]  # the last crosses the border
  cls, deltas = _detector_outputs(people, [[2.0, 3.0], [1.0]])
  out_boxes, scores, valid = jax.jit(
      postprocess.detect_people, static_argnames=("max_people", "pre_nms_top_k", "image_size"))(
          cls, deltas, ANCHORS, score_threshold=0.05, iou_threshold=0.5, max_people=4,
          pre_nms_top_k=100, image_size=(S, S))
  np.testing.assert_array_equal(np.asarray(valid), [[1, 1, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_allclose(np.asarray(out_boxes[0, :2]), [people[0][1], people[0][0]], atol=1e-3)
  np.testing.assert_allclose(np.asarray(out_boxes[1, 0]), [10, 20, 64, 40], atol=1e-3)  # clipped
  np.testing.assert_allclose(np.asarray(scores[0, :2]), jax.nn.sigmoid(jnp.array([3.0, 2.0])),
                             rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(out_boxes)[~np.asarray(valid)], 0.0)
  # A score threshold above every person leaves nothing.
  _, _, none = postprocess.detect_people(cls, deltas, ANCHORS, 0.99, 0.5, 4, 100, (S, S))
  assert not np.asarray(none).any()


def test_detect_people_rejects_wrong_anchor_count():
  cls, deltas = _detector_outputs([[]], [[]])
  with pytest.raises(ValueError, match="anchors"):
    postprocess.detect_people(cls, deltas, box_lib.generate_anchors((128, 128)), 0.05, 0.5, 4)


# ------------------------------------------------------------------------------------------------
# PRN inputs.

def test_crop_reproduces_a_linear_ramp():
  h, w = 40, 30
  u, v = _cell_grid(h, w)  # heatmap coordinates of the cell centres
  ramp = np.stack([0.3 * u - 0.2 * v + 1.0, -0.1 * u + 0.05 * v], -1).astype(np.float32)
  box = np.array([[10.0, 7.0, 90.0, 150.0], [30.5, 40.25, 100.0, 99.0]], np.float32)  # inside
  crops = np.asarray(postprocess.crop_heatmaps(ramp, box, stride=4))
  assert crops.shape == (2, prn_grid.GRID_H, prn_grid.GRID_W, 2)
  pts = prn_grid.cell_centers(box) / 4.0  # heatmap coordinates of the samples
  want = np.stack([0.3 * pts[..., 0] - 0.2 * pts[..., 1] + 1.0,
                   -0.1 * pts[..., 0] + 0.05 * pts[..., 1]], -1)
  np.testing.assert_allclose(crops, want, atol=1e-4)


def test_crop_matches_scipy_map_coordinates():
  rng = np.random.default_rng(9)
  hm = rng.uniform(size=(20, 15, 2)).astype(np.float32)
  xy = rng.uniform(1, 25, (5, 2))
  box = np.concatenate([xy, xy + rng.uniform(5, 30, (5, 2))], 1).astype(np.float32)  # x < 60 = 4 w
  got = np.asarray(postprocess.crop_heatmaps(hm, box, 4))
  pts = prn_grid.cell_centers(box) / 4.0 - 0.5  # index coordinates: cell j centred at j
  for c in range(2):
    want = ndimage.map_coordinates(hm[..., c], [pts[..., 1].ravel(), pts[..., 0].ravel()], order=1,
                                   mode="nearest").reshape(pts.shape[:-1])
    np.testing.assert_allclose(got[..., c], want, atol=1e-5)


def test_crop_of_the_whole_map_is_the_map():
  rng = np.random.default_rng(1)
  hm = rng.uniform(size=(prn_grid.GRID_H, prn_grid.GRID_W, 3)).astype(np.float32)
  box = np.array([[0, 0, 4 * prn_grid.GRID_W, 4 * prn_grid.GRID_H]], np.float32)
  np.testing.assert_allclose(np.asarray(postprocess.crop_heatmaps(hm, box, 4))[0], hm, atol=1e-5)
  # Boxes entirely outside the map sample zeros.
  far = np.array([[1000, 1000, 1100, 1200]], np.float32)
  assert not np.asarray(postprocess.crop_heatmaps(hm, far, 4)).any()


def test_rasterized_peaks_match_prn_training_inputs():
  from mpn_jax.data import prn_samples  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  cand_xy = rng.uniform(0, 120, (K, 4, 2)).astype(np.float32)
  cand_valid = rng.uniform(size=(K, 4)) < 0.7
  wide = prn_grid.widen_boxes(np.array([[20, 10, 80, 110], [50, 40, 100, 90]], np.float32))
  got = np.asarray(postprocess.rasterize_peaks(cand_xy, cand_valid, wide, 1.0))
  kps = np.concatenate([np.swapaxes(cand_xy, 0, 1),
                        np.swapaxes(cand_valid, 0, 1)[..., None].astype(np.float32)], -1)  # [C, K, 3]
  for n in range(2):
    np.testing.assert_allclose(got[n], prn_samples.render_inputs(wide[n], kps, 1.0), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Test-time augmentation.

def test_flip_heatmaps_twice_is_identity():
  hm = np.random.default_rng(3).normal(size=(2, 5, 6, 18)).astype(np.float32)
  once = np.asarray(tta.flip_heatmaps(hm))
  np.testing.assert_array_equal(once[:, :, 0, 2], hm[:, :, 5, 1])  # left_eye <- mirrored right_eye
  np.testing.assert_array_equal(once[..., 17], hm[:, :, ::-1, 17])  # mask: mirrored only
  np.testing.assert_array_equal(np.asarray(tta.flip_heatmaps(once)), hm)


def _random_variables(module, shape, seed):
  """LeCun-normal variables from the shapes alone (compiling `init` costs more than these tests);
  small outputs keep the detector scores away from sigmoid saturation, where ties would appear."""
  rng = np.random.default_rng(seed)
  def make(path, leaf):
    name = str(path[-1].key)
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, np.sqrt(1 / fan_in), leaf.shape), leaf.dtype)
    return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))
  return jax.tree_util.tree_map_with_path(make, shapes)


@pytest.fixture(scope="module")
def tiny_nets():
  from mpn_jax import models  # pylint: disable=g-import-not-at-top
  model = models.build_multiposenet(models.multiposenet_config("tiny"))
  prn = models.build_prn(models.prn_config("tiny"))
  variables = _random_variables(model, (1, S, S, 3), 0)
  prn_variables = _random_variables(prn, (1, 56, 36, K), 1)
  return model, prn, variables, prn_variables


def _equivariant_prn(x):
  """A stand-in PRN that commutes with mirroring (softmax of its input over the grid)."""
  n, h, w, k = x.shape
  return jax.nn.softmax(8.0 * x.reshape(n, h * w, k), axis=1).reshape(n, h, w, k)


@pytest.fixture(scope="module")
def flip_tta_run(tiny_nets):
  """Jitted (once for the module): images -> (merged heatmaps, box candidates, scores, people)."""
  model, _, variables, _ = tiny_nets
  apply_fn = lambda im: model.apply(variables, im, train=False)
  cfg = _config(flip=True, heatmap_threshold=-1e9, score_threshold=0.0, max_people=5,
                peaks_per_keypoint=4, pre_nms_top_k=50)

  @jax.jit
  def run(im):
    heat, cb, cs = tta.merge_outputs(apply_fn, im, cfg)
    people = pipeline.predict_people(heat, cb, cs, jnp.ones((im.shape[0],)), _equivariant_prn,
                                      cfg, (S, S))
    return heat, cb, cs, people

  return run


def test_flip_tta_is_symmetric_on_a_symmetric_image(flip_tta_run):
  x = np.random.default_rng(4).normal(size=(1, S, S, 3)).astype(np.float32)
  x = x + x[:, :, ::-1]  # mirror-symmetric image
  heat, cand_boxes, cand_scores, _ = flip_tta_run(x)
  np.testing.assert_allclose(np.asarray(tta.flip_heatmaps(heat)), np.asarray(heat),
                             atol=1e-5)
  # The flipped variant's candidates are the mirror images of the plain variant's.
  p = cand_boxes.shape[1] // 2
  np.testing.assert_allclose(np.asarray(box_lib.flip_horizontal(cand_boxes[:, p:], S)),
                             np.asarray(cand_boxes[:, :p]), atol=1e-3)
  np.testing.assert_allclose(np.asarray(cand_scores[:, p:]), np.asarray(cand_scores[:, :p]),
                             atol=1e-6)


def test_multiscale_maps_candidates_back_to_the_base_input():
  # A fake network: heatmaps of the right size, anchors scored by index, zero deltas, so the
  # candidates are the (rescaled) top anchors of each variant.
  def apply_fn(im):
    b, h, w, _ = im.shape
    a = box_lib.generate_anchors((h, w)).shape[0]
    logits = jnp.broadcast_to(-jnp.arange(a, dtype=jnp.float32)[None, :, None], (b, a, 1))
    hm = jnp.broadcast_to(jnp.mean(im), (b, -(-h // 4), -(-w // 4), 18))
    return {"keypoints": hm, "cls_logits": logits, "box_deltas": jnp.zeros((b, a, 4))}

  x = jnp.ones((2, S, S, 3))
  heat, cand_boxes, _ = tta.merge_outputs(apply_fn, x, _config(scales=(1.0, 0.5),
                                                                    pre_nms_top_k=5))
  assert heat.shape == (2, S // 4, S // 4, 18)
  np.testing.assert_allclose(np.asarray(heat), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(cand_boxes[0, :5]), np.asarray(ANCHORS[:5]), atol=1e-4)
  half = box_lib.generate_anchors((S // 2, S // 2))[:5] * 2.0
  np.testing.assert_allclose(np.asarray(cand_boxes[0, 5:]), np.asarray(half), atol=1e-4)


@pytest.mark.parametrize("image_size,scales,cells,stride", [
    ((128, 96), (1.0, 1.25), (40, 32), (3.0, 3.2)),   # 160 x 128 input: 96 * 4 / 128, 128 * 4 / 160
    ((128, 96), (1.0, 0.5), (32, 24), (4.0, 4.0)),    # no scale above 1: the base grid
    ((130, 130), (1.0,), (33, 33), (4.0, 4.0)),       # base grid of a non-multiple of 4
])
def test_merge_grid_is_the_largest_scales_grid(image_size, scales, cells, stride):
  got_cells, got_stride = tta.merge_grid(image_size, _config(scales=scales))
  assert got_cells == cells
  np.testing.assert_allclose(got_stride, stride)


def test_multiscale_heatmaps_keep_the_finer_grid():
  """A fake network draws one sharp peak at a fixed input point on each variant's own grid; on the
  merged (largest-scale) grid the refined peak is closer to the point than the base grid allows."""
  point = np.array([29.0, 37.0])  # base input pixels (x, y)

  def apply_fn(im):
    b, h, w, _ = im.shape
    s = w / S
    yy, xx = np.mgrid[0:h // 4, 0:w // 4]
    cx, cy = point * s / 4.0 - 0.5  # in this variant's cells (cell j centred at j + 0.5)
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.6 ** 2)).astype(np.float32)
    a = box_lib.generate_anchors((h, w)).shape[0]
    return {"keypoints": jnp.broadcast_to(jnp.asarray(g)[None, :, :, None], (b, h // 4, w // 4, K)),
            "cls_logits": jnp.zeros((b, a, 1)), "box_deltas": jnp.zeros((b, a, 4))}

  errors = {}
  for scales in ((1.0,), (1.0, 2.0)):
    cfg = _config(scales=scales)
    heat, _, _ = tta.merge_outputs(apply_fn, jnp.zeros((1, S, S, 3)), cfg)
    cells, stride = tta.merge_grid((S, S), cfg)
    assert heat.shape[1:3] == cells
    xy, _, valid = postprocess.find_peaks(heat, 0.1, 1, stride)
    assert bool(valid[0, 0, 0])
    errors[scales] = float(np.linalg.norm(np.asarray(xy[0, 0, 0]) - point))
  # A sigma-0.6-cell peak is too sharp for the parabola: on the base grid (4 px cells) the refined
  # peak is 0.64 px off, on the 2x grid (2 px cells, the 1x variant only upsampled) 0.09 px.
  assert errors[(1.0, 2.0)] < 0.5 * errors[(1.0,)]


def test_flip_tta_pipeline_is_mirror_equivariant(flip_tta_run):
  """With flip TTA, the people found in a mirrored image are the mirrored people (any network)."""
  x = np.random.default_rng(5).normal(size=(1, S, S, 3)).astype(np.float32)
  a, b = flip_tta_run(x)[3], flip_tta_run(x[:, :, ::-1])[3]
  assert np.asarray(a["valid"]).sum() >= 2
  np.testing.assert_array_equal(np.asarray(a["valid"]), np.asarray(b["valid"]))
  np.testing.assert_allclose(np.asarray(b["scores"]), np.asarray(a["scores"]), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(b["boxes"]),
                             np.asarray(box_lib.flip_horizontal(a["boxes"], S)), atol=1e-3)
  ka, kb = np.asarray(a["keypoints"]), np.asarray(b["keypoints"])
  v = np.asarray(a["valid"])
  centres = (np.asarray(a["boxes"])[..., :2] + np.asarray(a["boxes"])[..., 2:]) / 2
  assert (np.abs(ka[..., :2] - centres[:, :, None]).sum(-1) > 1e-3)[v].mean() > 0.5  # assigned
  mirrored = ka[:, :, coco.FLIP_PERM]
  mirrored[..., 0] = S - mirrored[..., 0]
  np.testing.assert_allclose(kb[v], mirrored[v], atol=1e-3)


# ------------------------------------------------------------------------------------------------
# The whole pipeline.

def _gaussian_heatmaps(keypoints_input, h, w, sigma=1.5):
  """[P, K, 3] input-pixel keypoints of one image -> [h, w, K] stride-4 Gaussian heatmaps."""
  u, v = _cell_grid(h, w)
  out = np.zeros((h, w, K), np.float32)
  for person in keypoints_input:
    for k, (x, y, vis) in enumerate(person):
      if vis > 0:
        g = np.exp(-((u - x / 4) ** 2 + (v - y / 4) ** 2) / (2 * sigma ** 2))
        out[..., k] = np.maximum(out[..., k], g)
  return out


def _sum_prn(x):
  """A perfect stand-in PRN for one person per box: each channel normalised to a distribution."""
  return x / jnp.maximum(x.sum(axis=(1, 2), keepdims=True), 1e-9)


@pytest.mark.parametrize("method,prn_input,given", [
    ("greedy", "peaks", False), ("hungarian", "peaks", False), ("hungarian_log", "peaks", False),
    ("mutual", "heatmaps", False), ("greedy", "peaks", True), ("hungarian_log", "heatmaps", True)])
def test_pipeline_on_letterboxed_images_of_different_sizes(method, prn_input, given):
  """given: the people's boxes are passed in (each scoring 1) and the detector finds nobody."""
  rng = np.random.default_rng(6)
  sizes = [(48, 80), (64, 32), (40, 40)]
  gt_boxes = [[(2, 4, 30, 44), (46, 6, 78, 46)], [(4, 10, 28, 60)], [(8, 6, 34, 38)]]
  images, scales, heat, gt_kps = [], [], [], []
  for (h, w), people in zip(sizes, gt_boxes):
    img, scale = preprocess.letterbox(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), S)
    images.append(img)
    scales.append(scale)
    kps = []
    for box in people:
      # At least 1.2 heatmap cells from the image border, where refinement cannot work.
      x = rng.uniform(box[0] + 6, box[2] - 6, K)
      y = rng.uniform(box[1] + 6, box[3] - 6, K)
      vis = (rng.uniform(size=K) < 0.7).astype(np.float32) * 2
      kps.append(np.stack([x, y, vis], -1))
    gt_kps.append(np.array(kps, np.float32))
    inp = np.array(kps, np.float32) * [scale, scale, 1]
    heat.append(np.concatenate([_gaussian_heatmaps(inp, S // 4, S // 4),
                                np.zeros((S // 4, S // 4, 1), np.float32)], -1))
  scaled_boxes = [[tuple(np.array(b) * s) for b in people] for people, s in zip(gt_boxes, scales)]
  cls, deltas = _detector_outputs(scaled_boxes, [[3.0, 2.0], [2.0], [1.0]])
  people = {}
  if given:
    cls = np.full_like(cls, -10.0)  # sigmoid 5e-5: below the score threshold, nobody detected
    boxes = np.zeros((3, 3, 4), np.float32)
    for i, image_boxes in enumerate(scaled_boxes):
      boxes[i, :len(image_boxes)] = image_boxes
    people = {"boxes": jnp.asarray(boxes), "box_valid": jnp.asarray(boxes[..., 2] > 0)}
  outputs = {"keypoints": jnp.asarray(np.stack(heat)), "cls_logits": cls, "box_deltas": deltas}
  cfg = _config(max_people=3, peaks_per_keypoint=4, assign_method=method, prn_input=prn_input)
  out = jax.jit(lambda o, s, p: pipeline.predict_from_outputs(o, s, _sum_prn, cfg, **p))(
      outputs, jnp.asarray(scales, jnp.float32), people)
  assert out["keypoints"].shape == (3, 3, K, 3)
  np.testing.assert_array_equal(np.asarray(out["valid"]), [[1, 1, 0], [1, 0, 0], [1, 0, 0]])
  for i, people in enumerate(gt_boxes):
    for n, box in enumerate(people):
      np.testing.assert_allclose(np.asarray(out["boxes"][i, n]), box, atol=1e-3)
      kp = np.asarray(out["keypoints"][i, n])
      seen = gt_kps[i][n, :, 2] > 0
      # Quadratic refinement of a sigma-1.5-cell Gaussian: within 0.1 cell = 0.4 input pixels.
      np.testing.assert_allclose(kp[seen, :2], gt_kps[i][n, seen, :2], atol=0.4 / scales[i])
      assert np.all(kp[seen, 2] > 0.8)
      centre = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
      np.testing.assert_allclose(kp[~seen, :2], np.broadcast_to(centre, kp[~seen, :2].shape),
                                 atol=1e-3)
      np.testing.assert_array_equal(kp[~seen, 2], 0.0)
      box_score = float(out["box_scores"][i, n])
      if given:
        assert box_score == 1.0
      np.testing.assert_allclose(float(out["scores"][i, n]), box_score * kp[:, 2].sum() / K,
                                 rtol=1e-5)
  assert not np.asarray(out["keypoints"])[~np.asarray(out["valid"])].any()


def test_predict_fn_runs_tiny_models_without_retracing(tiny_nets, monkeypatch):
  model, prn, variables, prn_variables = tiny_nets
  traces = []
  real = pipeline.predict_people
  monkeypatch.setattr(pipeline, "predict_people",
                      lambda *a, **kw: traces.append(1) or real(*a, **kw))
  cfg = _config(heatmap_threshold=-1e9, score_threshold=0.0, max_people=3, peaks_per_keypoint=3,
                pre_nms_top_k=20, prn_input="heatmaps")
  predict = pipeline.make_predict_fn(model, prn, cfg)
  rng = np.random.default_rng(7)
  for _ in range(2):
    batch = [preprocess.letterbox(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), S)
             for h, w in [(30, 50), (64, 20)]]
    images = np.stack([b[0] for b in batch])
    scales = np.array([b[1] for b in batch], np.float32)
    out = predict(variables, prn_variables, images, scales)
    kp = np.asarray(out["keypoints"])
    assert kp.shape == (2, 3, K, 3) and np.all(np.isfinite(kp))
    assert np.asarray(out["valid"]).all()
    # Boxes are clipped to the input, hence inside S / scale in original pixels.
    assert np.all(np.asarray(out["boxes"]) <= S / scales[:, None, None] + 1e-3)
  assert len(traces) == 1


def test_bad_config_is_rejected():
  with pytest.raises(ValueError, match="prn_input"):
    pipeline.predict_people(jnp.zeros((1, 4, 4, K)), jnp.zeros((1, 2, 4)), jnp.zeros((1, 2)),
                             jnp.ones((1,)), _sum_prn, _config(prn_input="boxes"), (16, 16))
  with pytest.raises(ValueError, match="multiple of 4"):
    tta.merge_outputs(lambda x: None, jnp.zeros((1, 16, 30, 3)), _config(flip=True))


# ------------------------------------------------------------------------------------------------
# COCO results.

def _tiny_gt():
  rng = np.random.default_rng(8)
  images, anns = [], []
  for image_id in (3, 7):
    images.append({"id": image_id, "width": 100, "height": 80, "file_name": f"{image_id}.jpg"})
    for j in range(2):
      x, y = 10 + 45 * j, 10
      kps = np.stack([rng.uniform(x, x + 30, K), rng.uniform(y, y + 60, K), np.full(K, 2.0)], -1)
      anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                   "bbox": [x, y, 30, 60], "area": 1800.0, "num_keypoints": K,
                   "keypoints": kps.reshape(-1).tolist()})
  return {"images": images, "annotations": anns, "categories": [coco.PERSON_CATEGORY]}


def test_results_to_coco_scores_perfect_predictions_at_ap_1():
  gt = _tiny_gt()
  image_ids = np.array([3, 7])
  kps = np.zeros((2, 3, K, 3), np.float32)
  bxs = np.zeros((2, 3, 4), np.float32)
  valid = np.zeros((2, 3), bool)
  for a in gt["annotations"]:
    i = int(np.nonzero(image_ids == a["image_id"])[0][0])
    n = valid[i].sum()
    kps[i, n] = np.array(a["keypoints"]).reshape(K, 3) * [1, 1, 0.45]
    x, y, w, h = a["bbox"]
    bxs[i, n] = [x, y, x + w, y + h]
    valid[i, n] = True
  scores = np.full((2, 3), 0.9, np.float32)
  b, n = coco_io.batch_rows(valid)
  res = coco_io.keypoint_results(image_ids[b], kps[b, n], scores[b, n])
  assert len(res) == 4 and set(res[0]) == {"image_id", "category_id", "keypoints", "score"}
  assert len(res[0]["keypoints"]) == 51 and res[0]["keypoints"][2] == pytest.approx(0.9)
  ones = coco_io.keypoint_results(image_ids[b], kps[b, n], scores[b, n], visibility="one")
  assert ones[0]["keypoints"][2] == 1.0
  assert coco_io.run_coco_eval(gt, res, "keypoints")["AP"] == pytest.approx(1.0)
  box_res = coco_io.box_results(image_ids[b], bxs[b, n], scores[b, n])
  assert box_res[0]["bbox"] == pytest.approx(gt["annotations"][0]["bbox"])
  assert coco_io.run_coco_eval(gt, box_res, "bbox")["AP"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="visibility"):
    coco_io.keypoint_results(image_ids[b], kps[b, n], scores[b, n], visibility="maybe")


@pytest.mark.parametrize("power,want", [(0.0, (18.0, 26.0)), (1.0, (38.0, 34.0))])
def test_peak_score_power_lets_the_stronger_peak_win(power, want):
  # One box, two peaks of every type inside it: a weak one (0.5) in the box's left half and a strong
  # one (0.9) in its right half. The stand-in PRN slightly prefers the left half (x1.2): by the PRN
  # alone the weak peak wins; with the peak values as a factor (0.6 against 0.9) the strong one.
  h = w = S // 4
  heat = np.zeros((1, h, w, K + 1), np.float32)
  heat[0, 6, 4, :K] = 0.5   # cell centre = input (18, 26)
  heat[0, 8, 9, :K] = 0.9   # input (38, 34)
  cls, deltas = _detector_outputs([[(4, 4, 60, 60)]], [[3.0]])
  outputs = {"keypoints": jnp.asarray(heat), "cls_logits": cls, "box_deltas": deltas}
  cfg = _config(max_people=1, peaks_per_keypoint=2, peak_refine="none", peak_score_power=power)

  def prn(x):
    left = (jnp.arange(x.shape[2]) < x.shape[2] // 2).astype(jnp.float32)
    return _sum_prn(x * (1.0 + 0.2 * left)[None, None, :, None])

  out = pipeline.predict_from_outputs(outputs, jnp.ones((1,), jnp.float32), prn, cfg)
  xy = np.asarray(out["keypoints"][0, 0, :, :2])
  np.testing.assert_allclose(xy, np.broadcast_to(want, xy.shape), atol=1e-4)


@pytest.mark.parametrize("boxes,want", [([(4, 4, 44, 60)], [0.9]),
                                         ([(4, 4, 44, 60), (24, 4, 64, 60)], [0.225, 0.225])])
def test_decisive_instance_score_counts_each_keypoint_by_its_share(boxes, want):
  # One peak (0.9) of every type, inside every box. Alone, a box wins each keypoint outright
  # (share 1): 0.9, the keypoint-count score. Two overlapping boxes (IoU 0.33, both kept) that the
  # stand-in PRN scores alike share each keypoint half and half; each takes them (greedy), so
  # each person scores 0.9 x 0.5^2.
  h = w = S // 4
  heat = np.zeros((1, h, w, K + 1), np.float32)
  heat[0, 8, 8, :K] = 0.9   # input (34, 34)
  cls, deltas = _detector_outputs([boxes], [[3.0] * len(boxes)])
  outputs = {"keypoints": jnp.asarray(heat), "cls_logits": cls, "box_deltas": deltas}
  cfg = _config(max_people=2, peak_refine="none", assign_method="greedy",
                instance_score="decisive")
  out = pipeline.predict_from_outputs(outputs, jnp.ones((1,), jnp.float32), _sum_prn, cfg)
  valid = np.asarray(out["valid"][0])
  assert valid.sum() == len(boxes)
  np.testing.assert_allclose(np.sort(np.asarray(out["scores"][0])[valid]), want, atol=0.01)
  keypoint_count = pipeline.predict_from_outputs(
      outputs, jnp.ones((1,), jnp.float32), _sum_prn, _config(
          max_people=2, peak_refine="none", assign_method="greedy", instance_score="keypoints"))
  np.testing.assert_allclose(np.asarray(keypoint_count["scores"][0])[valid], 0.9, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# One field per setting: the PRN input is drawn with the PRN run's data.input_sigma / data.widen.

def test_old_checkpoint_inference_fields_are_ignored_and_prn_data_fields_used():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mpn_jax.inference import predictor  # pylint: disable=g-import-not-at-top
  # A PRN config saved before inference.prn_sigma / box_widen were removed.
  saved = ml_collections.ConfigDict({
      "inference": {"prn_sigma": 2.0, "box_widen": 0.3, "assign_method": "mutual"},
      "data": {"input_sigma": 1.5, "widen": 0.25}})
  icfg = predictor.inference_settings(saved, None, {"flip": True})
  assert "prn_sigma" not in icfg and "box_widen" not in icfg
  assert icfg.assign_method == "mutual" and icfg.flip
  assert predictor.prn_input(saved) == {"input_sigma": 1.5, "widen": 0.25}
  assert predictor.prn_input(ml_collections.ConfigDict()) == {
      "input_sigma": defaults.prn_data_config().input_sigma,
      "widen": defaults.prn_data_config().widen}


def test_predict_people_draws_prn_inputs_with_the_given_sigma_and_widen():
  heat = np.zeros((1, 16, 16, K), np.float32)
  heat[0, 6, 7, :] = 1.0  # one peak per keypoint type
  boxes = jnp.asarray([[[12.0, 12.0, 48.0, 52.0]]])
  seen = []

  def record(x):
    seen.append(np.asarray(x))
    return _sum_prn(x)

  for kw in ({}, {"input_sigma": 2.0}, {"widen": 0.5}):
    pipeline.predict_people(jnp.asarray(heat), boxes, jnp.ones((1, 1)), jnp.ones((1,)), record,
                            _config(), (64, 64), **kw)
  default, wide_sigma, wide_box = seen[-3:]
  assert default.max() > 0
  assert not np.allclose(default, wide_sigma) and not np.allclose(default, wide_box)
  # The defaults are a PRN run's default data fields.
  again = []
  pipeline.predict_people(jnp.asarray(heat), boxes, jnp.ones((1, 1)), jnp.ones((1,)),
                          lambda x: again.append(np.asarray(x)) or _sum_prn(x), _config(),
                          (64, 64), input_sigma=defaults.prn_data_config().input_sigma,
                          widen=defaults.prn_data_config().widen)
  np.testing.assert_array_equal(again[-1], default)
