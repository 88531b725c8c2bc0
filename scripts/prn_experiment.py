r"""Small PRN experiments on CPU: train on prn_train, score the GT protocol on prn_val.

A plain optax loop (float32) over `mpn_jax.data.prn_samples` batches with `mpn_jax.models`'
PoseResidualNet; the end result is `prn_protocol.evaluate_prn_gt` AP for several assignment
methods. Used to choose the defaults of configs/prn.py:coco_small (see the README's ablation).

  python scripts/prn_experiment.py --steps=600 --seed=0
  python scripts/prn_experiment.py --steps=600 --set=augment.compose_prob=0 --set=target_sigma=2
  python scripts/prn_experiment.py --steps=600 --model=hidden_sizes=,conv_dilations=1,2,4
  # configs/prn.py:coco_small's PRN (linear output, inputs x3), as in the README's ablation:
  python scripts/prn_experiment.py --steps=1500 --model=hidden_sizes=256 --input_scale=3 \
      --methods=greedy,hungarian --windows=1,5 --score_modes=keypoints,assignment

Never tune on ../shared/holdout.
"""

import argparse
import json
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mpn_jax import models
from mpn_jax.data import prn_samples
from mpn_jax.evaluation import prn_protocol


def _parse_value(text, old):
  if isinstance(old, bool):
    return text.lower() in ("1", "true", "yes")
  if isinstance(old, (tuple, list)):
    items = [t for t in text.split(",") if t]
    return tuple(type(old[0])(t) if old else (int(t) if t.lstrip("-").isdigit() else t)
                 for t in items)
  return type(old)(text)


def _override(cfg, assignments):
  for a in assignments:
    key, text = a.split("=", 1)
    node = cfg
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"--set/--model: unknown field {key!r}")
    node[leaf] = _parse_value(text, node[leaf])


def prn_loss(logits, targets, valid):
  """Cross-entropy between each valid channel's target distribution and the spatial softmax."""
  b, h, w, k = logits.shape
  logp = jax.nn.log_softmax(logits.reshape(b, h * w, k), axis=1)
  ce = -(targets.reshape(b, h * w, k) * logp).sum(1)  # [B, K]
  return (ce * valid).sum() / jnp.maximum(valid.sum(), 1.0)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data_dir", default="../shared/data/coco")
  ap.add_argument("--steps", type=int, default=600)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--schedule", default="cosine", choices=("constant", "cosine"))
  ap.add_argument("--weight_decay", type=float, default=0.0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--set", action="append", default=[], help="data config field=value")
  ap.add_argument("--model", default="", help="model config fields, e.g. hidden_sizes=512")
  ap.add_argument("--methods", default="greedy,hungarian,global_greedy,mutual")
  ap.add_argument("--windows", default="1")
  ap.add_argument("--score_modes", default="keypoints")
  ap.add_argument("--input_scale", type=float, default=1.0,
                  help="the model's input_scale (multiplies the input and so its residual)")
  ap.add_argument("--output_relu", type=int, default=-1,
                  help="PRN output layer: 1 ReLU (paper), 0 linear, -1 the model's default")
  ap.add_argument("--eval_train", action="store_true",
                  help="also score the protocol on the training file (over/underfitting)")
  ap.add_argument("--tag", default="")
  ap.add_argument("--save", default="", help="write the trained params (flax msgpack) here")
  args = ap.parse_args()

  dcfg = prn_samples.prn_data_config()
  dcfg.data_dir = args.data_dir
  _override(dcfg, args.set)
  mcfg = models.prn_config()
  _override(mcfg, [m for m in args.model.split(";") if m])
  mcfg.input_scale = args.input_scale
  model = models.build_prn(mcfg)
  if args.output_relu >= 0:
    model = model.clone(output_relu=bool(args.output_relu))

  source = prn_samples._source(dcfg, list(dcfg.train_files), dcfg.augment)  # pylint: disable=protected-access
  x0 = jnp.zeros((1, 56, 36, 17), jnp.float32)
  params = model.init(jax.random.PRNGKey(args.seed), x0, train=False)["params"]
  sched = (optax.cosine_decay_schedule(args.lr, args.steps) if args.schedule == "cosine"
           else optax.constant_schedule(args.lr))
  tx = optax.adamw(sched, weight_decay=args.weight_decay) if args.weight_decay else optax.adam(sched)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch, rng):
    def loss_fn(p):
      logits = model.apply({"params": p}, batch["inputs"], train=True,
                           rngs={"dropout": rng})
      return prn_loss(logits, batch["targets"], batch["target_valid"])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  t0 = time.time()
  rng = jax.random.PRNGKey(args.seed + 1)
  losses = []
  for s in range(args.steps):
    batch = prn_samples.batch_at(source, s, args.batch, args.seed)
    rng, sub = jax.random.split(rng)
    params, opt_state, loss = step(params, opt_state, batch, sub)
    losses.append(float(loss))
    if s % 100 == 0 or s == args.steps - 1:
      print(f"step {s} loss {np.mean(losses[-100:]):.4f} ({time.time() - t0:.0f}s)", flush=True)
  train_s = time.time() - t0
  if args.save:
    with open(args.save, "wb") as f:
      f.write(flax.serialization.to_bytes(params))

  def logits_fn(x):
    return model.apply({"params": params}, x)
  apply = jax.jit(lambda x: models.prn_probabilities(logits_fn(x)))
  val_file = prn_samples.resolve(dcfg.data_dir, dcfg.val_file)
  val = prn_samples.make_prn_eval_set(dcfg)
  val_loss = float(np.mean([prn_loss(logits_fn(val["inputs"][i:i + 64]),
                                     val["targets"][i:i + 64], val["target_valid"][i:i + 64])
                            for i in range(0, len(val["inputs"]), 64)]))
  out = {"tag": args.tag, "steps": args.steps, "seed": args.seed, "set": args.set, "lr": args.lr,
         "input_scale": args.input_scale, "output_relu": args.output_relu,
         "model": args.model, "train_s": round(train_s), "val_loss": round(val_loss, 4)}
  for w in [int(v) for v in args.windows.split(",")]:
    for mode in args.score_modes.split(","):
      for m in args.methods.split(","):
        stats, _ = prn_protocol.evaluate_prn_gt(val_file, "prn", apply, method=m, window=w,
                                                widen=dcfg.widen, input_sigma=dcfg.input_sigma,
                                                score_mode=mode)
        out[f"AP_{m}_w{w}_{mode}"] = round(stats["AP"], 4)
  if args.eval_train:
    for f in dcfg.train_files:
      stats, _ = prn_protocol.evaluate_prn_gt(prn_samples.resolve(dcfg.data_dir, f), "prn", apply,
                                              method="greedy", widen=dcfg.widen,
                                              input_sigma=dcfg.input_sigma)
      out[f"train_AP_greedy_w1_keypoints:{f.split('/')[-1]}"] = round(stats["AP"], 4)
  print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
