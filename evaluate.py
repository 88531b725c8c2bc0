"""`python evaluate.py ...` runs `python -m mpn_jax.tools.evaluate ...` (see mpn_jax/tools)."""
from mpn_jax import cli
if __name__ == "__main__":
  cli.run_tool("mpn_jax.tools.evaluate", "evaluate.py")
