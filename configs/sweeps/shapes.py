"""Scaling law on the shapes data (CPU-hours): 4 model sizes x 3 vocabularies x 4 compute budgets.

usage: python launch/sweep.py --sweep configs/sweeps/shapes.py[:data=PATH,tok=DIR] --root runs/sweep_shapes
Models are the official block at small sizes (2-8 layers, width 64-256, head width 32); vocabularies
are d = 8, 16, 32 bits per token; budgets 1e12 .. 3e13 training FLOPs (hundreds to thousands of steps
of configs/shapes.py's batch, 32 images of 32x32 px), warm-up 5 % of each run. Without `tok` every
vocabulary uses a random (untrained) VAE of its width; with tok=DIR each uses the tokenizer trained by
`infinity-jax train-tokenizer --config configs/tokenizer_shapes.py:bits=D --workdir DIR/dD`
(DIR/dD/vae_config.json and vae_params.npz).
"""

from infinity_jax.config_util import parse_arg

BITS = (8, 16, 32)


def get_sweep(arg=None):
    opts = parse_arg(arg, {"data", "tok"}, "shapes sweep")
    tok = opts.get("tok")
    vocabs = {}
    for d in BITS:
        over = (f"vae.config={tok}/d{d}/vae_config.json", f"vae.params={tok}/d{d}/vae_params.npz") if tok else ()
        vocabs[f"d{d}"] = {"arg": f"bits={d}", "overrides": over}
    return dict(
        name="shapes",
        config="configs/shapes.py",
        arg="",
        overrides=(f"data.path={opts.get('data', 'data/shapes')}", "sample.every=0", "checkpoint.every=1000"),
        models={
            f"L{n}W{w}": f"layers={n},width={w},heads={w // 32}" for n, w in ((2, 64), (4, 128), (6, 192), (8, 256))
        },
        vocabs=vocabs,
        budgets=(1e12, 3e12, 1e13, 3e13),
        budget_unit="flops",
        min_steps=20,
        warmup_frac=0.05,
    )
