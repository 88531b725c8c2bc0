"""Training of both stages: train state, steps and the loop (checkpoints: `mpn_jax.checkpoints`)."""

from mpn_jax import cli

cli.import_tensorflow_quietly()  # before clu (loop.py) imports TensorFlow: its native notices off

# pylint: disable=g-import-not-at-top,wrong-import-position
from mpn_jax.training.loop import NonFiniteLossError
from mpn_jax.training.loop import train_and_evaluate
from mpn_jax.training.state import TrainState
