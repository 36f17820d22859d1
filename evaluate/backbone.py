"""Load a frozen trunk for evaluation from a cpfs-bench checkpoint or a plain state_dict (CaffeNet, or
torchvision's AlexNet)."""
from __future__ import annotations

from pathlib import Path

import torch

from cpfs_bench.bench.checkpoint import FORMAT, MEAN, STD, CheckpointError, torch_load, validate_checkpoint
from cpfs_bench.bench.files import sha256_file
from cpfs_bench.bench.losses import LOSS_SPECS
from cpfs_bench.pretrain.alexnet import build_trunk


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


def load_trunk(path, device="cpu", frozen: bool = True) -> tuple[torch.nn.Module, dict]:
    """(trunk, info {arch, format, loss, step, sha256, mean, std, path}).

    frozen=True: eval mode, no gradients, channels-last (`freeze`), as every frozen-trunk evaluation
    uses it; frozen=False: a trainable trunk in train mode on `device`, for fine-tuning.
    Accepts the project's checkpoint format, or a plain state_dict of CaffeNet (with or without
    BatchNorm) or of torchvision's AlexNet (its 1000-way classifier.6 is dropped), told apart by
    the keys. Anything else -> CheckpointError naming the file and what it holds instead."""
    path = Path(path)
    raw = torch_load(path)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        ckpt = validate_checkpoint(path, raw)
        arch, state, fmt, loss, step = ckpt["arch"], ckpt["trunk"], "cpfs-bench", ckpt["loss"], ckpt["step"]
        norm = ckpt.get("extra", {}).get("normalization", {"mean": list(MEAN), "std": list(STD)})
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = _strip_prefix(raw)
        arch = _plain_state_dict_arch(state)
        if arch == "alexnet":  # the ImageNet classifier is not part of a trunk
            state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
        fmt, loss, step, norm = "state_dict", None, None, {"mean": list(MEAN), "std": list(STD)}
    else:
        what = (f"a dict whose keys are {sorted(map(str, raw))[:8]}" if isinstance(raw, dict) and raw
                else "an empty dict" if isinstance(raw, dict) else f"a {type(raw).__name__}")
        raise CheckpointError(f"{path}: holds {what}; expected a cpfs-bench checkpoint (from `bench pretrain` or "
                              f"`bench baseline`) or a trunk's state_dict (a dict of tensors: "
                              f"{'; '.join(EXPECTED_LAYOUT.values())})")
    trunk = build_trunk(arch)
    _check_keys(path, arch, trunk.state_dict(), state)
    trunk.load_state_dict(state)
    info = {"arch": arch, "format": fmt, "loss": loss, "step": step, "sha256": sha256_file(path),
            "mean": norm["mean"], "std": norm["std"], "path": str(path.resolve())}
    if frozen:
        return freeze(trunk, device), info
    return trunk.to(device).train(), info


def _check_keys(path, arch: str, expected: dict, state: dict) -> None:
    """CheckpointError when `state` does not fit the `arch` trunk, listing only what is wrong."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if not (missing or unexpected or wrong_shape):
        return
    if len(set(expected) & set(state)) < len(expected) // 2:
        raise CheckpointError(
            f"{path}: a state_dict of {len(state)} tensors (keys like {sorted(state)[:4]}) that fits none of the "
            f"supported trunks: {'; '.join(f'{a}: {d}' for a, d in EXPECTED_LAYOUT.items())}")

    def listed(keys):
        return f"{keys[:8]}{' ...' if len(keys) > 8 else ''}"

    problems = [f"{name}: {listed(keys)}" for name, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("wrong shapes", [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                                   for k in wrong_shape])) if keys]
    raise CheckpointError(f"{path}: does not match a {arch} trunk ({EXPECTED_LAYOUT[arch]}); {'; '.join(problems)}")


def finetuned_source(state: dict) -> dict:
    """The `info` of the checkpoint a fine-tuned model (voc07-cls, voc12-seg final.pt) was trained from,
    as `load_trunk` gives it, from what the fine-tuning recorded in the model's `extra`."""
    extra = state["extra"]
    return {"arch": state["arch"], "sha256": extra["trunk_sha256"], "path": extra["finetuned_from"],
            "step": extra.get("finetuned_from_step"), "mean": extra["normalization"]["mean"],
            "std": extra["normalization"]["std"], "loss": None, "format": "cpfs-bench"}


def freeze(trunk: torch.nn.Module, device="cpu") -> torch.nn.Module:
    """The trunk as every evaluation uses it: on `device`, eval mode, no gradients, channels-last."""
    # channels-last: on CPU the trunk runs ~20% faster and the probes' big average pools ~4x faster
    # (same values); evaluate/features.py feeds it channels-last images
    trunk.to(device=device, memory_format=torch.channels_last).eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk


def batchnorm_on_running_statistics(model: torch.nn.Module) -> None:
    """Put every BatchNorm layer of a model in training in eval mode: it normalises with its running
    statistics and leaves them unchanged (fine-tuning with one or two images per batch)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def trunk_fingerprint(trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (BN running statistics included)."""
    return {k: v.detach().clone() for k, v in trunk.state_dict().items()}


def assert_trunk_unchanged(trunk: torch.nn.Module, fingerprint: dict[str, torch.Tensor]) -> None:
    """MoCo-style sanity check: the frozen trunk must be bit-identical after evaluation."""
    changed = [k for k, v in trunk.state_dict().items() if not torch.equal(v.detach().cpu(), fingerprint[k].cpu())]
    if changed:
        raise RuntimeError(f"the frozen trunk changed during evaluation (weights or BN statistics): {changed[:8]}"
                           " -- the evaluation is invalid")


def default_run_name(path) -> str:
    """The table row of an evaluated checkpoint when --name is not given: the run folder for the
    files a run writes (runs/pretrain-kta/final.pt -> "pretrain-kta"), else the file's stem."""
    path = Path(path)
    if path.name in ("final.pt", "last.pt") or path.name.startswith("step_"):
        return path.resolve().parent.name
    return path.stem


def evaluation_folder(kind: str, run: str, sha256: str) -> Path:
    """runs/<kind>-<run>-<short sha>: each evaluated checkpoint gets its own folder, so probing a
    second run never collides with the first."""
    return Path("runs") / f"{kind}-{run}-{sha256[:8]}"


def default_method_name(info: dict, path) -> str:
    """The table row name for a checkpoint: CPFS-<loss> for our pretraining losses, else the loss
    (baseline) name or the file's stem."""
    loss = info.get("loss")
    if loss in LOSS_SPECS:
        return LOSS_SPECS[loss].method
    return loss or Path(path).stem
