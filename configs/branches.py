"""Stage one's config: re-exports mpn_jax/configs/branches.py (the presets, the commands and every
field are documented there), so that --config=configs/branches.py[:preset] works from the checkout."""

from mpn_jax.configs.branches import get_config  # noqa: F401
from mpn_jax.configs.branches import PRESETS  # noqa: F401
