"""Scaling-sweep definitions (get_sweep) for launch/sweep.py, installed as infinity_jax.configs.sweeps."""
