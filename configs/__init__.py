"""The project's configs: the repository's configs/, installed as the package infinity_jax.configs
(pyproject.toml maps it), so `from infinity_jax.configs import shapes` and config_util.load_config('shapes')
work from any working directory and any install. Configs import only infinity_jax.configs.*,
infinity_jax.config_util, infinity_jax.schedules and ml_collections: no model or training code
(infinity_jax.run_config completes their sections from those dataclasses)."""
