"""HTTP layer: one sub-package per API dialect."""
