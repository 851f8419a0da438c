"""An exponential moving average (EMA) of the trainable weights (``trainer.ema``): updated after every
optimizer step, validated as ``val_ema/*``, held in the full-state checkpoint as ``ema.<name>``.

The averages are parameters of a cell attached to the train step, so every checkpoint (synchronous or
written in the background) holds them and a resume loads them with the rest of the training state."""

from __future__ import annotations

from collections.abc import Callable

from mindspore import Parameter, ParameterTuple, nn, ops
from mindspore.train import Callback

from vit_exp.train.callbacks import EMA_RESULTS
from vit_exp.train.state import EMA_PREFIX

_update = ops.MultitypeFuncGraph("ema_update")
_swap = ops.MultitypeFuncGraph("ema_swap")


_descend = ops.ApplyGradientDescent()  # var -= alpha * delta, one fused kernel


@_update.register("Number", "Tensor", "Tensor")
def _update_one(decay: float, average: Parameter, param: Parameter):
    # average - (1 - decay) * (average - param) = decay * average + (1 - decay) * param, in two kernels
    # (per-kernel launches dominate: ~2x faster than mul, mul, add, assign on the default vit_tiny)
    return _descend(average, 1.0 - decay, average - param)


@_swap.register("Tensor", "Tensor")
def _swap_one(average: Parameter, param: Parameter):
    held = ops.deepcopy(param)  # taken before param is overwritten (``param * 1`` is folded to param)
    written = ops.assign(param, ops.depend(average, held))
    return ops.assign(average, ops.depend(held, written))


class EmaWeights(nn.Cell):
    """``ema.<name>`` for each trainable parameter of ``net``, starting at its value now (the pretrained
    or initial weights): ``update()`` makes each ``decay * ema + (1 - decay) * param``; ``swap()``
    exchanges the weights and their averages (twice: back as they were, bit for bit)."""

    def __init__(self, net: nn.Cell, decay: float):
        super().__init__(auto_prefix=False)  # the averages keep their names in the train step's
        self.params = ParameterTuple(net.trainable_params())
        self.averages = self.params.clone(prefix=EMA_PREFIX.rstrip("."), init="same")
        self.decay = float(decay)
        self._update = _Update(self.averages, self.params, self.decay)
        self._swap = _Swap(self.averages, self.params)

    def update(self) -> None:
        self._update()

    def swap(self) -> None:
        self._swap()

    def validating(self, validate: Callable[[], dict]) -> Callable[[], dict]:
        """``validate`` whose results also hold the EMA weights' under ``EMA_RESULTS``."""

        def both() -> dict:
            results = validate()
            self.swap()
            try:
                return {**results, EMA_RESULTS: validate()}
            finally:
                self.swap()

        return both

    def updater(self) -> Callback:
        """The callback that updates the averages after each optimizer step (before any checkpoint)."""
        return EmaUpdate(self)


class _Update(nn.Cell):
    """One compiled launch: every average's update."""

    def __init__(self, averages: ParameterTuple, params: ParameterTuple, decay: float):
        super().__init__(auto_prefix=False)
        self.averages, self.params, self.decay = averages, params, decay
        self.map = ops.HyperMap()

    def construct(self):
        return self.map(ops.partial(_update, self.decay), self.averages, self.params)


class _Swap(nn.Cell):
    """One compiled launch: every parameter exchanged with its average."""

    def __init__(self, averages: ParameterTuple, params: ParameterTuple):
        super().__init__(auto_prefix=False)
        self.averages, self.params = averages, params
        self.map = ops.HyperMap()

    def construct(self):
        return self.map(_swap, self.averages, self.params)


class EmaUpdate(Callback):
    """Updates ``ema`` after every optimizer step; runs before the callbacks that save checkpoints."""

    def __init__(self, ema: EmaWeights):
        super().__init__()
        self.ema = ema

    def on_train_step_end(self, run_context) -> None:
        self.ema.update()
