"""set_lightning: the Spacetime E(n)-Transformer (SET) and its baselines for N-body dynamics."""

__version__ = "0.1.0"
