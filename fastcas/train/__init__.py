"""The training loop, models, metrics, the drawn-frequency monitor, the run directory and the packaged recipes. Imports
every library layer below it."""
