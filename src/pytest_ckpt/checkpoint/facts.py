"""What the diagnosis needs to know about a live model beyond its manifest, as plain values.

:class:`ModelFacts` is pure; :meth:`ModelFacts.from_module` reads a module (torch imported
there only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_NORM_TYPES = ("LayerNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
               "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "LocalResponseNorm")


@dataclass(frozen=True)
class ModelFacts:
    """Facts about the model a checkpoint is loaded into."""

    nonpersistent_buffers: frozenset[str] = field(default=frozenset())
    norm_modules: frozenset[str] = field(default=frozenset())  # module names of norm layers
    # modules whose load_state_dict converts legacy weight_norm keys (torch's compat hook)
    weight_norm_compat: frozenset[str] = field(default=frozenset())
    from_model: bool = False  # False: nothing is known about the model (a file, a snapshot)
    # every state_dict key of the model: a caller may diagnose only some of them (the keys a
    # load left out), and a component is absent only if none of its keys are present
    state_keys: frozenset[str] = field(default=frozenset())
    # names of ConvTranspose modules (their weight is [in, out/groups, *k]: dim 0 is the input)
    conv_transposes: frozenset[str] = field(default=frozenset())
    # names of embedding tables (their dim 0 is the vocabulary) and of convolutions (their
    # dims from 2 on are the kernel)
    embeddings: frozenset[str] = field(default=frozenset())
    convolutions: frozenset[str] = field(default=frozenset())

    @classmethod
    def from_module(cls, model: torch.nn.Module) -> ModelFacts:
        state = set(model.state_dict(keep_vars=True))
        import torch

        buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)}
        embeddings: set[str] = set()
        convolutions: set[str] = set()
        norms, compat, transposed = set(), set(), set()
        for name, module in model.named_modules(remove_duplicate=False):
            if type(module).__name__ in _NORM_TYPES or "Norm" in type(module).__name__:
                norms.add(name)
            if "ConvTranspose" in type(module).__name__:  # also ParametrizedConvTranspose1d
                transposed.add(name)
            if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
                embeddings.add(name)
            if isinstance(module, torch.nn.modules.conv._ConvNd):
                convolutions.add(name)
            hooks = getattr(module, "_load_state_dict_pre_hooks", {})
            if any("weight_norm_compat" in _hook_name(hook) for hook in hooks.values()):
                compat.add(name)
        return cls(frozenset(buffers - state), frozenset(norms), frozenset(compat), True,
                   frozenset(state), conv_transposes=frozenset(transposed),
                   embeddings=frozenset(embeddings), convolutions=frozenset(convolutions))


def _hook_name(hook: object) -> str:
    inner = getattr(hook, "hook", hook)  # torch wraps pre-hooks in _WrappedHook
    return str(getattr(inner, "__qualname__", getattr(inner, "__name__", repr(inner))))
