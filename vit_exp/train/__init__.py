"""Training pieces (plain MindSpore): loss, metrics, LR schedules, optimizers, callbacks, the fit loop."""
