"""lm-evaluation-harness inside theseus: theseus as one of the harness's model backends.

`config.py` holds the `harness` evaluation and its settings (`eval.harness.*`, no JAX and no
harness imported); `tasks.py` knows the task names without importing the harness; `lm.py` is the
harness's `LM` interface over `theseus.evaluation.engine`; `run.py` loads tasks and runs them.
"""
