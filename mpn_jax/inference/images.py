r"""Images on disk in, pictures and predictions.json out: the library call behind `python predict.py`.

  python predict.py --model=MODEL --input=FOLDER_OR_IMAGE_OR_GLOB --output=OUT_DIR

writes OUT_DIR/<image stem>.png (the people drawn on the image's own pixels; <file name>.png where
two inputs share a stem) and OUT_DIR/predictions.json, a COCO keypoint results list (one record
per person: image_id, file_name, category_id 1, keypoints [x, y, score] * 17 flat, score, bbox
[x, y, w, h], in image pixels; `coco_results.keypoint_results`). OUT_DIR must not be, or lie
inside, a folder of the inputs, and no written file may land on an input: the inputs are never
overwritten. Videos and webcams: `mpn_jax.inference.video`.
"""

import glob
import json
import os

import jax

from mpn_jax import errors
from mpn_jax import files
from mpn_jax import logs
from mpn_jax import visualize
from mpn_jax.inference import coco_results
from mpn_jax.inference import predictor as predictor_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_glob(pattern):
  """True for a --input that is a glob pattern (holds *, ? or [) rather than an existing path."""
  return glob.has_magic(pattern) and not os.path.exists(pattern)


def list_images(folder):
  """Sorted paths (str) of the image files of a folder: the entries whose name ends in one of
  IMAGE_EXTENSIONS (any case), sub-folders left out; a single image file: [folder]; a glob
  pattern (`is_glob`; ** matches sub-folders): its matching image files, sorted.

  Raises:
    errors.MissingFileError: `folder` is neither a folder nor an image file, or holds no image;
      a glob matches no image file.
  """
  if is_glob(folder):
    paths = sorted(p for p in glob.glob(os.path.expanduser(folder), recursive=True)
                   if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))
    if not paths:
      raise errors.MissingFileError(
          f"--input={folder} matches no image file ({', '.join(IMAGE_EXTENSIONS)}); quote the "
          "pattern so that the shell leaves it to predict.py")
    return paths
  if os.path.isfile(folder) and folder.lower().endswith(IMAGE_EXTENSIONS):
    return [folder]
  if not os.path.exists(folder):
    raise errors.MissingFileError(f"--input={folder}: no such file or folder: give an image file, "
                                  "a folder of images, a quoted glob pattern, a video file or a "
                                  "webcam index")
  if not os.path.isdir(folder):
    raise errors.MissingFileError(f"--input={folder} is not a folder, an image file "
                                  f"({', '.join(IMAGE_EXTENSIONS)}) nor a video file: give the "
                                  "folder of the images (or one image, or a video) to run on")
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)
                 and not os.path.isdir(os.path.join(folder, n)))
  if not names:
    raise errors.MissingFileError(
        f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in --input={folder}")
  return [os.path.join(folder, n) for n in names]


PREDICTIONS_FILE = "predictions.json"


def output_names(paths):
  """The picture file name of each input image: distinct inputs never share one.

  An image keeps its stem (photo.jpg -> photo.png) when no other input has that stem; inputs that
  share a stem (photo.jpg, photo.png) each take their whole file name (photo.jpg.png,
  photo.png.png). A stem name can still meet a whole name (beside those two, photo.jpg.png would
  keep the stem name photo.jpg.png), so the rule repeats until no two inputs share a name: the
  whole names of the files of one folder are distinct, so it ends. Names are compared as they
  are: a.JPG and a.jpg are two files on Linux, and become a.JPG.png and a.jpg.png.

  Args:
    paths: list of str, image files of one folder (distinct base names), e.g. `list_images`.
  Returns:
    dict path -> picture file name (str ending in .png, so never PREDICTIONS_FILE).
  """
  whole = set()  # the paths named by their whole file name
  while True:
    names = {}
    for p in paths:
      base = os.path.basename(p)
      names[p] = (base if p in whole else os.path.splitext(base)[0]) + ".png"
    claims = {}
    for p, name in names.items():
      claims.setdefault(name, []).append(p)
    shared = {p for group in claims.values() if len(group) > 1 for p in group}
    if not shared:
      return names
    if shared <= whole:  # only two inputs with one base name (two folders) get here
      raise ValueError(f"inputs with the same file name: {sorted(shared)}")
    whole |= shared


def check_output(images, output, names):
  """Refuses an --output where a written file would replace an input image.

  Refused: `output` is the `images` folder or a folder inside it (compared as real paths, after
  symlinks and `..`, and by device and inode, so another spelling of the same folder is caught
  too), or a picture / PREDICTIONS_FILE would land where an input image really is (an input that
  is a symlink to a file of `output`). Reads no image: run it before loading checkpoints.

  Args:
    images: str, the --input folder or image file (it exists); for a file only the second rule
      applies.
    output: str, the --output folder (it need not exist yet).
    names: `output_names` of the input image paths.
  Raises:
    errors.ConfigError: naming --output and --input, and what to do.
  """
  images_real = os.path.realpath(images)
  output_real = os.path.realpath(output)
  folder = output_real
  while os.path.isdir(images):
    try:
      same = folder == images_real or os.path.samefile(folder, images_real)
    except OSError:  # this part of --output does not exist yet
      same = False
    if same:
      where = "is the --input folder" if folder == output_real else (
          "is inside the --input folder")
      raise errors.ConfigError(
          f"--output={output} {where} (--input={images}): predictions are kept out of the "
          "folder of the input images so that none of them can be replaced; choose an --output "
          f"folder outside --input, e.g. --output={images_real.rstrip(os.sep)}_predictions")
    parent = os.path.dirname(folder)
    if parent == folder:
      break
    folder = parent
  # The last component is not resolved: os.replace replaces a symlink, not the file it points to.
  inputs = {os.path.realpath(p): p for p in names}
  for name in [*names.values(), PREDICTIONS_FILE]:
    target = os.path.join(output_real, name)
    if target in inputs:
      raise errors.ConfigError(
          f"--output={output}: writing {name} there would replace the file {target}, which the "
          f"input image {inputs[target]} (--input={images}) links to; choose an --output folder "
          "that holds none of the input images")


def image_ids(paths):
  """The COCO image_id of each input: int(stem) when every stem is a distinct number (COCO's
  000000397133.jpg -> 397133, so that the results can be scored against COCO annotations), else
  the position in `paths` (0, 1, ...). Returns a list of int aligned with paths."""
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
    return [int(s) for s in stems]
  return list(range(len(paths)))


def people_records(image_id, people, file_name=None, extra=None):
  """COCO keypoint results (`coco_results.keypoint_results`, coordinates to 3 decimals) of one
  image's people (a `predictor.people` dict), each with 'file_name' (when given) and `extra`."""
  records = coco_results.keypoint_results(image_id, people["keypoints"], people["scores"],
                                          boxes=people["boxes"], decimals=3)
  for r in records:
    if file_name is not None:
      r["file_name"] = file_name
    r.update(extra or {})
  return records


def predict_images(model, input_path, output, min_score=0.1, inference=None, batch_size=8,
                   parts=visualize.PARTS, min_keypoint_score=0.0):
  """Runs the model on every image of a folder, of a glob pattern or on one image file, writes a
  picture per readable image (`output_names`) and PREDICTIONS_FILE into `output`.

  No input is replaced: `check_output` refuses an `output` inside the input folder before any
  checkpoint is loaded, and so does `files.check_outputs` a file in `output` that would be
  replaced and that predict did not write there; each file is written whole
  (`files.replace_atomically`). Unreadable images are skipped with a warning.

  Args:
    model: str, the model path (`Predictor.load`).
    input_path: str, a folder of images, one image file or a glob pattern (`list_images`).
    output: str, the folder for the pictures (created at the first write).
    min_score: draw and write people with at least this score.
    inference: dict of inference fields overriding the runs' (`predictor.inference_settings`).
    batch_size: images per step.
    parts: what to draw (`visualize.PARTS`).
    min_keypoint_score: draw keypoints (and limbs) with a score above this.
  Returns:
    (number of pictures written by this process (int), list of its unreadable image paths (str)).
  Raises:
    errors.MissingFileError: `input_path` is no folder nor image file, or holds no image file.
    errors.ConfigError: `output` would replace an input (see `check_output`) or a file predict did
      not write (`files.check_outputs`), or is a file, or a glob matches
      two files of one name in different folders.
    errors.DataError: no image could be read.
  """
  paths = list_images(input_path)
  try:
    names = output_names(paths)
  except ValueError as e:  # a glob over several folders
    raise errors.ConfigError(f"--input={input_path}: {e}; their pictures would share a name: "
                             "narrow the pattern or run once per folder") from e
  if is_glob(input_path):  # each folder of the matches is an input folder
    for folder in sorted({os.path.dirname(p) or "." for p in paths}):
      check_output(folder, output, names)
  else:
    check_output(input_path, output, names)
  if os.path.exists(output) and not os.path.isdir(output):
    raise errors.ConfigError(f"--output={output} is a file: give a folder (it is created when "
                             "missing)")
  json_names = [PREDICTIONS_FILE]
  if jax.process_count() > 1:  # one JSON per process
    json_names = [os.path.join(f"process_{i}", PREDICTIONS_FILE)
                  for i in range(jax.process_count())]
  json_name = json_names[jax.process_index() % len(json_names)]
  # Before the model loads: a file of the user's in the way stops the run, not a later overwrite.
  # Each picture is made from its image, the predictions from the whole input: a later run may
  # replace them only from the same one (not the pictures of another folder's photo.jpg).
  outputs = {**{name: os.path.abspath(p) for p, name in names.items()},
             **{j: os.path.abspath(os.path.expanduser(input_path)) for j in json_names}}
  files.check_outputs(output, outputs, f"--output={output}", "predict.py")

  def record():  # process 0 lists every process's outputs, just before its first write
    if jax.process_index() == 0:
      files.record_outputs(output, outputs)

  ids = dict(zip(paths, image_ids(paths)))
  predictor = predictor_lib.Predictor.load(model, inference=inference, batch_size=batch_size)
  skipped = predictor_lib.Skipped()
  predictions, written, readable, done = [], 0, 0, 0
  progress = logs.Progress(len(paths[jax.process_index()::jax.process_count()]), "images",
                           unit="image")
  for batch in predictor_lib.image_batches(list(enumerate(paths)), predictor.image_size,
                                           predictor.batch_size, skipped,
                                           keep_originals=len(paths)):
    out = predictor.run_batch(batch)
    readable += int(out["image_valid"].sum())  # the images every process could read
    offset = jax.process_index() * len(batch["valid"])
    for i, path in enumerate(batch["path"]):
      if not batch["valid"][i]:
        continue
      people = predictor_lib.people(out, offset + i, min_score, batch["originals"][i].shape)
      picture = visualize.draw_people(batch["originals"][i], keypoints=people["keypoints"],
                                      boxes=people["boxes"], scores=people["scores"],
                                      threshold=min_keypoint_score, parts=parts)
      if not written:
        record()
      visualize.save_png(picture, os.path.join(output, names[path]))
      written += 1  # counted once the file is in place
      predictions += people_records(ids[path], people, file_name=os.path.basename(path))
    # The images of this batch (not the padding) and those skipped as unreadable while reading it.
    done += sum(1 for p in batch["path"] if p)
    progress.update_to(done + len(skipped.paths))
  progress.close()
  if not readable:
    example = (skipped.paths or paths)[0]
    raise errors.DataError(
        f"none of the {len(paths)} image file(s) in --input={input_path} could be read (e.g. "
        f"{example}); give images PIL can open")
  json_path = os.path.join(output, json_name)
  record()
  files.replace_atomically(json_path, lambda f: f.write(json.dumps(predictions).encode()))
  print(f"{written} pictures written to {output}, predictions in {json_path}; "
        f"{len(skipped.paths)} unreadable image(s) skipped")
  return written, skipped.paths
