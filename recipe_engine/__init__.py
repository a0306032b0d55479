"""recipe-engine: quantize PyTorch models to INT8 from declarative YAML recipes."""

__version__ = "0.1.0"
