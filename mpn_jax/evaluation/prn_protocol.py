"""The paper's PRN-on-ground-truth protocol: how well the PRN groups perfect keypoints into people.

As the official PRN code runs it, over the images that have people with keypoints:
  * every labelled keypoint of the image is a candidate peak (score 1) of its type;
  * every person annotation's box (crowd and keypoint-less ones included) is a person to fill;
  * each box's PRN input is built as in training (the candidates inside its 21%-widened box drawn as
    Gaussians, `prn_samples.render_inputs`), the PRN scores the candidates and `mpn_jax.inference.assignment`
    assigns them; the instance score comes from the assigned keypoints;
  * results -> COCO keypoint results -> `coco_io.run_coco_eval` over those images.
Needs no images. Non-learned references: assign='center' (per box and type, the candidate inside
the widened box nearest the box centre) and assign='oracle' (each box gets its own keypoints that
fall inside its widened box: the ceiling the 56x36 crop allows). `error_breakdown` compares an
assignment with the oracle's, pair by pair: which kind of error costs how much AP.
"""

import jax
import numpy as np

from mpn_jax import coco
from mpn_jax import errors
from mpn_jax import prn_grid
from mpn_jax.data import preprocess
from mpn_jax.data import prn_samples
from mpn_jax.evaluation import coco_io
from mpn_jax.inference import assignment

_K = coco.NUM_KEYPOINTS
ASSIGNERS = ("prn", "center", "oracle")


def image_candidates(keypoints):
  """Every labelled keypoint as a candidate.

  keypoints [P, 17, 3] -> (cand_xy [17, C, 2] float32, cand_valid [17, C] bool,
  cand_owner [17, C] int32 person index, -1 padding); C = the most keypoints of one type (>= 1).
  """
  kps = np.asarray(keypoints, np.float32).reshape(-1, _K, 3)
  labelled = kps[..., 2] > 0  # [P, K]
  c = max(int(labelled.sum(0).max(initial=0)), 1)
  xy = np.zeros((_K, c, 2), np.float32)
  valid = np.zeros((_K, c), bool)
  owner = np.full((_K, c), -1, np.int32)
  for t in range(_K):
    people = np.nonzero(labelled[:, t])[0]
    xy[t, :len(people)] = kps[people, t, :2]
    valid[t, :len(people)] = True
    owner[t, :len(people)] = people
  return xy, valid, owner


def oracle_assignment(cand_xy, cand_valid, cand_owner, wboxes):
  """Each box n gets its own person's keypoints that fall inside its widened box: idx [N, K]."""
  n = len(wboxes)
  grid = prn_grid.points_to_grid(cand_xy[None], wboxes[:, None, None, :])
  ok = (prn_grid.inside_grid(grid) & cand_valid[None]
        & (cand_owner[None] == np.arange(n)[:, None, None]))  # [N, K, C]
  return np.where(ok.any(-1), ok.argmax(-1), -1).astype(np.int32)


def _bucket(n):
  return max(4, 1 << int(np.ceil(np.log2(max(n, 1)))))


_prn_scores = jax.jit(assignment.candidate_scores, static_argnames=("window",))


_assign_jit = jax.jit(assignment.assign, static_argnames=("method",))


def _people(idx, cand_xy, scores, score_mode):
  """Keypoints [N, K, 3] (x, y, 1 where assigned) and instance scores [N] of an assignment.

  idx [N, K] int32 (-1 none); cand_xy [K, C, 2]; scores [N, K, C] float32 (the assignment's pair
  scores, for score_mode 'assignment'). Every candidate is a labelled keypoint: keypoint score 1.
  """
  got = idx >= 0
  safe = np.maximum(idx, 0)
  xy = cand_xy[np.arange(_K)[None], safe]  # [N, K, 2]
  kps = np.where(got[..., None], np.concatenate([xy, got[..., None]], -1), 0.0).astype(np.float32)
  pair = np.where(got, np.take_along_axis(scores, safe[..., None], axis=2)[..., 0], 0.0)
  shares = (assignment.assignment_shares(scores, idx, np.ones(len(idx), bool))
            if score_mode == "decisive" else None)
  inst = np.asarray(assignment.instance_scores(got.astype(np.float32), pair, mode=score_mode,
                                               shares=shares))
  return kps, inst


ERROR_KINDS = ("wrong", "missed", "extra")


def assignment_errors(idx, oracle):
  """What an assignment got wrong against the oracle's, per (box, keypoint type).

  idx, oracle [N, K] int32 candidate indices (-1 none) -> dict of [N, K] bool:
    wrong: another candidate than the box's own (which lies in its widened box);
    missed: nothing, where the box's own keypoint lies in its widened box;
    extra: a candidate, where the box has no own keypoint of that type in its widened box
      (its person lacks the label, or has no keypoint at all). An extra keypoint does not change
      the person's OKS (COCO scores only labelled keypoints) but does change its instance score.
  """
  idx, oracle = np.asarray(idx), np.asarray(oracle)
  return {"wrong": (idx >= 0) & (oracle >= 0) & (idx != oracle),
          "missed": (idx < 0) & (oracle >= 0),
          "extra": (idx >= 0) & (oracle < 0)}


def error_breakdown(assigned, score, image_ids):
  """Where the AP goes: how often each kind of error happens, and the AP with it corrected.

  assigned: per image (idx [N, K], pair scores [N, K, C], oracle idx [N, K]); score: a function of
  such a list -> (stats, results); image_ids: the images' ids, in the same order. A corrected pair
  scores as the assigner scored it.
  Returns:
    dict of floats: 'right' and, per kind of `ERROR_KINDS`, '<kind>': pairs as a fraction of the
    oracle's pairs (the labelled keypoints inside their own widened box); 'AP_<kind>_fixed': the
    AP with those pairs set to the oracle's; 'worst_image_id' (int), the image with the most
    erring pairs (-1 when none errs), 'worst_image_errors' (int) their number and
    'AP_worst_image_fixed' the AP with that image's assignment set to the oracle's. On small
    validation sets one crowded image can hold much of the gap.
  """
  total = max(sum(int((o >= 0).sum()) for _, _, o in assigned), 1)
  out = {"right": sum(int(((i == o) & (o >= 0)).sum()) for i, _, o in assigned) / total}
  errs = [assignment_errors(i, o) for i, _, o in assigned]  # per image: {kind: [N, K] bool}
  for kind in ERROR_KINDS:
    bad = [e[kind] for e in errs]
    out[kind] = sum(int(b.sum()) for b in bad) / total
    fixed = [(np.where(b, o, i), s, o) for b, (i, s, o) in zip(bad, assigned)]
    out[f"AP_{kind}_fixed"] = score(fixed)[0]["AP"]
  per_image = [sum(int(b.sum()) for b in e.values()) for e in errs]
  worst = int(np.argmax(per_image)) if per_image and max(per_image) > 0 else -1
  out["worst_image_id"] = int(image_ids[worst]) if worst >= 0 else -1
  out["worst_image_errors"] = per_image[worst] if worst >= 0 else 0
  fixed = [(o, s, o) if j == worst else (i, s, o) for j, (i, s, o) in enumerate(assigned)]
  out["AP_worst_image_fixed"] = score(fixed)[0]["AP"]  # (nothing to fix: the AP as it is)
  return out


def format_breakdown(stats):
  """One line of `error_breakdown`'s figures."""
  kinds = ", ".join(f"{stats[k]:.1%} {k}" for k in ERROR_KINDS)
  fixed = ", ".join(f"{k} {stats[f'AP_{k}_fixed']:.3f}" for k in ERROR_KINDS)
  line = (f"keypoints against the oracle's: {stats['right']:.1%} right, {kinds}; AP with each "
          f"kind corrected: {fixed} (now {stats['AP']:.3f})")
  if stats.get("worst_image_id", -1) >= 0:
    line += (f"; the most erring pairs: image {stats['worst_image_id']} "
             f"({stats['worst_image_errors']}), AP with that image set right "
             f"{stats['AP_worst_image_fixed']:.3f}")
  return line


def _run_prn(prn_apply, inputs, batch_size):
  """Applies prn_apply to [M, 56, 36, K] inputs in fixed-size batches (one compilation)."""
  out = []
  for i in range(0, len(inputs), batch_size):
    chunk = inputs[i:i + batch_size]
    n = len(chunk)
    out.append(np.asarray(prn_apply(preprocess.pad_axis(chunk, batch_size)))[:n])
  return np.concatenate(out) if out else np.zeros((0,) + inputs.shape[1:], np.float32)


def evaluate_prn_gt(ann_file, assign="prn", prn_apply=None, method="greedy", window=1,
                    widen=prn_grid.DEFAULT_WIDEN, input_sigma=1.0, score_mode="keypoints",
                    batch_size=64, drop_empty=False, breakdown=False):
  """Runs the protocol on one COCO person-keypoints file.

  Args:
    ann_file: path to a COCO person_keypoints json.
    assign: 'prn' (needs prn_apply), 'center' or 'oracle'.
    prn_apply: function [B, 56, 36, 17] float32 inputs -> [B, 56, 36, 17] probabilities.
    method: `assignment.METHODS` entry (for 'prn' and 'center').
    window: odd window (grid cells) summed around each candidate (`assignment.candidate_scores`).
    widen, input_sigma: must match the PRN's training samples.
    score_mode: `assignment.instance_scores` mode.
    batch_size: PRN batch.
    drop_empty: leave out boxes that got no keypoint (the official code keeps them, score 0).
    breakdown: also the assignment's errors against the oracle (`error_breakdown`; not for
      assign='oracle').
  Returns:
    (stats dict of `coco_io.STAT_NAMES` (+ `error_breakdown`'s keys), list of COCO keypoint
    result dicts).
  """
  if assign not in ASSIGNERS:
    raise ValueError(f"assign must be one of {ASSIGNERS}, got {assign!r}")
  if assign == "prn" and prn_apply is None:
    raise ValueError("assign='prn' needs prn_apply (a function inputs -> PRN probabilities)")
  images = [im for im in prn_samples.load_image_people(ann_file)
            if (im.keypoints[..., 2] > 0).any()]
  if not images:
    raise errors.DataError(
        f"{ann_file} has no person with a labelled keypoint: the PRN-on-ground-truth AP would be "
        "computed on nothing (no statistics written); pass a COCO person_keypoints file with "
        "annotated people (--config.eval.ann_file)")
  wboxes = [prn_grid.widen_boxes(im.boxes, widen) for im in images]
  if assign == "prn":
    inputs = np.stack([prn_samples.render_inputs(b, im.keypoints, input_sigma)
                       for im, wb in zip(images, wboxes) for b in wb])
    probs = _run_prn(prn_apply, inputs, batch_size)
    splits = np.cumsum([len(wb) for wb in wboxes])[:-1]
    probs = np.split(probs, splits)
  assigned = []  # per image: (idx [N, K], pair scores [N, K, C], oracle idx [N, K])
  for i, (im, wb) in enumerate(zip(images, wboxes)):
    cand_xy, cand_valid, owner = image_candidates(im.keypoints)
    n, c = len(wb), cand_xy.shape[1]
    oracle = oracle_assignment(cand_xy, cand_valid, owner, wb)
    if assign == "oracle":
      # Score 1 for the oracle's own pairs only: every score mode agrees (each share is 1).
      idx = oracle
      scores = (np.arange(c)[None, None] == oracle[..., None]).astype(np.float32)
    else:
      # Padded to bucketed shapes so that one compilation serves many images.
      nb, cb = _bucket(n), _bucket(c)
      p_xy = preprocess.pad_axis(cand_xy, cb, 1)
      p_valid = preprocess.pad_axis(cand_valid, cb, 1)
      p_boxes = preprocess.pad_axis(wb, nb, 0, fill=np.array([0, 0, 1, 1], np.float32))
      box_valid = np.arange(nb) < n
      if assign == "center":
        scores = assignment.center_scores(p_xy, p_valid, p_boxes)
      else:
        scores = _prn_scores(preprocess.pad_axis(probs[i], nb, 0), p_xy, p_valid, p_boxes, window)
      idx, _ = _assign_jit(scores, p_valid, box_valid, method=method)
      idx, scores = np.asarray(idx)[:n], np.asarray(scores)[:n, :, :c]
    assigned.append((idx, scores, oracle))

  def score(assignments):
    results = []
    for im, (idx, scores, _) in zip(images, assignments):
      kps, inst = _people(idx, image_candidates(im.keypoints)[0], scores, score_mode)
      keep = (idx >= 0).any(-1) | (not drop_empty)
      results += coco_io.keypoint_results(im.image_id, kps[keep], inst[keep],
                                          boxes=np.asarray(im.boxes)[keep])
    return coco_io.run_coco_eval(ann_file, results, "keypoints",
                                 image_ids=[im.image_id for im in images]), results

  stats, results = score(assigned)
  if breakdown and assign != "oracle":
    stats = dict(stats, **error_breakdown(assigned, score, [im.image_id for im in images]))
  return stats, results
