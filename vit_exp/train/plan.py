"""The plan a run's ``trainer`` settings make for a dataset: epochs, steps, validation epochs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainPlan:
    """How many epochs and steps a run takes, and after which epochs it validates."""

    epochs: int
    steps_per_epoch: int
    total_steps: int
    validation_epochs: tuple[int, ...]

    @property
    def stops_early(self) -> bool:
        """Whether ``trainer.max_steps`` ends training before the last epoch's last step."""
        return self.total_steps < self.epochs * self.steps_per_epoch
