"""Helpers for the Batch Normalization chapter, one module per framework.

Import the module of your framework, as the book does::

    from d2l_bn import torch as d2l

This package itself imports no framework: each of ``torch``, ``jax``, ``tensorflow`` and ``mxnet``
lives in its own environment, and ``data``, ``plotting`` and ``training`` are framework-free.
"""

__version__ = "0.1.0"
