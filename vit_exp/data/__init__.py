"""Datasets: the embedded digits folder, ImageNet labels from meta.mat, image folders, pipelines."""
