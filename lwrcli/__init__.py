"""lwr: long-tailed image classification with the Logit Weight Repulsion regularizer."""

__version__ = "0.1.0"
