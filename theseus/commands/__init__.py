"""The `theseus` commands beyond running jobs, each a click command `theseus.cli` adds."""
