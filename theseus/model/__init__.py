"""Models: Flax NNX layers (`theseus.model.layers`) composed into registered models
(`theseus.model.models`), plus the logical-axis -> mesh-axis rules (`theseus.model.sharding`).

Importing this package is cheap; JAX and Flax load with its submodules.
"""
