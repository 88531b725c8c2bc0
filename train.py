"""`python train.py ...` runs `python -m mpn_jax.tools.train ...` (mpn_jax/tools/train.py)."""
from mpn_jax import cli
if __name__ == "__main__":
  cli.run_tool("mpn_jax.tools.train", "train.py")
