"""Depth as a rung of the ladder: a smaller model derived from a pretrained one by keeping k of its layers.

The rule (`kept_layers`): keep the first k-1 decoder layers and the last one; the block dropped is
the contiguous run of layers just below the last. Two layer-pruning studies point there:

- Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers": the layers whose
  removal changes the representation least sit deep in the network but before the final layer,
  which must stay; their simple, data-free rule (drop from the penultimate layer downwards, keep the
  last) does about as well as the similarity-searched block once the model is finetuned (healed),
  and a sweep finetunes every rung.
- Men et al. 2024, "ShortGPT": the Block Influence of the deep layers, save the last, is the lowest.

The rule needs no calibration data, so every worker and the driver derive the same layers from
(total, k) alone, and the rung's parameter count is exact before any weights are read.
"""

from __future__ import annotations

import copy

import torch

from ftray.checks import is_int
from ftray.errors import FtrayInputError


def kept_layers(total: int, k: int) -> list[int]:
    """The indices (ascending) of the decoder layers a k-layer rung keeps out of `total`."""
    if not (isinstance(total, int) and total >= 1):
        raise ValueError(f"a model has at least one layer, got total={total!r}")
    if not (is_int(k, 1, plain=True) and k <= total):
        raise FtrayInputError(f"layers must be an int from 1 to the model's {total} decoder layers, got {k!r}")
    if k == total:
        return list(range(total))
    return [*range(k - 1), total - 1]


def _per_layer_settings(config, total: int) -> list[str]:
    """Config entries that hold one value per layer (Qwen2's layer_types, say): they shrink with it."""
    return [key for key, value in config.to_dict().items()
            if isinstance(value, (list, tuple)) and len(value) == total and key != "architectures"]


def shrink_config(config, kept: list[int]) -> None:
    """Make `config` (in place) describe the model with only the `kept` decoder layers."""
    total = config.num_hidden_layers
    for key in _per_layer_settings(config, total):
        value = getattr(config, key)
        setattr(config, key, type(value)(value[i] for i in kept))
    config.num_hidden_layers = len(kept)


def pruned_config(config, kept: list[int]):
    config = copy.deepcopy(config)
    shrink_config(config, kept)
    return config


def _decoder_layers(model) -> tuple[torch.nn.Module, str]:
    """(owner, attribute) of the model's list of decoder layers: the ModuleList as long as the config says."""
    total = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == total and name:
            owner, _, attr = name.rpartition(".")
            return model.get_submodule(owner), attr
    raise FtrayInputError(f"{type(model).__name__}: no list of {total} decoder layers found to prune")


def prune_layers(model, kept: list[int]):
    """Keep only the `kept` decoder layers of `model` (in place), renumbered so the KV cache still works."""
    owner, attr = _decoder_layers(model)
    layers = getattr(owner, attr)
    setattr(owner, attr, torch.nn.ModuleList([layers[i] for i in kept]))
    for new_index, layer in enumerate(getattr(owner, attr)):
        # Each attention module indexes the generation cache by its layer_idx: the gaps must close.
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    shrink_config(model.config, kept)
    return model
