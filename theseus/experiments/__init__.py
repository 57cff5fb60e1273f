"""The registered jobs that train models (`theseus jobs` lists them)."""
