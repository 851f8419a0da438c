"""vit-exp's Hydra sweeper on a persistent, shareable Optuna (4.x) study: ``hydra/sweeper=optuna_study``."""
