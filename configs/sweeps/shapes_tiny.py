"""A 4-point scaling sweep of tiny models on the shapes data: seconds per run on a CPU (the test's).

usage: python launch/sweep.py --sweep configs/sweeps/shapes_tiny.py[:data=PATH] --root runs/sweep_tiny --jobs 2
2 model sizes (1 and 2 blocks, width 64) x 1 vocabulary (16 bits) x 2 compute budgets (4e9 and
6.4e9 training FLOPs: 4 to 10 steps of 85 tokens). The data comes from
`infinity-jax data prepare --source shapes --image-size 32 --out data/shapes` (default PATH).
Too small for a meaningful law; it checks the machinery end to end.
"""

from infinity_jax.config_util import parse_arg


def get_sweep(arg=None):
    opts = parse_arg(arg, {"data"}, "shapes_tiny sweep")
    return dict(
        name="shapes_tiny",
        config="configs/shapes.py",
        arg="tiny",
        overrides=(
            f"data.path={opts.get('data', 'data/shapes')}",
            "sample.every=0",
            "checkpoint.async_save=False",
            "eval.val_batches=1",
        ),
        models={"L1W64": "layers=1,width=64,heads=2", "L2W64": "layers=2,width=64,heads=2"},
        vocabs={"d16": "bits=16"},
        budgets=(4e9, 6.4e9),
        budget_unit="flops",
        min_steps=3,  # the tiny config warms up for 2 steps
    )
