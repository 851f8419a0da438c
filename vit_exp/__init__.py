"""vit-exp: Hydra + MLflow experiment tracking for MindSpore Vision Transformers."""

__version__ = "0.1.0"
