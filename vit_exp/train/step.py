"""The train step: MindSpore's ``amp.build_train_network``, with the gradients clipped to a global L2 norm
when ``optim.clip_grad_norm`` is set (off: exactly MindSpore's step)."""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, amp, nn, ops


class ClipByGlobalNorm(nn.Cell):
    """``grads * max_norm / max(norm, max_norm)``, ``norm`` the L2 norm of all ``grads`` together: the
    clipped gradients' global norm is exactly ``max_norm`` (TensorFlow's ``clip_by_global_norm``)."""

    def __init__(self, max_norm: float):
        super().__init__()
        self.max_norm = Tensor(max_norm, ms.float32)

    def construct(self, grads: tuple) -> tuple:
        norm = ops.sqrt(ops.addn([ops.reduce_sum(ops.square(g.astype(ms.float32))) for g in grads]))
        scale = self.max_norm / ops.maximum(norm, self.max_norm)
        return tuple(g * scale.astype(g.dtype) for g in grads)


class ClipThenUpdate(nn.Cell):
    """The ``optimizer`` stepping with clipped gradients; no parameters of its own (the train step's
    names, so its checkpoints, are unchanged)."""

    def __init__(self, optimizer: nn.Optimizer, max_norm: float):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.clip = ClipByGlobalNorm(max_norm)

    def construct(self, grads: tuple):
        return self.optimizer(self.clip(grads))


def build_train_step(
    net: nn.Cell, optimizer: nn.Optimizer, loss_fn: nn.Cell, amp_level: str, clip_grad_norm=None
):
    """``amp.build_train_network(net, optimizer, loss_fn, amp_level)``; with ``clip_grad_norm``, its
    optimizer receives the gradients clipped to that global norm. The optimizer is where MindSpore's
    train cells hand over the final gradients: all-reduced (averaged) over the msrun workers by the
    step's ``grad_reducer`` and unscaled by a loss-scale cell (O2) first, and not called on an overflow,
    so the norm clipped is the global batch's."""
    step = amp.build_train_network(net, optimizer, loss_fn, level=amp_level)
    if clip_grad_norm is not None:
        step.optimizer = ClipThenUpdate(step.optimizer, float(clip_grad_norm))
    return step
