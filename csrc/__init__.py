"""CUDA C++ sources of the shared core, shipped as package data of ``gpucore.csrc``."""
