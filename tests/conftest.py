"""Suite-wide set-up."""

from __future__ import annotations

import os

import jax

# Runs inside the pytest process share one JAX backend, created by whichever test starts it
# first. One CPU device keeps their results independent of test order; runs in subprocesses
# still get the trainer's automatic one-device-per-core split (tests/training/test_cpu_devices.py).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", 1)
