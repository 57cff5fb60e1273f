"""Remote dispatch: run a job on this machine, on an SSH host, or through SLURM, and track it.

`submit()` validates the stages locally, picks a host (`solve`), ships a content-addressed code
snapshot (`snapshot`), writes the scripts (`bootstrap`) and starts them through a backend
(`backends`); `records` remembers every submission so `status`, `logs` and `cancel` work the same
for every backend. `standalone` writes the same job as one script for someone to start by hand
(`theseus bootstrap`).
"""
