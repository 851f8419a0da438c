"""MLflow integration: run lifecycle, the training callback, model registry and the pyfunc model."""
