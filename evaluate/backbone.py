"""Load a frozen trunk for evaluation from a cpfs-bench checkpoint or a plain state_dict (CaffeNet, or
torchvision's AlexNet)."""
from __future__ import annotations

from pathlib import Path

import torch

from bench.checkpoint import FORMAT, CheckpointError, load_checkpoint
from pretrain.alexnet import build_trunk
from pretrain.data import MEAN, STD
from results.store import sha256_file


def _strip_prefix(state: dict) -> dict:
    """Accept state dicts saved from wrappers (DataParallel's 'module.', a 'trunk.' attribute)."""
    for prefix in ("module.", "trunk.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


EXPECTED_LAYOUT = {
    "caffenet_bn": "CaffeNet with BatchNorm as in pretrain/alexnet.py, keys like conv1.0.weight, conv1.1.running_mean",
    "caffenet": "CaffeNet as in pretrain/alexnet.py, keys like conv1.0.weight, conv1.0.bias",
    "alexnet": "torchvision.models.alexnet(), keys features.0.weight ... classifier.4.bias (classifier.6 is ignored)",
}


def _plain_state_dict_arch(state: dict) -> str:
    """Which trunk a plain state_dict is for, from its keys."""
    if any(k.startswith("features.") for k in state):
        return "alexnet"
    return "caffenet_bn" if any(k.endswith("running_mean") for k in state) else "caffenet"


def load_trunk(path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """(trunk in eval mode with requires_grad off, info {arch, format, loss, sha256, mean, std, path}).

    Accepts the project's checkpoint format, or a plain state_dict of CaffeNet (with or without
    BatchNorm) or of torchvision's AlexNet (its 1000-way classifier.6 is dropped), told apart by
    the keys. Anything else -> CheckpointError listing the missing and unexpected keys against what
    was expected."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a loadable PyTorch file ({type(e).__name__}: {e})") from e
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        ckpt = load_checkpoint(path)
        arch, state, fmt, loss = ckpt["arch"], ckpt["trunk"], "cpfs-bench", ckpt["loss"]
        norm = ckpt.get("extra", {}).get("normalization", {"mean": list(MEAN), "std": list(STD)})
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = _strip_prefix(raw)
        arch = _plain_state_dict_arch(state)
        if arch == "alexnet":  # the ImageNet classifier is not part of the trunk
            state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
        fmt, loss, norm = "state_dict", None, {"mean": list(MEAN), "std": list(STD)}
    else:
        raise CheckpointError(f"{path}: expected a cpfs-bench checkpoint or a plain CaffeNet / torchvision AlexNet "
                              f"state_dict (a dict of tensors), got {type(raw).__name__}")
    trunk = build_trunk(arch)
    expected = trunk.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{path}: does not match a {arch} trunk ({EXPECTED_LAYOUT[arch]}); "
            f"missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}; unexpected keys: "
            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}; wrong shapes: {wrong_shape[:8]}")
    trunk.load_state_dict(state)
    return freeze(trunk, device), {"arch": arch, "format": fmt, "loss": loss, "sha256": sha256_file(path),
                   "mean": norm["mean"], "std": norm["std"], "path": str(path.resolve())}


def freeze(trunk: torch.nn.Module, device="cpu") -> torch.nn.Module:
    """The trunk as every evaluation uses it: on `device`, eval mode, no gradients, channels-last."""
    # channels-last: on CPU the trunk runs ~20% faster and the probes' big average pools ~4x faster
    # (same values); evaluate/features.py feeds it channels-last images
    trunk.to(device=device, memory_format=torch.channels_last).eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk


def trunk_fingerprint(trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (BN running statistics included)."""
    return {k: v.detach().clone() for k, v in trunk.state_dict().items()}


def assert_trunk_unchanged(trunk: torch.nn.Module, fingerprint: dict[str, torch.Tensor]) -> None:
    """MoCo-style sanity check: the frozen trunk must be bit-identical after evaluation."""
    changed = [k for k, v in trunk.state_dict().items() if not torch.equal(v.detach().cpu(), fingerprint[k].cpu())]
    if changed:
        raise RuntimeError(f"the frozen trunk changed during evaluation (weights or BN statistics): {changed[:8]}"
                           " -- the evaluation is invalid")


LOSS_METHOD_NAMES = {"kta": "CPFS-KTA", "ce": "CPFS-CE", "ce-rev": "CPFS-CE-rev", "direct-cls": "CPFS direct cls"}


def default_method_name(info: dict, path) -> str:
    """The table row name for a checkpoint: CPFS-<loss> for our pretraining losses, else the loss
    (baseline) name or the file's stem."""
    loss = info.get("loss")
    return LOSS_METHOD_NAMES.get(loss, loss or Path(path).stem)
