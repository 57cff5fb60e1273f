"""Loaded (`--load`) into process 1 of a two-process test run: its first compiled train step
reports that it does not fit, as when another job holds part of that host's or GPU's memory.
A real shortage on one process only cannot be arranged on one test machine."""

import os

import theseus.training.compile as compile_

if os.environ.get("THESEUS_PROCESS_ID") == "1":
    measure = compile_.step_memory
    calls: list[int] = []

    def step_memory(compiled):
        need, free, where = measure(compiled)
        calls.append(1)
        return (2 * free, free, where) if len(calls) == 1 else (need, free, where)

    compile_.step_memory = step_memory
