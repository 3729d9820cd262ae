"""``grpo-guard plan``: a GPU recipe's real-shape models built on the meta device, and its per-rank memory.

:mod:`.architectures` holds the published configurations and builds the recipe's backbone from them;
:mod:`.estimate` measures it on meta tensors and adds up the memory of a rank."""

from .architectures import ARCHITECTURES, REWARD_MODEL_PARAMS, Architecture, architecture_of, meta_backbone
from .estimate import HEADROOM, Plan, format_plan, plan_recipe

__all__ = ["ARCHITECTURES", "REWARD_MODEL_PARAMS", "Architecture", "architecture_of", "meta_backbone", "HEADROOM",
           "Plan", "format_plan", "plan_recipe"]
