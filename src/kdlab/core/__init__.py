"""The bottom layer: error types, the name registry, checkpoint file I/O and process-group helpers.

Nothing here imports anything of kdlab's outside this package.
"""
