"""Training of both stages: train state, steps, loop and Orbax checkpoints."""

from mpn_jax.training.checkpoints import restore_latest
from mpn_jax.training.checkpoints import restore_variables
from mpn_jax.training.loop import NonFiniteLossError
from mpn_jax.training.loop import train_and_evaluate
from mpn_jax.training.state import TrainState
