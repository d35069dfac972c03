"""clbench: a continual-learning benchmark for optimizers."""

__version__ = "0.1.0"
