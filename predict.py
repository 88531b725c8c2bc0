"""`python predict.py ...` runs `python -m mpn_jax.tools.predict ...` (mpn_jax/tools/predict.py)."""
from mpn_jax import cli
if __name__ == "__main__":
  cli.run_tool("mpn_jax.tools.predict", "predict.py")
