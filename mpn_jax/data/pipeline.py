"""Input pipelines of the branches stage: TFDS examples -> augmented per-host numpy batches.

Train: read this process's shard of the split (`tfds.split_for_jax_process`), repeat, shuffle,
decode, one random affine + colour jitter per example (augment.py), targets (targets.py), batch
`batch_size // process_count` examples, prefetch. Every random draw is a stateless op seeded by
(config.seed, process index, position in the stream), so a run is reproducible for a seed.

Eval: the plain letterbox (`preprocess.letterbox`'s geometry), no augmentation, every example
once, the last batch padded with `valid=False` examples (and, on several hosts, all hosts yield the
same number of batches).

Batches are host-local numpy dicts (docs/design.md, data); the training loop makes global arrays
with `parallel.shard_batch`.
"""

import json
import math
import os
import pathlib
import re

import jax
import numpy as np
from mpn_jax import cli  # pylint: disable=g-bad-import-order
cli.import_tensorflow_quietly()  # before TensorFlow first loads: its native start-up notices off
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import parallel
from mpn_jax.configs.defaults import input_config  # noqa: F401  (pipeline.input_config)
from mpn_jax.data import augment
from mpn_jax.data import coco_keypoints
from mpn_jax.data import datasets
from mpn_jax.data import preprocess
from mpn_jax.data import targets as targets_lib

_IMAGE_KEYS = ("image", "person_mask", "ignore_mask")


# ---------------------------------------------------------------------------------------------------
# Per-example functions.


def example_seed(seed, process_index, index):
  """The [2] int64 stateless seed of the `index`-th example of a process's stream."""
  base = tf.stack([tf.cast(seed, tf.int64), tf.cast(process_index, tf.int64)])
  return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def preprocess_train(example, seed, input_cfg):
  """Decoded example + [2] seed -> the targets dict of `targets.make_targets` (one example).

  The crop is the letterboxed image (config.input.augment.center="letterbox") or centred on one of
  the example's people drawn with `seed` ("person"), see augment.py.
  """
  crop = int(input_cfg.get("crop_size", 0)) or None
  if crop is not None:
    augment.check_crop(crop, input_cfg.size, preprocess.HEATMAP_STRIDE)
  geo_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  aug = input_cfg.augment
  people = example["people"] if aug.get("center", "letterbox") == "person" else None
  params = augment.sample_params(geo_seed, aug, people)
  out = augment.augment_example(example, input_cfg.size, params, color_seed, aug, crop=crop)
  return targets_lib.make_targets(out, input_cfg.heatmap_sigma, input_cfg.max_boxes,
                                  input_cfg.max_people)


def preprocess_eval(example, size):
  """Letterbox one decoded example the way `preprocess.letterbox` does.

  Returns dict 'image' [S, S, 3] float32 normalised (zero padding bottom/right), 'image_id' int64,
  'scale' float32 (input = original * scale), 'image_size' [2] int32 (original H, W), 'valid' bool.
  """
  image = example["image"]
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  scale = augment.letterbox_scale(h, w, size)
  nh = tf.clip_by_value(tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32), 1, size)
  nw = tf.clip_by_value(tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32), 1, size)
  resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([nh, nw]), "bilinear",
                            antialias=True)
  resized = coco.normalize_image(tf.clip_by_value(resized, 0.0, 255.0))
  padded = tf.pad(resized, [[0, size - nh], [0, size - nw], [0, 0]])
  return dict(
      image=tf.ensure_shape(padded, [size, size, 3]),
      image_id=tf.cast(example["image_id"], tf.int64),
      scale=scale,
      image_size=tf.stack([h, w]),
      valid=tf.constant(True),
  )


# ---------------------------------------------------------------------------------------------------
# Datasets of examples -> datasets of batches.


def _plain(fn):
  """`fn` for tf.data as it is written: no AutoGraph conversion (the input code has no Python
  control flow on tensors), which otherwise rewrites every function it calls, at each start."""
  return tf.autograph.experimental.do_not_convert(fn)


def _options():
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return options


def train_batches(examples, input_cfg, batch_size, seed, process_index=0, decode_fn=None,
                  start_step=0, num_examples=None):
  """Endless dataset of augmented training batches, resumable at any step.

  Each epoch is `examples` in its stored order shuffled with a seed of (seed, epoch), and every
  example's augmentation is seeded by (seed, process, position in the stream), so the stream is a
  pure function of the step: `start_step=k` yields exactly the batches k, k+1, ... of a run started
  at 0, reading at most one epoch of (still encoded) records to get there.

  Args:
    examples: tf.data.Dataset of examples in a fixed order (docs/design.md features; images may still be
      encoded if `decode_fn` decodes them).
    input_cfg: config.input.
    batch_size: host-local batch size.
    seed: config.seed.
    process_index: folded into every example's seed so hosts draw differently.
    decode_fn: optional example -> example applied after the shuffle (decoding late keeps the
      shuffle buffer small and skipping cheap).
    start_step: the first batch to yield (resuming a run).
    num_examples: examples per epoch (needed when start_step > 0).
  Returns:
    tf.data.Dataset of dicts with [batch_size, ...] tensors (targets.make_targets' keys).
  """
  par = input_cfg.num_parallel_calls
  par = tf.data.AUTOTUNE if par is None or par < 0 else par
  position = int(start_step) * int(batch_size)
  first_epoch, offset = 0, 0
  if position:
    if not num_examples:
      raise ValueError("train_batches: resuming (start_step > 0) needs num_examples")
    first_epoch, offset = divmod(position, int(num_examples))
  buffer = input_cfg.shuffle_buffer

  def epoch(e):
    if buffer > 1:
      return examples.shuffle(buffer, seed=tf.cast(seed, tf.int64) * 1_000_003 + e)
    return examples

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(_plain(epoch))
  ds = ds.skip(offset).enumerate(start=position)

  def prepare(index, example):
    if decode_fn is not None:
      example = decode_fn(example)
    return preprocess_train(example, example_seed(seed, process_index, index), input_cfg)

  ds = ds.map(_plain(prepare), num_parallel_calls=par)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(input_cfg.prefetch).with_options(_options())


def eval_batches(examples, input_cfg, batch_size, num_batches=None, decode_fn=None):
  """Yields letterboxed numpy batches; pads the last one (and up to `num_batches`) with valid=False.

  Args:
    examples: tf.data.Dataset of examples. input_cfg: config.input. batch_size: host-local size.
    num_batches: total batches to yield (padding batches after the data runs out); None: as many as
      the data needs.
    decode_fn: optional example -> example applied first.
  Yields:
    dicts 'image' [b, S, S, 3] float32, 'image_id' [b] int64, 'scale' [b] float32, 'image_size'
    [b, 2] int32, 'valid' [b] bool.
  """
  size = input_cfg.size
  par = input_cfg.num_parallel_calls
  par = tf.data.AUTOTUNE if par is None or par < 0 else par

  def prepare(example):
    if decode_fn is not None:
      example = decode_fn(example)
    return preprocess_eval(example, size)

  ds = examples.map(_plain(prepare), num_parallel_calls=par).batch(batch_size)
  ds = ds.prefetch(input_cfg.prefetch).with_options(_options())
  empty = dict(image=np.zeros((size, size, 3), np.float32), image_id=np.int64(-1),
               scale=np.float32(1.0), image_size=np.zeros(2, np.int32), valid=False)
  count = 0
  for batch in tfds.as_numpy(ds):
    yield _pad_batch(batch, batch_size, empty)
    count += 1
  while num_batches is not None and count < num_batches:
    yield _pad_batch({k: np.asarray(v)[None][:0] for k, v in empty.items()}, batch_size, empty)
    count += 1


def _pad_batch(batch, batch_size, empty):
  return {k: preprocess.pad_axis(v, batch_size, 0, fill=empty[k]) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------
# From TFDS.


def _tfds_split(split):
  base, sep, rest = str(split).partition("[")
  base = {"val": "validation", "eval": "validation"}.get(base, base)
  return base + sep + rest


def _skip_decoding(builder):
  """Decoders that keep image features encoded, and the function that decodes them later."""
  features = builder.info.features
  keys = [k for k in _IMAGE_KEYS if isinstance(features[k], tfds.features.Image)]
  decoders = {k: tfds.decode.SkipDecoding() for k in keys}

  def decode(example):
    return dict(example, **{k: features[k].decode_example(example[k]) for k in keys})

  return decoders, decode


def _num_batches_all_hosts(builder, split, batch_size):
  """Batches the largest host shard needs, so that every host runs the same number of steps."""
  pc = jax.process_count()
  sizes = [builder.info.splits[tfds.split_for_jax_process(split, process_index=p,
                                                           process_count=pc)].num_examples
           for p in range(pc)]
  return max(1, math.ceil(max(sizes) / batch_size))


def make_train_iterator(config, mesh=None, start_step=0):
  """Endless iterator of host-local training batches (docs/design.md, data).

  Args:
    config: the branches config (uses config.dataset, config.input, config.seed).
    mesh: the device mesh (its size must divide config.input.batch_size); None: all devices.
    start_step: first batch to yield; a resumed run gets exactly the batches it would have seen.
  Returns:
    iterator of dicts of numpy arrays with leading axis batch_size // process_count: 'image'
    [b, S, S, 3] f32, 'heatmaps' [b, S/4, S/4, 17] f32, 'mask' / 'weights' [b, S/4, S/4, 1] f32,
    'boxes' [b, M, 4] f32, 'box_labels' [b, M] i32, 'keypoints' [b, P, 17, 3] f32. S is the
    crop size C when config.input.crop_size is set, except on the whole-image steps of
    config.input.whole_every (steps k with (k + 1) % whole_every == 0: S x S, b from
    config.input.whole_batch_size).
  """
  local = parallel.local_batch_size(config.input.batch_size, mesh)
  # The whole-image fields are checked before any data is read.
  every = config.input.get("whole_every", 0)
  if not (isinstance(every, int) and not isinstance(every, bool) and every >= 0):
    raise errors.ConfigError(f"config.input.whole_every={every!r}: use a whole number of steps "
                             "(0: never)")
  if every and not config.input.crop_size:
    raise errors.ConfigError(f"config.input.whole_every={every}: whole-image steps only apply "
                             "with config.input.crop_size > 0 (every step is whole otherwise); "
                             "set it to 0")
  whole_local = parallel.local_batch_size(config.input.whole_batch_size, mesh,
                                          "input.whole_batch_size") if every else 0
  builder = datasets.load_builder(config.dataset)
  split = tfds.split_for_jax_process(_tfds_split(config.dataset.get("train_split", "train")))
  decoders, decode = _skip_decoding(builder)
  # Stored order (TFDS already shuffles examples when writing); epochs are shuffled by seed.
  examples = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                                read_config=tfds.ReadConfig(try_autocache=False))
  examples, num_examples = kept_examples(builder, split, examples,
                                         config.dataset.get("keep_empty", 1.0))
  # Two streams when whole_every > 0, each a function of its own step: of the steps before
  # `start_step`, start_step // every were whole-image steps.
  done_whole = int(start_step) // every if every else 0
  crops = iter(tfds.as_numpy(train_batches(
      examples, config.input, local, config.seed, jax.process_index(), decode,
      start_step=int(start_step) - done_whole, num_examples=num_examples)))
  if not every:
    return crops
  wholes = train_batches(examples, whole_image_input(config.input), whole_local,
                         config.seed + _WHOLE_SEED_OFFSET, jax.process_index(), decode,
                         start_step=done_whole, num_examples=num_examples)
  return _interleave(crops, iter(tfds.as_numpy(wholes)), every, start_step)


# The whole-image stream draws its own examples and augmentations (a different seed), not the
# window stream's.
_WHOLE_SEED_OFFSET = 7919


def whole_image_input(input_cfg):
  """config.input of the whole-image steps (input.whole_every): the same augmentation ranges, but
  the whole letterboxed S x S image, unshifted and uncropped."""
  cfg = input_cfg.copy_and_resolve_references()
  cfg.crop_size = 0
  cfg.augment.center = "letterbox"
  cfg.augment.translate = 0.0
  return cfg


def _interleave(crops, wholes, every, start_step):
  """Step k's batch: from `wholes` when (k + 1) % every == 0, else from `crops`."""
  step = int(start_step)
  while True:
    yield next(wholes) if (step + 1) % every == 0 else next(crops)
    step += 1


def keep_example(example, keep_empty):
  """Scalar bool: the example has a non-crowd person, or it is one of the `keep_empty` fraction of
  the others (chosen by a hash of its image id, so the same ones in every epoch and every run)."""
  has_person = tf.reduce_any(tf.logical_not(tf.cast(example["people"]["iscrowd"], tf.bool)))
  if keep_empty >= 1.0:
    return tf.constant(True)
  if keep_empty <= 0.0:
    return has_person
  # Knuth's multiplicative hash of the id, as a fraction of 2^32.
  h = tf.math.floormod(tf.cast(example["image_id"], tf.int64) * 2654435761, 2**32)
  return has_person | (tf.cast(h, tf.float64) / 2.0**32 < keep_empty)


def kept_examples(builder, split, examples, keep_empty):
  """`examples` without the images that have no annotated person (but the `keep_empty` fraction
  of them), and how many are left per epoch.

  Images without people carry no keypoint signal and, in COCO's files, are about half of them. The
  count (needed to resume a run at any step) takes one pass over the split's records; it is kept in
  a JSON file beside them.
  Returns:
    (tf.data.Dataset, int).
  """
  total = builder.info.splits[split].num_examples
  keep_empty = float(keep_empty)
  if not 0.0 <= keep_empty <= 1.0:
    raise errors.ConfigError(f"config.dataset.keep_empty={keep_empty}: use a fraction in [0, 1] "
                             "(1 keeps every image, 0 only the images with people)")
  if keep_empty >= 1.0:
    return examples, total
  examples = examples.filter(_plain(lambda ex: keep_example(ex, keep_empty)))
  name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(split))
  cache = os.path.join(os.fspath(builder.data_path), f"kept_{name}_{keep_empty:g}.json")
  try:
    with open(cache) as f:
      cached = json.load(f)
    if cached.get("total") == total:
      return examples, int(cached["kept"])
  except (OSError, ValueError):
    pass
  people_only = examples.map(lambda ex: ex["image_id"])  # images stay encoded: cheap
  kept = int(people_only.reduce(np.int64(0), lambda n, _: n + 1).numpy())
  if not kept:
    raise errors.DataError(f"no training image of {builder.data_path} ({split}) has an annotated "
                           "person: set --config.dataset.keep_empty=1 to train on them anyway, or "
                           "check the annotation file")
  try:
    with open(cache + ".tmp", "w") as f:
      json.dump({"total": total, "kept": kept, "keep_empty": keep_empty}, f)
    os.replace(cache + ".tmp", cache)
  except OSError:  # a read-only data_dir: count again next time
    pass
  return examples, kept


def make_eval_iterator(config, split, batch_size):
  """Iterator over one pass of the TFDS `split` of config.dataset, letterboxed (config.input.size),
  in global batches of `batch_size` images.

  Returns:
    iterator of dicts 'image' [b, S, S, 3] f32, 'image_id' [b] i64, 'scale' [b] f32 (original =
    input / scale), 'image_size' [b, 2] i32 (original H, W), 'valid' [b] bool (False on padding),
    b = batch_size // process_count.
  """
  local = parallel.local_batch_size(batch_size)
  builder = datasets.load_builder(config.dataset)
  split = _tfds_split(split)
  decoders, decode = _skip_decoding(builder)
  examples = builder.as_dataset(split=tfds.split_for_jax_process(split), shuffle_files=False,
                                decoders=decoders)
  return eval_batches(examples, config.input, local,
                      _num_batches_all_hosts(builder, split, local), decode)


# ---------------------------------------------------------------------------------------------------
# Examples straight from a COCO annotation file (tests, scripts/show_targets.py).


def example_from_coco(image_record, annotations, image_dir):
  """One example with the TFDS features, built with pycocotools from a COCO json and its images.

  Args:
    image_record: the 'images' entry. annotations: its person annotations. image_dir: the folder.
  Returns:
    dict of numpy arrays (see docs/design.md, data), images decoded.
  """
  h, w = image_record["height"], image_record["width"]
  image = preprocess.load_image(pathlib.Path(image_dir) / image_record["file_name"])
  person, ignore = coco_keypoints.people_masks(annotations, h, w)
  people = [coco_keypoints.person_features(a) for a in annotations]
  keys = dict(bbox=((4,), np.float32), keypoints=((coco.NUM_KEYPOINTS, 3), np.float32),
              num_keypoints=((), np.int32), iscrowd=((), np.bool_), area=((), np.float32),
              id=((), np.int64))
  return dict(
      image=image, image_id=np.int64(image_record["id"]), file_name=image_record["file_name"],
      people={k: np.asarray([p[k] for p in people], dt).reshape((len(people),) + shape)
              for k, (shape, dt) in keys.items()},
      person_mask=person[..., None], ignore_mask=ignore[..., None])


def examples_dataset(examples):
  """tf.data.Dataset over a list of decoded example dicts (e.g. from `example_from_coco`).

  Images and masks are held PNG-encoded (lossless) and decoded in the dataset, people as ragged
  tensors; no Python generator is involved, so an unfinished iterator never blocks interpreter exit.
  """
  if not examples:
    raise ValueError("examples_dataset: got no examples")
  png = lambda key: tf.constant([tf.io.encode_png(ex[key]).numpy() for ex in examples])
  lengths = [len(ex["people"]["bbox"]) for ex in examples]
  people = {k: tf.RaggedTensor.from_row_lengths(
      np.concatenate([ex["people"][k] for ex in examples]), lengths)
            for k in examples[0]["people"]}
  table = dict(image=png("image"), person_mask=png("person_mask"), ignore_mask=png("ignore_mask"),
               image_id=tf.constant([ex["image_id"] for ex in examples], tf.int64),
               file_name=tf.constant([str(ex.get("file_name", "")) for ex in examples]),
               people=people)

  def decode(ex):
    return dict(ex, image=tf.io.decode_png(ex["image"], 3),
                person_mask=tf.io.decode_png(ex["person_mask"], 1),
                ignore_mask=tf.io.decode_png(ex["ignore_mask"], 1))

  return tf.data.Dataset.from_tensor_slices(table).map(_plain(decode))
