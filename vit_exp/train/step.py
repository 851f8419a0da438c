"""The train step: MindSpore's ``amp.build_train_network``, with the gradients clipped to a global L2 norm
when ``optim.clip_grad_norm`` is set, and the network given the optimizer step's drop-path key when
``model.drop_path_rate`` is on (both off: exactly MindSpore's step)."""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, amp, nn, ops
from mindspore.ops import functional as F

from vit_exp.models import counter_rng


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


class WithStepLossCell(nn.Cell):
    """MindSpore's loss cell (``nn.WithLossCell``, or AMP's that casts to float32) calling
    ``backbone(data, key)``, ``key`` the drop-path key of the optimizer's ``global_step`` (read before
    the step's update increments it: step t's masks are drawn with t = the steps done before it).
    ``global_step`` is the optimizer's Parameter itself (one entry in a checkpoint, under its name)."""

    def __init__(self, backbone: nn.Cell, loss_fn: nn.Cell, global_step, key: int, cast_fp32: bool):
        super().__init__(auto_prefix=False)
        self._backbone = backbone
        self._loss_fn = loss_fn
        self.global_step = global_step
        self.key = key
        self.cast_fp32 = cast_fp32

    def construct(self, data, label):
        out = self._backbone(data, counter_rng.step_key(self.global_step, self.key))
        if self.cast_fp32:
            out = F.mixed_precision_cast(ms.float32, out)
            label = F.mixed_precision_cast(ms.float32, label)
        return self._loss_fn(out, label)


def build_train_step(
    net: nn.Cell,
    optimizer: nn.Optimizer,
    loss_fn: nn.Cell,
    amp_level: str,
    clip_grad_norm=None,
    seed: int = 0,
    rank: int = 0,
):
    """``amp.build_train_network(net, optimizer, loss_fn, amp_level)``; with ``clip_grad_norm``, its
    optimizer receives the gradients clipped to that global norm. The optimizer is where MindSpore's
    train cells hand over the final gradients: all-reduced (averaged) over the msrun workers by the
    step's ``grad_reducer`` and unscaled by a loss-scale cell (O2) first, and not called on an overflow,
    so the norm clipped is the global batch's.

    A ``net`` that ``uses_drop_path`` (the ViT with ``model.drop_path_rate`` > 0) gets its loss cell
    replaced by ``WithStepLossCell`` over the same backbone (as AMP prepared it: cast in place or in
    ``_OutputTo32``, both forwarding the key) and loss: its masks are a function of the optimizer step,
    ``seed`` (``trainer.seed``) and ``rank`` (the msrun worker's), so a resumed run repeats them. The
    step's parameters and their names do not change (the key reads the optimizer's ``global_step``)."""
    step = amp.build_train_network(net, optimizer, loss_fn, level=amp_level)
    if getattr(net, "uses_drop_path", False):
        losses = step.network  # nn.WithLossCell (O0 / O1 / float32) or AMP's casting one (O2 / O3)
        step.network = WithStepLossCell(
            losses._backbone,
            losses._loss_fn,
            optimizer.global_step,
            counter_rng.run_key(seed, rank),
            cast_fp32=not isinstance(losses, nn.WithLossCell),
        )
        step.network.set_grad()
    if clip_grad_norm is not None:
        step.optimizer = ClipThenUpdate(step.optimizer, float(clip_grad_norm))
    return step
