"""ehrlab's Hydra sweeper (Hydra looks for plugins in the `hydra_plugins` namespace package)."""
