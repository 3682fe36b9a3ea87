"""LPIPS (infinity_jax/tokenizer/lpips.py, convert/lpips.py): equal to an independent PyTorch LPIPS
with random weights saved as torchvision / lpips-style .pth files, zero on identical images,
differentiable, strict loading; and a short train-tokenizer run with the perceptual loss on."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from infinity_jax import config_util, parallel  # noqa: E402
from infinity_jax.convert import lpips as lpips_convert  # noqa: E402
from infinity_jax.convert.torch_io import load_state_dict, save_state_dict  # noqa: E402
from infinity_jax.tokenizer import lpips  # noqa: E402
from infinity_jax.tokenizer import vae as vae_lib  # noqa: E402

TOL = 1e-5  # fp32 on both sides (conftest sets full-precision matmuls)


class TorchLPIPS(torch.nn.Module):
    """LPIPS v0.1 'vgg' as the lpips package computes it, written here from its definition: torchvision's
    VGG16 `features` layer list (same indices, so the same state-dict keys) and lin{k}.model = (Dropout, 1x1 conv)."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
            if v == "M":
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(c_in, v, 3, padding=1), torch.nn.ReLU()]
                c_in = v
        self.features = torch.nn.Sequential(*layers)
        for k, c in enumerate((64, 128, 256, 512, 512)):
            lin = torch.nn.Module()
            lin.model = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Conv2d(c, 1, 1, bias=False))
            setattr(self, f"lin{k}", lin)
        self.taps = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def feats(self, x):
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h / (torch.sqrt(torch.sum(h**2, dim=1, keepdim=True)) + 1e-10))
        return out

    def forward(self, x, y):  # NCHW in [-1, 1] -> (B,)
        total = 0
        for k, (fx, fy) in enumerate(zip(self.feats(x), self.feats(y))):
            total = total + getattr(self, f"lin{k}").model((fx - fy) ** 2).mean(dim=(1, 2, 3))
        return total


@pytest.fixture(scope="module")
def torch_lpips(tmp_path_factory):
    """(torch model in eval mode, vgg .pth path, lin .pth path): random weights from seed 0 (kaiming
    fan-out convs as torchvision inits VGG, small random biases, non-negative lin weights)."""
    torch.manual_seed(0)
    m = TorchLPIPS().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("features") and name.endswith("weight"):
                torch.nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")
            elif name.startswith("features"):
                p.uniform_(-0.1, 0.1)
            else:
                p.uniform_(0.0, 0.1)
    folder = tmp_path_factory.mktemp("lpips")
    sd = m.state_dict()
    vgg = {k: v for k, v in sd.items() if k.startswith("features.")}
    vgg["classifier.0.weight"] = torch.zeros(4, 2)  # torchvision's file has a head: ignored
    lin = {k: v for k, v in sd.items() if k.startswith("lin")}
    torch.save(vgg, folder / "vgg16.pth")
    torch.save(lin, folder / "lpips_vgg_lin.pth")
    return m, str(folder / "vgg16.pth"), str(folder / "lpips_vgg_lin.pth")


@pytest.fixture(scope="module")
def params(torch_lpips):
    _, vgg, lin = torch_lpips
    return lpips_convert.load(f"{vgg},{lin}")


@pytest.fixture(scope="module")
def lpips_fn():
    return jax.jit(lambda p, x, y: lpips.LPIPS().apply({"params": p}, x, y))


def _images(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, shape), -1, 1).astype(np.float32)
    return x, y


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])  # 24x40: non-square, pools floor 3x5 -> 1x2
def test_lpips_equals_an_independent_torch_lpips(torch_lpips, params, lpips_fn, hw):
    m = torch_lpips[0]
    x, y = _images((2, 3, *hw), seed=hw[0])
    with torch.no_grad():
        want = m(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    got = np.asarray(lpips_fn(params, x.transpose(0, 2, 3, 1), y.transpose(0, 2, 3, 1)))
    assert got.shape == (2,) and np.all(want > 1e-3)
    diff = float(np.abs(got - want).max())
    print(f"LPIPS {hw}: jax {got} torch {want} max abs diff {diff:.2e}")
    assert diff < TOL and diff < TOL * float(np.abs(want).min())  # absolute and relative


def test_lpips_of_an_image_with_itself_is_zero_and_gradients_reach_the_input(params, lpips_fn):
    x, y = (a.transpose(0, 2, 3, 1) for a in _images((2, 3, 32, 32), seed=5))
    assert np.asarray(lpips.LPIPS().apply({"params": params}, x, x)).tolist() == [0.0, 0.0]
    # jitted with x given twice, XLA may fuse the two passes differently: zero up to rounding
    assert float(np.abs(lpips_fn(params, x, x)).max()) < 1e-12
    g = jax.jit(jax.grad(lambda a: jnp.sum(lpips.LPIPS().apply({"params": params}, a, y))))(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) > 0
    # moving x a small step against the gradient lowers the distance
    d0 = float(jnp.sum(lpips_fn(params, x, y)))
    d1 = float(jnp.sum(lpips_fn(params, x - 1e-2 * g / jnp.abs(g).max(), y)))
    assert d1 < d0


def test_convert_lpips_writes_our_npz_that_loads_to_the_same_params(torch_lpips, params, tmp_path):
    from infinity_jax import commands

    _, vgg, lin = torch_lpips
    out = tmp_path / "lpips_vgg.npz"
    assert commands.main(["convert", "lpips", "--vgg", vgg, "--lin", lin, "--out", str(out)]) == 0
    again = lpips_convert.load(str(out))
    assert jax.tree.structure(again) == jax.tree.structure(params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)))
    assert again["features_0"]["kernel"].shape == (3, 3, 3, 64) and again["lin_4"]["kernel"].shape == (1, 1, 512, 1)


def test_loading_is_strict_about_keys_shapes_signs_and_the_spec(torch_lpips, tmp_path):
    _, vgg, lin = torch_lpips
    sd = {**load_state_dict(vgg), **load_state_dict(lin)}
    missing = {k: v for k, v in sd.items() if k != "features.28.bias"}
    with pytest.raises(ValueError, match=r"missing keys \(1\):\n    features\.28\.bias"):
        lpips_convert.torch_to_params(missing)
    wrong = dict(sd, **{"lin2.model.1.weight": np.zeros((1, 128, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"lin2\.model\.1\.weight: got \(1, 128, 1, 1\), expected \(1, 256, 1, 1\)"):
        lpips_convert.torch_to_params(wrong)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\):\n    net\.extra"):
        lpips_convert.torch_to_params(dict(sd, **{"net.extra": np.zeros(1)}))
    negative = dict(sd, **{"lin0.model.1.weight": -np.ones((1, 64, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"must be >= 0.*lin0\.model\.1\.weight"):
        lpips_convert.torch_to_params(negative)
    # a wrong file in our format, and the spec itself
    save_state_dict({"features_0/kernel": np.zeros((3, 3, 3, 64), np.float32)}, str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match=r"missing keys \(30\)"):
        lpips_convert.load(str(tmp_path / "bad.npz"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        lpips_convert.load(f"{vgg},{tmp_path / 'absent.pth'}")
    with pytest.raises(ValueError, match="VGG16_FILE,LIN_FILE"):
        lpips_convert.load(vgg)


# ----------------------------------------------------------------------------- training with it


def test_tokenizer_options_check_the_lpips_settings():
    from infinity_jax.train import tokenizer_step as ts

    with pytest.raises(ValueError, match="needs loss.lpips_weights"):
        ts.TokenizerLossOptions.from_config({"perceptual_weight": 1.0})
    with pytest.raises(ValueError, match="loss.lpips_weights: .*VGG16_FILE,LIN_FILE"):
        ts.TokenizerLossOptions.from_config({"perceptual_weight": 1.0, "lpips_weights": "vgg16.pth"})
    o = ts.TokenizerLossOptions.from_config({"perceptual_weight": 1.0, "lpips_weights": "a.pth,b.pth"})
    assert ts.load_frozen(ts.TokenizerLossOptions()) is None
    with pytest.raises(FileNotFoundError, match="a.pth"):
        ts.load_frozen(o)
    loss_fn = ts.make_loss_fn(
        vae_lib.BSQVAE(base_ch=32, ch_mult=(1,), num_res_blocks=0, z_channels=4, codebook_dim=4, patch_size=1),
        ((1, 16, 16),),
        o,
    )
    with pytest.raises(ValueError, match=r"needs frozen\['lpips'\]"):
        loss_fn({}, {"image": np.zeros((1, 16, 16, 3), np.uint8)}, None)


def test_tiny_train_tokenizer_run_with_lpips_logs_it_and_adds_it_to_the_loss(torch_lpips, tmp_path):
    from infinity_jax.data import sources
    from infinity_jax.train import tokenizer_trainer

    _, vgg, lin = torch_lpips
    data = sources.prepare("shapes", str(tmp_path / "shapes"), num_examples=8, image_size=32, seed=3, progress=False)
    # batch 2: a VGG16 step on 32x32 images costs ~0.3 s per image on this CPU
    cfg = config_util.load_config(
        "configs/tokenizer_shapes.py:tiny,stride=16",
        [
            f"data.path={data!r}",
            "eval.num_images=2",
            "train.global_batch=2",
            "train.total_steps=3",
            "optim.warmup_steps=1",
            "train.log_every=1",
            "checkpoint.every=3",
            "loss.perceptual_weight=0.5",
            f"loss.lpips_weights='{vgg},{lin}'",
        ],
    )
    mesh = parallel.make_mesh(-1, 1, 1, devices=jax.devices()[:1])
    final = tokenizer_trainer.run(cfg, str(tmp_path / "tok"), mesh=mesh)
    rows = [json.loads(line) for line in open(tmp_path / "tok" / "metrics.jsonl")]
    rows = [r for r in rows if "lpips" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and final["stopped"] == "done"
    for r in rows:
        assert math.isfinite(r["loss"]) and r["lpips"] > 0
        # tiny config: l2 reconstruction with weight 1, and the prefix loss
        prefix = cfg.loss.prefix_weight * r["prefix_recon"]
        assert r["loss"] == pytest.approx(r["recon_mse"] + r["quant_loss"] + prefix + 0.5 * r["lpips"], rel=1e-4)
    assert final["recon"]["lpips"] > 0 and math.isfinite(final["recon"]["lpips"])
