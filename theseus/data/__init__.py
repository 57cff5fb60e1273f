"""Data: tokenizers, dataset sources, tokenize jobs, token stores and the training loader.

Nothing heavy is imported here: `theseus configure` of a data job must stay fast.
"""
