"""`--init` of the fine-tuning evaluations (voc07-cls, voc07-det, voc12-seg): what happens to the loaded trunk
before fine-tuning, following Krähenbühl et al., ICLR 2016 (philkr/magic_init, magic_init.py):

- "as-is" (the protocol: voc-classification's train_cls.py, Fast R-CNN and FCN load the caffemodel and only
  the new layers are initialised): the pretrained layers as loaded.
- "rescale": magic_init -cs (`calibrateGradientRatio`) on the loaded trunk: every weighted layer, the pretrained
  ones included, scaled by one scalar so that all share one gradient / weight ratio; on BatchNorm trunks the
  BatchNorm is first folded into the weights (deepcontext's debatchnorm.py), after which it is only a bias: it
  must stay on running statistics (--bn-mode eval) and its scale is frozen at 1, so the trunk fine-tunes as the
  plain CaffeNet it now is.
- "reinit-fc": fc6 and fc7 drawn again and initialised data-dependently (magic_init "elwise", what it does to
  the layers a loaded model lacks) on the loaded conv1-conv5; voc-classification's experiments list such
  `...reinitfc` models. A deviation: it discards what pretraining put in fc6/fc7.
- "reinit-fc-rescale": both, in magic_init's order (load, initialise the missing layers, then -cs).

The images measured are `init_images` (magic_init: -nit 10 x -bs 16) of the task's own training set, drawn
(seeded by --seed) and resized whole to 227x227; -cs uses the first batch of 16. The task's new layers (fc8,
the detector's heads, the FCN score layer) keep the protocol's initialisation in every case.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cpfs_bench.bench.images import load_batches
from cpfs_bench.evaluate.configs import FineTuningRun
from cpfs_bench.pretrain.alexnet import (
    INPUT_SIZE,
    PARAMETER_LAYERS,
    CaffeNet,
    data_dependent_init,
    equalize_gradient_ratios,
    fold_batchnorm,
)

INITS = FineTuningRun.INITS
BATCH_SIZE = 16  # magic_init -bs
FC_BIAS = 0.1  # magic_init's default bias (-b)


def check_init(init: str, arch: str, bn_mode: str, path) -> None:
    """ValueError naming the checkpoint when `init` cannot apply to its trunk or to this fine-tuning."""
    if init not in INITS:
        raise ValueError(f"unknown --init {init!r}; choose from {INITS}")
    if init != "as-is" and arch not in ("caffenet", "caffenet_bn"):
        raise ValueError(f"{path}: --init {init} is defined on CaffeNet trunks (caffenet, caffenet_bn), not {arch!r}")
    if init.endswith("rescale") and arch == "caffenet_bn" and bn_mode != "eval":
        raise ValueError(f"{path}: --init {init} folds this trunk's BatchNorm into its weights (deepcontext's "
                         f"debatchnorm.py), after which BatchNorm is only a bias and must not normalise by batch "
                         f"statistics; add --bn-mode eval")


def weight_rms(trunk: CaffeNet) -> dict[str, float]:
    """{layer: RMS of its conv / linear weights}."""
    return {n: float(getattr(trunk, n)[0].weight.detach().double().pow(2).mean().sqrt()) for n in PARAMETER_LAYERS}


def initialize_trunk(trunk: CaffeNet, init: str, files, mean, std, images: int = 160, seed: int = 0) -> dict | None:
    """Apply `init` (INITS) in place to a loaded trainable trunk, drawing `images` of `files` (the task's training
    images) normalised by (mean, std); its own generator, so the global RNG is untouched. Returns None for
    "as-is", else {"init", "images", "folded_batchnorm", "fc" (data_dependent_init's report or None),
    "rounds", "ratio_spread" (max / min gradient-to-weight ratio: first and last round, or None),
    "weight_scale" {layer kept: weight RMS after / before (after folding)}} and leaves the trunk in train mode."""
    if init == "as-is":
        return None
    batches, used = load_batches(list(files), max(1, images // BATCH_SIZE), BATCH_SIZE, INPUT_SIZE, mean, std, seed)
    generator = torch.Generator().manual_seed(seed)
    folded = init.endswith("rescale") and trunk.batch_norm
    if folded:
        fold_batchnorm(trunk)
        for m in trunk.modules():  # now only the layer's bias: its scale must not train back in
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.requires_grad_(False)
    before = weight_rms(trunk)  # (BatchNorm's scale folded in, where it was)
    fc = data_dependent_init(trunk, batches, FC_BIAS, generator, ("fc6", "fc7")) if init.startswith("reinit-fc") \
        else None
    history = equalize_gradient_ratios(trunk, batches[0], generator) if init.endswith("rescale") else []
    after = weight_rms(trunk)
    if not all(math.isfinite(v) and v > 0 for v in after.values()):
        raise RuntimeError(f"--init {init} gave non-finite or zero weights (RMS per layer: {after})")
    trunk.train()

    def spread(ratios: dict) -> float:
        return max(ratios.values()) / min(ratios.values())

    return {"init": init, "images": len(used), "folded_batchnorm": folded, "fc": fc, "rounds": len(history),
            "ratio_spread": [spread(history[0]["ratios"]), spread(history[-1]["ratios"])] if history else None,
            "weight_scale": {n: after[n] / before[n] for n in PARAMETER_LAYERS if not (fc and n in fc)}}
