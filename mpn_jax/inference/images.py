r"""Images on disk in, pictures and predictions.json out: the library call behind `python predict.py`.

  python predict.py --model=MODEL --input=FOLDER_OR_IMAGE --output=OUT_DIR

writes OUT_DIR/<image stem>.png (skeletons, keypoints, boxes, scores; <file name>.png where two
inputs share a stem) and OUT_DIR/predictions.json (per image file name: its people's keypoints
[17 x (x, y, score)], box [x1, y1, x2, y2] and score, in image pixels). OUT_DIR must not be, or lie
inside, the input folder, and no written file may land on an input: the inputs are never
overwritten. (Videos and cameras would get their own module beside this one.)
"""

import json
import os

import jax
import numpy as np

from mpn_jax import errors
from mpn_jax import files
from mpn_jax import visualize
from mpn_jax.inference import predictor as predictor_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(folder):
  """Sorted paths (str) of the image files of a folder: the entries whose name ends in one of
  IMAGE_EXTENSIONS (any case), sub-folders left out; a single image file: [folder].

  Raises:
    errors.MissingFileError: `folder` is neither a folder nor an image file, or holds no image.
  """
  if os.path.isfile(folder) and folder.lower().endswith(IMAGE_EXTENSIONS):
    return [folder]
  if not os.path.isdir(folder):
    raise errors.MissingFileError(f"--input={folder} is not a folder nor an image file: give the "
                                  "folder of the images (or one image) to run on")
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
      raise ValueError(f"output_names: inputs with the same file name: {sorted(shared)}")
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


def predict_images(model, input_path, output, min_score=0.1, inference=None, batch_size=8):
  """Runs the model on every image of a folder (or on one image file), writes a picture per
  readable image (`output_names`) and PREDICTIONS_FILE into `output`.

  No input is replaced: `check_output` refuses an `output` inside the input folder before any
  checkpoint is loaded, and each file is written whole (`files.replace_atomically`). Unreadable
  images are skipped with a warning.

  Args:
    model: str, the model path (`Predictor.load`).
    input_path: str, a folder of images or one image file.
    output: str, the folder for the pictures (created at the first write).
    min_score: draw people with at least this score (predictions.json holds every person).
    inference: dict of inference fields overriding the runs' (`predictor.inference_settings`).
    batch_size: images per step.
  Returns:
    (number of pictures written by this process (int), list of its unreadable image paths (str)).
  Raises:
    errors.MissingFileError: `input_path` is no folder nor image file, or holds no image file.
    errors.ConfigError: `output` would replace an input (see `check_output`).
    errors.DataError: no image could be read.
  """
  paths = list_images(input_path)
  names = output_names(paths)
  check_output(input_path, output, names)
  predictor = predictor_lib.Predictor.load(model, inference=inference, batch_size=batch_size)
  skipped = predictor_lib.Skipped()
  predictions, written, readable = {}, 0, 0
  for batch in predictor_lib.image_batches(list(enumerate(paths)), predictor.image_size,
                                           predictor.batch_size, skipped,
                                           keep_originals=len(paths)):
    out = predictor.run_batch(batch)
    readable += int(out["image_valid"].sum())  # the images every process could read
    offset = jax.process_index() * len(batch["valid"])
    for i, path in enumerate(batch["path"]):
      if not batch["valid"][i]:
        continue
      people = predictor_lib.people(out, offset + i)
      drawn = people["scores"] >= min_score
      picture = visualize.draw_people(batch["originals"][i], keypoints=people["keypoints"][drawn],
                                      boxes=people["boxes"][drawn], scores=people["scores"][drawn],
                                      threshold=0.0)
      visualize.save_png(picture, os.path.join(output, names[path]))
      written += 1  # counted once the file is in place
      predictions[os.path.basename(path)] = [
          {"keypoints": np.round(k, 3).tolist(), "box": np.round(x, 3).tolist(),
           "score": float(s)}
          for k, s, x in zip(people["keypoints"], people["scores"], people["boxes"])]
  if not readable:
    example = (skipped.paths or paths)[0]
    raise errors.DataError(
        f"none of the {len(paths)} image file(s) in --input={input_path} could be read (e.g. "
        f"{example}); give images PIL can open")
  json_dir = output
  if jax.process_count() > 1:
    json_dir = os.path.join(output, f"process_{jax.process_index()}")
  json_path = os.path.join(json_dir, PREDICTIONS_FILE)
  files.replace_atomically(json_path, lambda f: f.write(json.dumps(predictions).encode()))
  print(f"{written} pictures written to {output}, predictions in {json_path}; "
        f"{len(skipped.paths)} unreadable image(s) skipped")
  return written, skipped.paths
