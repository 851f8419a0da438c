"""vit-exp's C++ CPU kernels: CPU features (cpu.py), compile and cache (build.py), MindSpore ops
(ops.py), and the plan that decides once which of them a ViT uses (plan.py)."""
