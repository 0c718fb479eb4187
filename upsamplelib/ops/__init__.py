"""The operators, one file each: its reference, kernels, autograd glue and module.

Import them from the package top level (``ul.interpolate``, ``ul.carafe``, ...).
"""
