"""The pretraining losses as data (torch-free, so the command line and the tables read them without
importing a model): one spec per loss instead of string tests spread over the code."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossSpec:
    """name: the `--loss` value and the checkpoint's `loss`; method: the table row (the paper's name);
    kernel: True for the cross-pixel kernel losses (an L2-normalised D-dim embedding per pixel, compared
    through K_phi and K_f, sigma used), False for direct cls (logits over a flow codebook of `classes`
    entries, a cross-entropy per pixel, no sigma); logs_kl: training logs its KL to the target (the CE
    losses: their value sits near log N, the KL to the target is what moves)."""

    name: str
    method: str
    kernel: bool
    logs_kl: bool = False

    @property
    def output(self) -> str:
        """The head's output: "embedding" (L2-normalised) or "codebook logits"."""
        return "embedding" if self.kernel else "codebook logits"

    def head_outputs(self, embed_dim: int, classes: int) -> int:
        """The head's output width: D for the kernel losses, the codebook size for direct cls."""
        return embed_dim if self.kernel else classes


LOSS_SPECS = {spec.name: spec for spec in (
    LossSpec("kta", "CPFS-KTA", kernel=True),
    LossSpec("ce", "CPFS-CE", kernel=True, logs_kl=True),
    LossSpec("ce-rev", "CPFS-CE-rev", kernel=True, logs_kl=True),
    LossSpec("direct-cls", "CPFS direct cls", kernel=False),
)}
#: every `--loss`, in the paper's order
LOSSES = tuple(LOSS_SPECS)
#: the kernel losses (cpfs_loss kinds)
KERNEL_LOSSES = tuple(name for name, spec in LOSS_SPECS.items() if spec.kernel)


def loss_spec(name: str) -> LossSpec:
    """The spec of a loss name; ValueError naming the choices for an unknown one."""
    try:
        return LOSS_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}") from None
