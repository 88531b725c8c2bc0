"""Branches input pipeline: contract shapes/dtypes, determinism, eval letterbox, host split."""

import jax
import ml_collections
import numpy as np
import pytest

from mpn_jax.data import coco_keypoints
from mpn_jax.data import pipeline
from mpn_jax.data import preprocess

S = 64
M, P = 20, 8


def _input_cfg(**kw):
  cfg = pipeline.input_config()
  cfg.update(dict(dict(size=S, batch_size=4, max_boxes=M, max_people=P, shuffle_buffer=8), **kw))
  return cfg


def _load(coco_dir, split, num):
  name = {"train": "train2017", "val": "val2017"}[split]
  _, items = coco_keypoints.load_annotations(
      coco_dir / "annotations" / f"person_keypoints_{name}_sample.json")
  items = [it for it in items if it[1]][:num]
  return items, [pipeline.example_from_coco(r, a, coco_dir / name) for r, a in items]


@pytest.fixture(scope="module")
def train_examples(coco_dir):
  return _load(coco_dir, "train", 6)[1]


def _take(ds, n):
  return list(ds.take(n).as_numpy_iterator())


def test_input_config_has_the_documented_fields():
  cfg = pipeline.input_config()
  for field in ("size", "batch_size", "heatmap_sigma", "max_boxes", "max_people", "shuffle_buffer"):
    assert field in cfg
  for field in ("scale_min", "scale_max", "rotation", "translate", "flip", "color_jitter"):
    assert field in cfg.augment
  assert cfg.size % 4 == 0 and cfg.augment.scale_min <= cfg.augment.scale_max


def test_train_batches_contract_and_determinism(train_examples):
  cfg = _input_cfg()
  ds = lambda seed: pipeline.train_batches(pipeline.examples_dataset(train_examples), cfg, 4, seed)
  a, b, c = _take(ds(0), 2), _take(ds(0), 2), _take(ds(1), 1)
  expected = {
      "image": ((4, S, S, 3), np.float32), "heatmaps": ((4, S // 4, S // 4, 17), np.float32),
      "mask": ((4, S // 4, S // 4, 1), np.float32), "weights": ((4, S // 4, S // 4, 1), np.float32),
      "boxes": ((4, M, 4), np.float32), "box_labels": ((4, M), np.int32),
      "keypoints": ((4, P, 17, 3), np.float32)}
  for batch in a:
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    assert 0 <= batch["heatmaps"].min() and batch["heatmaps"].max() <= 1
    assert set(np.unique(batch["weights"])) <= {0.0, 1.0}
    assert 0 <= batch["mask"].min() and batch["mask"].max() <= 1
    assert set(np.unique(batch["box_labels"])) <= {-1, 0, 1}
    real = batch["box_labels"] != 0
    boxes = batch["boxes"]
    assert np.all(boxes[real][:, 2:] >= boxes[real][:, :2]) and np.all((boxes >= 0) & (boxes <= S))
    assert np.all(boxes[~real] == 0)
    kp = batch["keypoints"]
    vis = kp[..., 2] > 0
    assert np.all((kp[vis][:, :2] >= 0) & (kp[vis][:, :2] < S)) and np.all(kp[~vis] == 0)
  assert sum((batch["box_labels"] == 1).sum() for batch in a) > 0
  # Same seed: the same stream, bit for bit; another seed: other draws.
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["image"], c[0]["image"])


@pytest.mark.parametrize("start_step", [1, 4])  # 6 examples, batch 4: step 4 is in epoch 2
def test_train_batches_resume_at_any_step_exactly(train_examples, start_step):
  cfg = _input_cfg(shuffle_buffer=6)
  ds = pipeline.examples_dataset(train_examples)
  full = _take(pipeline.train_batches(ds, cfg, 4, 3), start_step + 2)
  resumed = _take(pipeline.train_batches(ds, cfg, 4, 3, start_step=start_step,
                                         num_examples=len(train_examples)), 2)
  for x, y in zip(full[start_step:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batches_without_augmentation_are_the_eval_letterbox(train_examples):
  cfg = _input_cfg(shuffle_buffer=0)
  cfg.augment.update(dict(scale_min=1.0, scale_max=1.0, rotation=0.0, translate=0.0, flip=0.0))
  cfg.augment.color_jitter.update(dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0))
  batch = _take(pipeline.train_batches(pipeline.examples_dataset(train_examples[:4]), cfg, 4, 0),
                1)[0]
  for i, ex in enumerate(train_examples[:4]):
    ref, scale = preprocess.letterbox(ex["image"], S)
    h, w = ex["image"].shape[:2]
    nh, nw = round(h * scale), round(w * scale)
    diff = np.abs(batch["image"][i, :nh - 1, :nw - 1] - ref[:nh - 1, :nw - 1])
    assert diff.mean() < 0.06, diff.mean()
    # Keypoints are the originals times the letterbox scale.
    kp = ex["people"]["keypoints"]
    people = kp[(kp[..., 2] > 0).any(-1) & ~ex["people"]["iscrowd"]][:P]
    lab = people[..., 2] > 0
    np.testing.assert_allclose(batch["keypoints"][i, :len(people)][lab][:, :2],
                               people[lab][:, :2] * scale, rtol=1e-5, atol=1e-4)


def test_eval_batches_letterbox_and_padding(coco_dir):
  items, examples = _load(coco_dir, "val", 5)
  cfg = _input_cfg()
  batches = list(pipeline.eval_batches(pipeline.examples_dataset(examples), cfg, 4, num_batches=3))
  assert len(batches) == 3
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.tolist() == [True] * 5 + [False] * 7
  ids = np.concatenate([b["image_id"] for b in batches])[valid]
  assert ids.tolist() == [rec["id"] for rec, _ in items]
  scales = np.concatenate([b["scale"] for b in batches])[valid]
  sizes = np.concatenate([b["image_size"] for b in batches])[valid]
  images = np.concatenate([b["image"] for b in batches])
  assert images.shape == (12, S, S, 3) and images.dtype == np.float32
  for i, (rec, _) in enumerate(items):
    assert sizes[i].tolist() == [rec["height"], rec["width"]]
    np.testing.assert_allclose(scales[i], S / max(rec["height"], rec["width"]), rtol=1e-6)
    ref, ref_scale = preprocess.letterbox(examples[i]["image"], S)
    assert ref_scale == pytest.approx(scales[i])
    assert np.abs(images[i] - ref).mean() < 0.05
  assert np.all(images[~valid] == 0)


@pytest.fixture(scope="module")
def tfds_config(coco_dir, tmp_path_factory):
  """The real samples as the coco_keypoints TFDS dataset, built under a pytest tmp dir."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = ml_collections.ConfigDict(dict(
      name="coco_keypoints", data_dir=str(tmp_path_factory.mktemp("tfds")), coco_dir=str(coco_dir),
      train_ann="person_keypoints_train2017_sample.json",
      val_ann="person_keypoints_val2017_sample.json", train_split="train"))
  config.input = _input_cfg()
  return config


def test_make_train_iterator_from_tfds(tfds_config):
  first = [next(pipeline.make_train_iterator(tfds_config)) for _ in range(2)]
  for k, v in first[0].items():
    np.testing.assert_array_equal(v, first[1][k])
  assert first[0]["image"].shape == (4, S, S, 3)
  assert first[0]["heatmaps"].shape == (4, S // 4, S // 4, 17)
  with pytest.raises(ValueError, match="batch_size"):
    bad = ml_collections.ConfigDict(tfds_config.to_dict())
    bad.input.batch_size = 6  # not a multiple of the 4 test devices
    pipeline.make_train_iterator(bad)


@pytest.mark.parametrize("start_step", [0, 4])
def test_make_train_iterator_mixes_whole_image_steps(tfds_config, start_step):
  """input.whole_every=3: steps 2, 5, 8, ... are whole S x S images, the rest C x C windows; a run
  resumed at any step sees exactly the batches of an uninterrupted one."""
  cfg = ml_collections.ConfigDict(tfds_config.to_dict())
  cfg.input.update(dict(crop_size=32, whole_every=3, whole_batch_size=4))
  full = pipeline.make_train_iterator(cfg)
  batches = [next(full) for _ in range(start_step + 4)]
  sizes = [b["image"].shape[1] for b in batches]
  assert sizes == [S if (k + 1) % 3 == 0 else 32 for k in range(start_step + 4)]
  for b in batches:
    assert b["heatmaps"].shape[1] == b["image"].shape[1] // 4
    real = b["box_labels"] != 0
    assert np.all(b["boxes"][real] <= b["image"].shape[1])
  resumed = pipeline.make_train_iterator(cfg, start_step=start_step)
  for x in batches[start_step:]:
    y = next(resumed)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("fields, match", [
    (dict(crop_size=0, whole_every=2), "crop_size"),
    (dict(crop_size=32, whole_every=-1), "whole_every"),
    (dict(crop_size=32, whole_every=2, whole_batch_size=6), "whole_batch_size")])
def test_make_train_iterator_refuses_bad_whole_image_fields(tfds_config, fields, match):
  cfg = ml_collections.ConfigDict(tfds_config.to_dict())
  cfg.input.update(fields)
  with pytest.raises(ValueError, match=match):
    pipeline.make_train_iterator(cfg)


def test_make_eval_iterator_scale_and_hosts(tfds_config, coco_dir, monkeypatch):
  data, _ = coco_keypoints.load_annotations(
      coco_dir / "annotations" / "person_keypoints_val2017_sample.json")
  records = {rec["id"]: rec for rec in data["images"]}
  single = list(pipeline.make_eval_iterator(tfds_config, "validation", 4))
  assert all(b["image"].shape == (4, S, S, 3) for b in single)
  ids = np.concatenate([b["image_id"][b["valid"]] for b in single])
  assert sorted(ids.tolist()) == sorted(records)
  # original = input / scale: the letterbox of the original file, scale from the json's size.
  for b in single[:2]:
    for i in np.nonzero(b["valid"])[0]:
      rec = records[int(b["image_id"][i])]
      assert b["scale"][i] == pytest.approx(S / max(rec["height"], rec["width"]))
      assert b["image_size"][i].tolist() == [rec["height"], rec["width"]]
      ref, _ = preprocess.letterbox(
          preprocess.load_image(coco_dir / "val2017" / rec["file_name"]), S)
      assert np.abs(b["image"][i] - ref).mean() < 0.05
  # Two hosts: each reads its own part with half the batch, both yield the same number of batches,
  # and together they see every image exactly once.
  per_host = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for p in range(2):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    per_host.append(list(pipeline.make_eval_iterator(tfds_config, "validation", 4)))
  assert len(per_host[0]) == len(per_host[1]) == -(-len(records) // 2 // 2)
  assert all(b["image"].shape[0] == 2 for host in per_host for b in host)
  seen = np.concatenate([b["image_id"][b["valid"]] for host in per_host for b in host])
  assert sorted(seen.tolist()) == sorted(records)


@pytest.mark.parametrize("keep_empty", [0.0, 0.5])
def test_training_skips_images_without_people(tfds_config, coco_dir, keep_empty):
  """keep_empty=0: exactly the train images with a non-crowd person (counted from the annotation
  file), the count cached beside the records; 0.5: those plus about half of the others."""
  import json  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mpn_jax.data import datasets  # pylint: disable=g-import-not-at-top
  with open(coco_dir / "annotations" / "person_keypoints_train2017_sample.json") as f:
    ann = json.load(f)
  with_people = {a["image_id"] for a in ann["annotations"] if not a["iscrowd"]}
  builder = datasets.load_builder(tfds_config.dataset)
  examples = builder.as_dataset(split="train", shuffle_files=False)
  kept, count = pipeline.kept_examples(builder, "train", examples, keep_empty)
  ids = [int(ex["image_id"]) for ex in tfds.as_numpy(kept.map(lambda ex: dict(image_id=ex["image_id"])))]
  assert count == len(ids)
  if keep_empty == 0.0:
    assert set(ids) == with_people and len(ids) == 36
  else:
    empty = {im["id"] for im in ann["images"]} - with_people
    assert with_people <= set(ids) and 0.25 < len(set(ids) - with_people) / len(empty) < 0.75
  cached = list((builder.data_path).glob(f"kept_train_{keep_empty:g}.json"))
  assert cached and json.loads(cached[0].read_text())["kept"] == count
  again = pipeline.kept_examples(builder, "train", examples, keep_empty)[1]  # from the cache
  assert again == count
  with pytest.raises(ValueError, match="keep_empty"):
    pipeline.kept_examples(builder, "train", examples, 2.0)
