"""Sub-command groups of the ``dualattn`` CLI; each module defines ``register(app)``."""
