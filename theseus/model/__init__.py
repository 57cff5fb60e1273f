"""Models: the transformer (`theseus.model.models`), read top to bottom, and its speed code
(`theseus.model.kernels`). Where parameters live on devices is `theseus.parallel`'s business.

Importing this package is cheap; JAX and Flax load with its submodules.
"""
