"""grpo-guard: Flow-GRPO and GRPO-Guard for flow-matching image generators, kept honest.

The public algorithm API (pure tensor functions) is re-exported here::

    from grpo_guard import sde_step, flow_sigmas, group_advantages, policy_loss

See ``docs/api.md``.
"""

from .core import *  # noqa: F401,F403
from .core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = ["__version__", *_core_all]
