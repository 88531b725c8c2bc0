"""`python export.py ...` runs `python -m mpn_jax.tools.export ...` (mpn_jax/tools/export.py)."""
from mpn_jax import cli
if __name__ == "__main__":
  cli.run_tool("mpn_jax.tools.export", "export.py")
