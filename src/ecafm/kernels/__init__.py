"""Pure numpy kernels: frame leveling and registration (arrays in, arrays or frozen dataclasses out)."""
