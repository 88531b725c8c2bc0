"""Pose Residual Network samples built from COCO keypoint annotations (no pixels needed).

One sample per person (not crowd, at least `min_keypoints` labelled keypoints), as the official PRN
code builds them: the person's box is widened by 21% on each side and split into the 56x36 PRN grid
(`mpn_jax.prn_grid` owns that geometry);
  * inputs  [56, 36, 17] float32: every labelled keypoint of every person in the image that falls in
    the widened box, drawn as a small Gaussian (max 1) in its type's channel -- what the keypoint
    subnet's heatmaps look like there, including other people's joints;
  * targets [56, 36, 17] float32: the person's own keypoints, each channel a normalised Gaussian
    (sums to 1), all zero where the person lacks that keypoint or it falls outside the grid;
  * target_valid [17] float32: 1 where the target channel holds a keypoint.

Training augmentation multiplies the few hundred annotated people without new annotations: people
from other images are pasted around the person (new crowded scenes), the box is jittered the way a
detector errs, keypoints are dropped or moved, and scenes are mirrored (channels swapped with
`coco.FLIP_PERM`). Everything is numpy and deterministic given the seed; each process builds only its
slice of the global batch, and the slice does not depend on how many processes there are.
"""

import dataclasses
import os

import jax
import numpy as np

from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import parallel
from mpn_jax import prn_grid
from mpn_jax.configs.defaults import prn_data_config  # noqa: F401  (prn_samples.prn_data_config)
from mpn_jax.data import annotations

_K = coco.NUM_KEYPOINTS


def resolve(data_dir, path):
  """`path` itself when absolute or existing, else data_dir/path.

  Raises:
    errors.MissingFileError (a FileNotFoundError) naming the file and the config fields to set.
  """
  path, data_dir = os.path.expanduser(path), os.path.expanduser(data_dir or "")
  full = path if os.path.isabs(path) or not data_dir else os.path.join(data_dir, path)
  if not os.path.isfile(full):
    raise errors.MissingFileError(
        f"PRN annotation file {full} does not exist: set --config.data.data_dir (now "
        f"{data_dir!r}) or the file names (config.data.train_files / val_file), or MPN_COCO_DIR.")
  return full


@dataclasses.dataclass(frozen=True)
class ImagePeople:
  """All person annotations of one image.

  boxes [P, 4] float32 xyxy pixels; keypoints [P, 17, 3] float32 (x, y, v); iscrowd [P] bool;
  num_keypoints [P] int32; ann_ids [P] int64.
  """
  image_id: int
  boxes: np.ndarray
  keypoints: np.ndarray
  iscrowd: np.ndarray
  num_keypoints: np.ndarray
  ann_ids: np.ndarray


def load_image_people(ann_file):
  """Reads a COCO person-keypoints file -> list of ImagePeople (images with a person, id order).

  Every person annotation used is checked first (`annotations.check_person`): integer id and
  image_id, bbox of 4 finite numbers with w, h >= 0, keypoints absent/empty (no labelled keypoint)
  or 51 finite numbers with visibility 0/1/2, iscrowd 0/1.
  Raises:
    errors.MissingFileError if the file does not exist; annotations.AnnotationError (an
    errors.DataError) naming the file, the annotation (index, id, image_id) and the field when the
    file is not JSON (e.g. truncated), has no 'annotations' list or holds a malformed value.
  """
  data = annotations.read_json(ann_file, fields=("annotations",))
  by_image = {}
  for i, a in enumerate(data["annotations"]):
    if isinstance(a, dict) and a.get("category_id", coco.PERSON_CATEGORY_ID) != (
        coco.PERSON_CATEGORY_ID):
      continue
    annotations.check_person(ann_file, a, i)
    by_image.setdefault(a["image_id"], []).append(a)
  out = []
  for image_id in sorted(by_image):
    out.append(ImagePeople(image_id=int(image_id),
                           **annotations.people_arrays(by_image[image_id])))
  return out


def person_index(images, min_keypoints):
  """[S, 2] int32 (image index, person index) of the people that make samples (no crowd, enough
  labelled keypoints)."""
  rows = [(i, p) for i, im in enumerate(images) for p in range(len(im.boxes))
          if not im.iscrowd[p] and (im.keypoints[p, :, 2] > 0).sum() >= min_keypoints]
  return np.array(rows, np.int32).reshape(-1, 2)


def render_inputs(widened_box, keypoints, sigma):
  """PRN input of one widened box: keypoints [Q, 17, 3] (x, y, v) image pixels, the ones with v > 0
  inside the box drawn as Gaussians -> [56, 36, 17] float32. The GT protocol uses it too."""
  kps = np.asarray(keypoints, np.float32).reshape(-1, _K, 3)
  grid = prn_grid.points_to_grid(kps[..., :2], widened_box)
  return prn_grid.rasterize(grid, kps[..., 2] > 0, sigma=sigma)


def render_targets(widened_box, own, sigma):
  """Targets of one person: own [17, 3] -> ([56, 36, 17] float32 per-channel distributions,
  [17] float32 valid). Keypoints outside the widened box cannot be pointed at: invalid."""
  own = np.asarray(own, np.float32)
  grid = prn_grid.points_to_grid(own[:, :2], widened_box)
  valid = (own[:, 2] > 0) & prn_grid.inside_grid(grid)
  t = prn_grid.rasterize(grid[None], valid[None], sigma=sigma)
  total = t.sum(axis=(0, 1))
  t = np.where(total > 0, t / np.maximum(total, 1e-12), 0.0).astype(np.float32)
  return t, (valid & (total > 0)).astype(np.float32)


def make_sample(box, own, others, widen, input_sigma, target_sigma):
  """One sample from a person box [4] xyxy, own keypoints [17, 3] and the other people's [Q, 17, 3]."""
  wbox = prn_grid.widen_boxes(np.asarray(box, np.float32), widen)
  scene = np.concatenate([np.asarray(own, np.float32)[None],
                          np.asarray(others, np.float32).reshape(-1, _K, 3)], axis=0)
  targets, valid = render_targets(wbox, own, target_sigma)
  return {"inputs": render_inputs(wbox, scene, input_sigma), "targets": targets,
          "target_valid": valid}


# ---------------------------------------------------------------------------------------------------
# Augmentation: edits a scene (box, own keypoints, other people's keypoints) in image coordinates.


def _flip(box, own, others):
  # Mirror about the box centre (the box maps onto itself) and swap left/right channels.
  cx2 = box[0] + box[2]
  def mirror(k):
    k = k[..., coco.FLIP_PERM, :].copy()
    k[..., 0] = np.where(k[..., 2] > 0, cx2 - k[..., 0], k[..., 0])
    return k
  return box, mirror(own), mirror(others)


def _compose(rng, box, others, pool, aug):
  """Pastes 1..compose_max_people people from `pool` ([M, 4] boxes, [M, 17, 3] keypoints) around box."""
  pool_boxes, pool_kps = pool
  n = rng.integers(1, aug.compose_max_people + 1)
  w, h = box[2] - box[0], box[3] - box[1]
  cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
  pasted = []
  for j in rng.integers(0, len(pool_boxes), size=n):
    b, k = pool_boxes[j], pool_kps[j].copy()
    s = h / max(b[3] - b[1], 1.0) * np.exp(rng.uniform(-1, 1) * np.log(aug.compose_scale))
    ncx = cx + rng.uniform(-1, 1) * aug.compose_offset * w
    ncy = cy + rng.uniform(-1, 1) * aug.compose_offset * h
    bcx, bcy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    k[:, 0] = (k[:, 0] - bcx) * s + ncx
    k[:, 1] = (k[:, 1] - bcy) * s + ncy
    if rng.random() < 0.5:  # pasted people face either way
      k = k[coco.FLIP_PERM]
      k[:, 0] = 2 * ncx - k[:, 0]
    k[:, :2] *= (k[:, 2:] > 0)
    pasted.append(k)
  return np.concatenate([others, np.stack(pasted)], axis=0)


def augment_scene(rng, box, own, others, pool, aug, widen):
  """Random training edit of a scene. Returns (box [4], own [17, 3], others [Q, 17, 3])."""
  box = np.asarray(box, np.float32).copy()
  own = np.asarray(own, np.float32).copy()
  others = np.asarray(others, np.float32).reshape(-1, _K, 3).copy()
  if aug.compose_prob > 0 and pool is not None and rng.random() < aug.compose_prob:
    others = _compose(rng, box, others, pool, aug)
  if aug.drop_other_prob > 0 and len(others):
    drop = rng.random(others.shape[:2]) < aug.drop_other_prob
    others[..., 2] = np.where(drop, 0, others[..., 2])
  if aug.drop_own_prob > 0:
    drop = rng.random(_K) < aug.drop_own_prob
    own[:, 2] = np.where(drop, 0, own[:, 2])
  if aug.keypoint_jitter > 0:
    wbox = prn_grid.widen_boxes(box, widen)
    cell = np.array([(wbox[2] - wbox[0]) / prn_grid.GRID_W, (wbox[3] - wbox[1]) / prn_grid.GRID_H])
    own[:, :2] += rng.normal(size=(_K, 2)) * aug.keypoint_jitter * cell
    others[..., :2] += rng.normal(size=others.shape[:2] + (2,)) * aug.keypoint_jitter * cell
  if aug.box_shift > 0 or aug.box_scale > 0:
    w, h = box[2] - box[0], box[3] - box[1]
    c = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    c = c + rng.normal(size=2) * aug.box_shift * np.array([w, h])
    wh = np.array([w, h]) * np.exp(rng.normal(size=2) * aug.box_scale)
    box = np.concatenate([c - wh / 2, c + wh / 2]).astype(np.float32)
  if aug.flip_prob > 0 and rng.random() < aug.flip_prob:
    box, own, others = _flip(box, own, others)
  return box, own, others


# ---------------------------------------------------------------------------------------------------
# Sample sources.


class PrnSampleSource:
  """People of one or more annotation files and the function that turns one into a sample."""

  def __init__(self, ann_files, min_keypoints=1, widen=prn_grid.DEFAULT_WIDEN, input_sigma=1.0,
               target_sigma=1.0, augment=None):
    if isinstance(ann_files, (str, os.PathLike)):
      ann_files = [ann_files]
    # A person without a labelled keypoint has no target (every channel masked): 0 would be the
    # same as 1, which a user asking for keypoint-less samples should be told.
    if isinstance(min_keypoints, bool) or not isinstance(min_keypoints, int) or min_keypoints < 1:
      raise errors.ConfigError(
          f"config.data.min_keypoints={min_keypoints!r}: use an integer >= 1 (1, the default, keeps "
          "every person with a labelled keypoint; the official code's rule is 4); a person without "
          "one has no target to learn")
    self.images = [im for f in ann_files for im in load_image_people(f)]
    self.index = person_index(self.images, min_keypoints)
    if not len(self.index):
      raise errors.DataError(f"no person with >= {min_keypoints} keypoints in {list(ann_files)}: lower "
                             "config.data.min_keypoints or check the files")
    self.widen, self.input_sigma, self.target_sigma = widen, input_sigma, target_sigma
    self.augment = augment if (augment is not None and augment.get("enabled", True)) else None
    self.pool = (np.stack([self.images[i].boxes[p] for i, p in self.index]),
                 np.stack([self.images[i].keypoints[p] for i, p in self.index]))

  def __len__(self):
    return len(self.index)

  def sample(self, s, rng=None):
    """Sample number s (dict of numpy arrays); augmented with `rng` when augmentation is on."""
    i, p = self.index[s]
    im = self.images[i]
    box, own = im.boxes[p], im.keypoints[p]
    others = np.delete(im.keypoints, p, axis=0)
    if self.augment is not None and rng is not None:
      box, own, others = augment_scene(rng, box, own, others, self.pool, self.augment, self.widen)
    return make_sample(box, own, others, self.widen, self.input_sigma, self.target_sigma)


def _source(dcfg, files, augment):
  return PrnSampleSource([resolve(dcfg.data_dir, f) for f in files],
                         min_keypoints=dcfg.min_keypoints, widen=dcfg.widen,
                         input_sigma=dcfg.input_sigma, target_sigma=dcfg.target_sigma,
                         augment=augment)


def _stack(samples):
  return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def batch_at(source, step, global_batch_size, seed, process_index=0, process_count=1):
  """This process's slice of global batch number `step`.

  Sample order: every epoch is a fresh permutation (rng [seed, epoch]); each slot of the global
  batch gets its own augmentation rng [seed, step, slot], so the global batch is the same however it
  is split over processes.
  """
  if global_batch_size % process_count:
    raise errors.ConfigError(f"batch_size={global_batch_size} is not divisible by {process_count} processes")
  local = global_batch_size // process_count
  n = len(source)
  slots = np.arange(process_index * local, (process_index + 1) * local)
  positions = step * global_batch_size + slots
  samples = []
  perms = {}
  for slot, pos in zip(slots, positions):
    epoch = int(pos // n)
    if epoch not in perms:
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    rng = np.random.default_rng([seed, step, int(slot), 1])
    samples.append(source.sample(perms[epoch][pos % n], rng))
  return _stack(samples)


def make_prn_iterator(config, mesh=None, start_step=0):
  """Infinite iterator of host-local training batches, from global batch number `start_step` on
  (a resumed run continues the same sequence).

  Reads config.data (`prn_data_config` fields; batch_size is the global batch) and config.seed.
  Yields dicts: 'inputs' [b, 56, 36, 17], 'targets' [b, 56, 36, 17], 'target_valid' [b, 17] float32,
  b = global batch / process count.
  """
  dcfg = config.data
  global_bs = int(dcfg.batch_size)
  parallel.local_batch_size(global_bs, mesh)  # checks divisibility over devices
  source = _source(dcfg, list(dcfg.train_files), dcfg.augment)
  seed = int(config.get("seed", 0))
  pid, pcount = jax.process_index(), jax.process_count()
  step = int(start_step)
  while True:
    yield batch_at(source, step, global_bs, seed, pid, pcount)
    step += 1


def make_prn_eval_set(dcfg, ann_file=None):
  """The fixed validation set: every eligible person of dcfg.val_file (or ann_file), no
  augmentation, in file order. Dict of stacked numpy arrays (see the module docstring)."""
  source = _source(dcfg, [ann_file or dcfg.val_file], None)
  return _stack([source.sample(s) for s in range(len(source))])
