"""`bench import torchvision` / `bench export torchvision`: torchvision's `alexnet()` state dict (a local file;
nothing is downloaded) to and from the project's checkpoint format.

torchvision's AlexNet is the 64-192-384-256-256 variant without groups; it becomes the "alexnet" trunk
(pretrain/alexnet.py TorchvisionAlexNet, the same module names), its 1000-way classifier.6 the
checkpoint's head ({"weight", "bias"}, as `bench baseline supervised` stores its classifier). Its input
convention is RGB in [0, 1] normalised by the ImageNet mean and std, the project's own. CaffeNet trunks
(96-256-384-384-256, grouped conv2/4/5) have no torchvision counterpart: their export is refused, naming
the first layer whose shape differs."""
from __future__ import annotations

from pathlib import Path

import torch

from cpfs_bench.bench.checkpoint import MEAN, STD, CheckpointError, load_checkpoint, save_checkpoint, torch_load
from cpfs_bench.bench.files import atomic_write, sha256_file
from cpfs_bench.pretrain.alexnet import build_trunk

CLASSIFIER = "classifier.6."
# our trunk's layer names for torchvision's parametrised modules, for messages
LAYER_NAMES = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
               "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8"}


def torchvision_reference_state() -> dict[str, torch.Tensor]:
    """The keys and shapes torchvision's alexnet() has (num_classes 1000), freshly initialised."""
    from torchvision.models import alexnet

    return alexnet(weights=None).state_dict()


def import_torchvision(weights, out) -> Path:
    """torchvision alexnet() state dict file -> a checkpoint (arch "alexnet", head = classifier.6). CheckpointError
    naming the file when it is not such a state dict (what is missing, unexpected or of another shape)."""
    weights = Path(weights)
    raw = torch_load(weights)
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not (isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values())):
        raise CheckpointError(f"{weights}: not a state dict (a dict of tensors); save torchvision's model with "
                              f"torch.save(model.state_dict(), path)")
    state = {k.removeprefix("module."): v for k, v in raw.items()}
    expected = torchvision_reference_state()
    missing = [k for k in expected if k not in state and not k.startswith(CLASSIFIER)]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (torchvision: {tuple(expected[k].shape)})" for k in expected
             if k in state and not k.startswith(CLASSIFIER) and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{weights}: not torchvision's alexnet() state dict: "
                              + "; ".join(part for part in (
                                  f"missing {missing[:4]}" if missing else "",
                                  f"unexpected {unexpected[:4]}" if unexpected else "",
                                  f"other shapes {wrong[:3]}" if wrong else "") if part))
    trunk = build_trunk("alexnet")
    trunk.load_state_dict({k: v for k, v in state.items() if not k.startswith(CLASSIFIER)})
    head = {k.removeprefix(CLASSIFIER): v for k, v in state.items() if k.startswith(CLASSIFIER)}
    config = {"import": "torchvision", "weights": str(weights.resolve()), "weights_sha256": sha256_file(weights),
              "classes": int(head["weight"].shape[0]) if "weight" in head else 0}
    extra = {"normalization": {"mean": list(MEAN), "std": list(STD)},
             "input_convention": {"channel_order": "RGB", "pixel_range": 1, "mean": list(MEAN), "std": list(STD),
                                  "crop": 224, "source": "torchvision alexnet()"}}
    return save_checkpoint(out, arch="alexnet", trunk=trunk.state_dict(), head=head, loss="torchvision-import", step=0,
                           config=config, with_rng=False, extra=extra)


def export_torchvision(ckpt, out) -> tuple[Path, bool]:
    """A checkpoint of an "alexnet" trunk -> a state dict file that torchvision's alexnet(num_classes=N) loads
    (classifier.6 from the checkpoint's head when it has one). Returns (path, whether classifier.6 was written).
    ValueError for CaffeNet trunks, naming the first layer whose shape torchvision's AlexNet does not have."""
    state = load_checkpoint(ckpt)
    expected = torchvision_reference_state()
    if state["arch"] != "alexnet":
        ours = build_trunk(state["arch"]).state_dict()
        ours_weights = [v for k, v in ours.items() if k.endswith("weight") and v.dim() in (2, 4)]
        theirs = [(k, v) for k, v in expected.items() if k.endswith("weight") and not k.startswith(CLASSIFIER)]
        for (name, t), o in zip(theirs, ours_weights):
            if tuple(t.shape) != tuple(o.shape):
                layer = LAYER_NAMES[name.removesuffix(".weight")]
                raise ValueError(f"{ckpt}: a {state['arch']} trunk does not fit torchvision's AlexNet: {layer} weights "
                                 f"are {tuple(o.shape)} here, {tuple(t.shape)} in torchvision (CaffeNet is "
                                 f"96-256-384-384-256 with grouped conv2/4/5; torchvision's 64-192-384-256-256)")
    out_state = dict(state["trunk"])
    head = state.get("head") or {}
    with_classifier = {"weight", "bias"} <= set(head) and head["weight"].dim() == 2 and head["weight"].shape[1] == 4096
    if with_classifier:
        out_state[CLASSIFIER + "weight"], out_state[CLASSIFIER + "bias"] = head["weight"], head["bias"]
    out = Path(out)
    atomic_write(out, lambda f: torch.save(out_state, f))
    return out, with_classifier
