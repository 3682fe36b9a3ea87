"""The official layer ladder on a TPU slice: layer12/16/24/32 x d16/d32/d64 x 4 compute budgets.

usage: python launch/sweep.py --sweep configs/sweeps/zoo_ladder.py --root gs://BUCKET/ladder --launch print \
           --launcher-args "--tpu NAME --zone ZONE"     # prints one launch/tpu_pod.sh command per run
       python launch/sweep.py --sweep configs/sweeps/zoo_ladder.py --root LOCAL_COPY --fit-only
ARG: 'data=PATH' (default gs://BUCKET/data/infinity).
Every run is `zoo:layerN,vae=dD,pn=0.06M,mesh=v5p-128` (configs/zoo.py: official architecture,
released tokenizers, 256x256 images, the v5p-128 preset: fsdp 16 x data 4, global batch 1024) with
the data at data.path; budgets 1e19 .. 1e20 training FLOPs, warm-up 2 % of each run. The official
weights (weights/infinity_vae_dD.pth, weights/flan-t5-xl) must be on every worker.
"""

from infinity_jax.config_util import parse_arg


def get_sweep(arg=None):
    data = parse_arg(arg, {"data"}, "zoo_ladder sweep").get("data", "gs://BUCKET/data/infinity")
    return dict(
        name="zoo_ladder",
        config="configs/zoo.py",
        arg="pn=0.06M,mesh=v5p-128",
        overrides=(f"data.path={data}", "checkpoint.every=2000"),
        models={n: n for n in ("layer12", "layer16", "layer24", "layer32")},
        vocabs={f"d{d}": f"vae=d{d}" for d in (16, 32, 64)},
        budgets=(1e19, 2e19, 5e19, 1e20),
        budget_unit="flops",
        min_steps=100,
        warmup_frac=0.02,
        launcher="tpu_pod",
        launcher_args="--tpu NAME --zone ZONE",
    )
