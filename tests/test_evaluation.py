"""COCO evaluation: the golden pycocotools case, results encoding, and peaks -> COCO results end to end."""

import json
import os
import shutil

import numpy as np
import pytest

from mpn_jax import checkpoints
from mpn_jax import coco
from mpn_jax.data import annotations
from mpn_jax.data import preprocess
from mpn_jax.evaluation import coco_io
from mpn_jax.inference import postprocess


def test_golden_case_gives_the_expected_statistics(coco_dir):
  golden = coco_dir / "golden"
  with open(golden / "keypoints_expected_stats.json") as f:
    expected = json.load(f)["stats"]
  with open(golden / "keypoints_dt.json") as f:
    results = json.load(f)
  for res in (str(golden / "keypoints_dt.json"), results):
    stats = coco_io.run_coco_eval(str(golden / "keypoints_gt.json"), res, "keypoints")
    assert list(stats) == list(coco_io.STAT_NAMES)
    np.testing.assert_allclose([stats[k] for k in coco_io.STAT_NAMES], expected, rtol=0,
                               atol=1e-12)
  table = coco_io.format_table(stats)
  assert "AP50" in table and f"{expected[0]:6.3f}" in table


def test_box_conversions_by_hand():
  xyxy = np.array([[10, 20, 40, 80], [0.5, 1.5, 2.5, 4.5]], np.float32)
  xywh = np.array([[10, 20, 30, 60], [0.5, 1.5, 2, 3]], np.float32)
  np.testing.assert_array_equal(coco_io.xyxy_to_xywh(xyxy), xywh)
  anns = [{"bbox": list(map(float, box))} for box in xywh]  # COCO's xywh, parsed to xyxy
  np.testing.assert_array_equal(annotations.people_arrays(anns)["boxes"], xyxy)


def test_keypoint_results_encoding():
  kps = np.arange(2 * 17 * 3, dtype=np.float32).reshape(2, 17, 3)
  res = coco_io.keypoint_results(7, kps, [0.9, 0.1], boxes=[[1, 2, 4, 8], [0, 0, 1, 1]])
  assert len(res) == 2
  assert res[0]["image_id"] == 7 and res[0]["category_id"] == 1 and res[1]["score"] == 0.1
  assert res[1]["keypoints"] == [float(v) for v in range(51, 102)]
  assert res[0]["bbox"] == [1.0, 2.0, 3.0, 6.0]
  json.dumps(res)  # plain Python types only
  with pytest.raises(ValueError, match="scores"):
    coco_io.keypoint_results(7, kps, [0.9])


def _image_ids(ann):
  return [img["id"] for img in ann["images"]]


def test_ground_truth_encoded_as_results_scores_one_and_shift_lowers_it(coco_dir):
  ann_file = coco_dir / "annotations" / "person_keypoints_val2017_sample.json"
  gt = coco_io.load_coco(str(ann_file))
  perfect, shifted = [], []
  for image_id in gt.getImgIds():
    people = coco_io.ground_truth_people(gt, image_id)
    keep = ~people["iscrowd"] & (people["num_keypoints"] > 0)
    kps = people["keypoints"][keep]
    perfect += coco_io.keypoint_results(image_id, kps, np.ones(len(kps)))
    moved = kps.copy()
    moved[..., 0] += 8.0  # 8 pixels: OKS drops well below 1 for most people
    shifted += coco_io.keypoint_results(image_id, moved, np.ones(len(kps)))
  assert coco_io.run_coco_eval(gt, perfect)["AP"] == pytest.approx(1.0)
  assert coco_io.run_coco_eval(gt, shifted)["AP"] < 0.8


def test_empty_results_score_zero(coco_dir):
  stats = coco_io.run_coco_eval(str(coco_dir / "golden" / "keypoints_gt.json"), [])
  assert stats == {k: 0.0 for k in coco_io.STAT_NAMES}


def test_oracle_keypoints_by_hand():
  # 2 keypoint types (K=2), 3 candidates each, 2 people.
  cand_xy = np.array([[[0, 0], [10, 0], [20, 0]], [[0, 5], [10, 5], [99, 99]]], np.float32)
  cand_s = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], np.float32)
  cand_valid = np.array([[True, True, True], [True, True, False]])
  gt = np.array([[[9, 1, 2], [98, 98, 2]],      # nearest (10, 0); (99, 99) is invalid -> (10, 5)
                 [[19, 0, 2], [0, 0, 0]]], np.float32)  # second type unlabelled
  kps, score = coco_io.oracle_keypoints(cand_xy, cand_s, cand_valid, gt)
  np.testing.assert_allclose(kps[0], [[10, 0, 0.2], [10, 5, 0.5]])
  np.testing.assert_allclose(kps[1], [[20, 0, 0.3], [0, 0, 0]])
  np.testing.assert_allclose(score, [0.35, 0.3], rtol=1e-6)


def _render_heatmaps(people_xy, people_v, size, stride, sigma):
  """Gaussians (max 1) at the continuous heatmap coordinates of input-pixel keypoints.

  people_xy [P, 17, 2] input pixels, people_v [P, 17]; returns [size/stride, size/stride, 17].
  """
  n = size // stride
  centres = np.arange(n, dtype=np.float32) + 0.5
  hm = np.zeros((n, n, coco.NUM_KEYPOINTS), np.float32)
  for xy, v in zip(people_xy, people_v):
    hxy = xy / stride  # continuous heatmap coordinates (docs/design.md)
    for k in np.flatnonzero(v > 0):
      g = np.exp(-((centres[None, :] - hxy[k, 0]) ** 2 + (centres[:, None] - hxy[k, 1]) ** 2)
                 / (2 * sigma ** 2))
      hm[..., k] = np.maximum(hm[..., k], g)
  return hm


def test_peaks_to_coco_results_end_to_end(coco_dir):
  """Heatmaps rendered from the annotations -> find_peaks -> oracle assignment -> original pixels
  -> COCO results: keypoint AP close to 1 checks peak finding, the letterbox/stride coordinate
  mapping and the encoding together (an offset of half a cell or a wrong scale drops it far)."""
  size, stride, top_k = 480, 4, 20
  ann_file = coco_dir / "annotations" / "person_keypoints_val2017_sample.json"
  gt = coco_io.load_coco(str(ann_file))
  image_ids = sorted(gt.getImgIds())
  results = []
  for start in range(0, len(image_ids), 16):
    chunk = image_ids[start:start + 16]
    heatmaps, people, scales = [], [], []
    for image_id in chunk:
      info = gt.loadImgs([image_id])[0]
      scale = preprocess.letterbox_scale(info["height"], info["width"], size)
      p = coco_io.ground_truth_people(gt, image_id)
      heatmaps.append(_render_heatmaps(p["keypoints"][..., :2] * scale, p["keypoints"][..., 2],
                                       size, stride, sigma=1.5))
      people.append(p)
      scales.append(scale)
    xy, scores, valid = postprocess.find_peaks(np.stack(heatmaps), threshold=0.1, top_k=top_k,
                                               stride=stride)
    xy, scores, valid = np.asarray(xy), np.asarray(scores), np.asarray(valid)
    assert xy.shape == (len(chunk), 17, top_k, 2) and valid.dtype == bool
    for b, image_id in enumerate(chunk):
      p = people[b]
      keep = ~p["iscrowd"] & (p["num_keypoints"] > 0)
      kps, person_scores = coco_io.oracle_keypoints(xy[b] / scales[b], scores[b], valid[b],
                                                       p["keypoints"][keep])
      results += coco_io.keypoint_results(image_id, kps, person_scores)
  stats = coco_io.run_coco_eval(gt, results)
  assert stats["AP"] >= 0.95, stats


# --- which checkpoint evaluation restores --------------------------------------------------------


def _save_steps(workdir, metric_values, best_metric="prn_gt_AP", best_mode="max"):
  """Saves steps 1..n (params = the step number) as the training loop does: Orbax checkpoints
  keeping the last one plus the best, and the metric logged as `eval/<metric>` scalars."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from mpn_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({"train": {"best_metric": best_metric,
                                                "best_mode": best_mode}})
  ckpt = checkpoints.StageCheckpoints(workdir, keep=1, best_metric=best_metric or None,
                                      best_mode=best_mode)
  writer = metric_writers.create_default_writer(str(workdir))
  state = state_lib.TrainState.create({"w": jnp.zeros((3,), jnp.float32)}, {}, optax.sgd(0.1))
  for step, value in enumerate(metric_values, start=1):
    state = state.replace(step=jnp.int32(step), params={"w": jnp.full((3,), step, jnp.float32)})
    metrics = {best_metric: value} if best_metric else {}
    writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
    ckpt.save(state, config, metrics or None)
  writer.flush()
  ckpt.close()


@pytest.mark.parametrize("mode,values,best", [("max", (0.5, 0.8, 0.6), 2),
                                              ("min", (3.0, 1.0, 2.0), 2),
                                              ("max", (0.5, 0.6, 0.7), 3)])
def test_prn_evaluation_restores_the_best_step(tmp_path, capsys, mode, values, best):
  _save_steps(tmp_path, values, best_metric="prn_gt_AP", best_mode=mode)
  # keep=1 plus the best: the manager deleted the others, the latest (3) stays.
  assert checkpoints.saved_steps(checkpoints.checkpoint_dir(tmp_path)) == sorted({best, 3})
  variables, saved = checkpoints.restore_stage(tmp_path, "prn")
  np.testing.assert_array_equal(variables["params"]["w"], np.full((3,), best, np.float32))
  assert saved["train"]["best_metric"] == "prn_gt_AP"
  assert f"step {best}" in capsys.readouterr().out
  # The branches stage and an explicit 'latest' keep the newest step.
  for variables, _ in (checkpoints.restore_stage(tmp_path, "branches"),
                       checkpoints.restore_stage(tmp_path, "prn", which="latest")):
    np.testing.assert_array_equal(variables["params"]["w"], np.full((3,), 3, np.float32))


def test_a_run_without_metrics_in_its_checkpoints_is_ranked_from_its_event_files(tmp_path, capsys):
  """Runs saved before the checkpoints kept their metrics: the best step comes from the logged
  `eval/<metric>` scalars."""
  _save_steps(tmp_path, (0.5, 0.8, 0.6), best_metric="prn_gt_AP", best_mode="max")
  for step in checkpoints.saved_steps(checkpoints.checkpoint_dir(tmp_path)):
    shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(tmp_path), str(step), "metrics"))
  variables, _ = checkpoints.restore_stage(tmp_path, "prn")
  np.testing.assert_array_equal(variables["params"]["w"], np.full((3,), 2, np.float32))
  assert "best prn_gt_AP=0.8000" in capsys.readouterr().out


def test_event_files_are_not_read_when_the_checkpoints_keep_metrics(tmp_path):
  """A step saved without metrics was not evaluated: it is left unranked rather than looked up in
  the event files (which would import TensorFlow into every evaluate and predict)."""
  _save_steps(tmp_path, (0.9, 0.1, 0.2), best_metric="prn_gt_AP", best_mode="max")
  assert checkpoints.saved_steps(checkpoints.checkpoint_dir(tmp_path)) == [1, 3]
  shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(tmp_path), "3", "metrics"))
  assert checkpoints.step_metrics(tmp_path, "prn_gt_AP") == {1: pytest.approx(0.9)}


def test_prn_evaluation_without_a_kept_metric_restores_the_latest(tmp_path, capsys):
  _save_steps(tmp_path, (0.9, 0.1), best_metric="")
  variables, _ = checkpoints.restore_stage(tmp_path, "prn")
  np.testing.assert_array_equal(variables["params"]["w"], np.full((3,), 2, np.float32))
  assert "step 2" in capsys.readouterr().out
  with pytest.raises(FileNotFoundError, match="step 7 is not saved"):
    checkpoints.restore_stage(tmp_path, "prn", which="7")
