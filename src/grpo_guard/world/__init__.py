"""The CPU toy world: handwritten digits, gold evaluators (never optimised) and hackable proxy rewards.

See ``docs/toy_world.md`` for the design and the measurements.
"""

from .data import (NUM_CLASSES, SPLIT_NAMES, DigitSet, SplitFractions, WorldSplits, label_from_prompt,
                   labels_from_prompts, load_digits_raw, make_splits, prompt_for_label, prompts_for_labels, render)
from .gold import (DEFAULT_GOLD_AVERAGE, GOLD_HIGHER_IS_BETTER, GoldConfig, GoldEvaluator, GoldScores, NormalisedGold,
                   frechet_distance, hf_energy, knn_precision_recall, load_module, normalise_gold, save_module, train_gold,
                   within_label_diversity)
from .proxies import (PROXY_REGISTRY, AestheticProxy, AestheticProxyConfig, ClassifierProxy, ClassifierProxyConfig,
                      InkReward, RewardFn, add_class_cue, add_texture, build_proxy, class_textures, hf_texture,
                      hidden_aesthetic, ink, train_aesthetic_proxy, train_classifier_proxy)

__all__ = [
    "NUM_CLASSES", "SPLIT_NAMES", "DigitSet", "SplitFractions", "WorldSplits", "label_from_prompt",
    "labels_from_prompts", "load_digits_raw", "make_splits", "prompt_for_label", "prompts_for_labels", "render",
    "DEFAULT_GOLD_AVERAGE", "GOLD_HIGHER_IS_BETTER", "GoldConfig", "GoldEvaluator", "GoldScores", "NormalisedGold",
    "frechet_distance", "hf_energy", "knn_precision_recall", "load_module", "normalise_gold", "save_module", "train_gold",
    "within_label_diversity",
    "PROXY_REGISTRY", "AestheticProxy", "AestheticProxyConfig", "ClassifierProxy", "ClassifierProxyConfig",
    "InkReward", "RewardFn", "add_class_cue", "add_texture", "build_proxy", "class_textures", "hf_texture",
    "hidden_aesthetic", "ink", "train_aesthetic_proxy", "train_classifier_proxy",
]
