"""vit-exp's C++ CPU kernels: cpu.py (features), build.py (compile, cache), ops.py (Custom ops), plan.py."""
