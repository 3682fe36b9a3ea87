"""infinity_jax: Infinity (bitwise visual autoregressive text-to-image) in JAX/Flax."""

__version__ = "0.1.0"
