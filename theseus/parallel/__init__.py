"""Parallelism in one place: the mesh and how devices split (`mesh`), logical axes -> mesh axes
(`rules`), batches onto devices (`placement`), how gradients meet (`reduction`), joining a
multi-process job (`distributed`) and the `parallel.*` settings (`config`).

Importing this package is cheap; JAX loads with the submodules that need it.
"""
