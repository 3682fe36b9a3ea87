"""The benchmarks' measuring code (library, no command line): `infinity-jax bench <name>` in
infinity_jax.commands.bench parses the arguments and prints these modules' rows as tables.

  attention   each attention kernel against the float32 dense reference: error, forward (+ backward) ms
  sampler     the one-program sampler: compile s, latency, images/s, peak memory, utilisation; XLA's
              memory analysis of the compiled program (nothing run); helpers the training bench shares
  training    the real training step: step s, images/s, tokens/s, MFU; or XLA's memory analysis of it
  data        the input pipeline's images/s (decode + resize + crop) on synthetic photo-like JPEGs
"""
