"""The commands, as modules of the package (so that an installed package runs them anywhere):

  python -m mpn_jax.tools.train     --config=configs/branches.py:synthetic --workdir=runs/b
  python -m mpn_jax.tools.evaluate  --model=runs/quickstart
  python -m mpn_jax.tools.predict   --model=runs/quickstart --input=photo.jpg --output=out
  python -m mpn_jax.tools.export    --model=runs/quickstart --format=stablehlo --output=exported

The checkout's root train.py, evaluate.py, predict.py and export.py run these
(`mpn_jax.cli.run_tool`), under their own names. Nothing here is imported by the library.
"""
