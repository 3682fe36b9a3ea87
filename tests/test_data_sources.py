"""tfds builders: the official jsonl format read unchanged, image folders, shapes; skips and errors."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from infinity_jax.data import sources  # noqa: E402

tfds.disable_progress_bar()

# (height, width) of the fixture images: templates 1.0, 0.5 and 1.5, six images each
SIZES = [(40, 40)] * 6 + [(30, 60)] * 6 + [(60, 40)] * 6


def jpeg_bytes(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_official(root, sizes=SIZES, corrupt=(), missing=(), no_text=()) -> str:
    """The official layout: <root>/<name>/splits/<template>_<count>.jsonl whose image_path values
    are 'data/<name>/images/<i>.jpg' (relative to a checkout the dataset is not in). Returns the
    dataset folder."""
    name = "t2i_fixture"
    ds = os.path.join(str(root), name)
    os.makedirs(os.path.join(ds, "images"))
    os.makedirs(os.path.join(ds, "splits"))
    by_template: dict[str, list[str]] = {}
    for i, (h, w) in enumerate(sizes):
        path = os.path.join(ds, "images", f"{i}.jpg")
        if i not in missing:
            with open(path, "wb") as f:
                f.write(b"\xff\xd8\xff\xe0 not really a jpeg" if i in corrupt else jpeg_bytes(h, w, i))
        rec = {
            "image_path": f"data/{name}/images/{i}.jpg",
            "h_div_w": h / w,
            "long_caption": f"Long caption {i}. Second sentence. Third sentence.",
            "long_caption_type": "caption-InternVL2.0",
        }
        if i not in no_text:
            rec["text"] = f"short {i}--tag"
        by_template.setdefault(f"{h / w:.3f}", []).append(json.dumps(rec))
    for t, lines in by_template.items():
        with open(os.path.join(ds, "splits", f"{t}_{len(lines):09d}.jsonl"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return ds


def write_image_folder(root, n: int = 6, style: str = "txt") -> str:
    folder = os.path.join(str(root), f"folder_{style}")
    os.makedirs(os.path.join(folder, "sub"))
    rows = []
    for i in range(n):
        rel = os.path.join("sub" if i % 2 else "", f"im{i}.png")
        Image.fromarray(np.full((32, 48 + 8 * i, 3), 10 * i, np.uint8)).save(os.path.join(folder, rel))
        rows.append({"file_name": rel, "caption": f"caption {i}"})
        if style == "txt":
            with open(os.path.join(folder, os.path.splitext(rel)[0] + ".txt"), "w") as f:
                f.write(f"caption {i}\n")
    if style == "jsonl":
        with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
            f.write("\n".join(json.dumps(r) for r in rows))
    elif style == "csv":
        with open(os.path.join(folder, "captions.csv"), "w") as f:
            f.write("file_name,caption\n" + "".join(f"{r['file_name']},{r['caption']}\n" for r in rows))
    return folder


def _records(path):
    src, info = sources.open_split(path)
    recs = [src[i] for i in range(len(src))]
    return recs, info


def test_official_jsonl_builds_sorted_by_template_and_skips_bad_images(tmp_path):
    ds = write_official(tmp_path / "src", corrupt=(3,), missing=(8,), no_text=(13,))
    assert sources.detect_kind(ds) == "infinity_jsonl"
    path = sources.prepare("infinity_jsonl", str(tmp_path / "out"), source=ds, progress=False)
    recs, info = _records(str(tmp_path / "out"))  # the --out folder is found too
    meta = info.metadata
    assert len(recs) == 16 and meta["num_examples"] == 16
    assert meta["skipped"] == {"missing image": 1, "corrupt": 1}
    assert meta["templates"] == [[0.5, 0, 5], [1.0, 5, 5], [1.5, 10, 6]]
    tmpl = sources.record_h_div_w(*sources.open_split(path))
    assert np.allclose(tmpl, [0.5] * 5 + [1.0] * 5 + [1.5] * 6)
    by_src = {os.path.basename(r["source"].decode()): r for r in recs}
    for i, (h, w) in enumerate(SIZES):
        if i in (3, 8):
            assert f"{i}.jpg" not in by_src
            continue
        r = by_src[f"{i}.jpg"]
        assert r["image"] == jpeg_bytes(h, w, i)  # stored unchanged
        assert r["h_div_w"] == pytest.approx(h / w)
        assert r["long_caption"].decode() == f"Long caption {i}. Second sentence. Third sentence."
        assert r["text"].decode() == ("" if i == 13 else f"short {i}--tag")
        assert r["long_caption_type"].decode() == "caption-InternVL2.0" and r["spec"] == b""


def test_image_folder_reads_txt_jsonl_and_csv_captions(tmp_path):
    for style in ("txt", "jsonl", "csv"):
        folder = write_image_folder(tmp_path, style=style)
        assert sources.detect_kind(folder) == "image_folder"
        sources.prepare("image_folder", str(tmp_path / f"out_{style}"), source=folder, progress=False)
        recs, info = _records(str(tmp_path / f"out_{style}"))
        caps = sorted(r["long_caption"].decode() for r in recs)
        assert caps == [f"caption {i}" for i in range(6)], style
        for r in recs:
            i = int(r["long_caption"].decode().split()[-1])
            assert r["h_div_w"] == pytest.approx(32 / (48 + 8 * i))
        # sorted by template: the run starts increase and cover all records
        runs = info.metadata["templates"]
        assert [r[0] for r in runs] == sorted(r[0] for r in runs) and sum(r[2] for r in runs) == 6


def test_shapes_builder_stores_png_caption_and_spec(tmp_path, capsys):
    from infinity_jax.data import shapes

    path = sources.prepare("shapes", str(tmp_path / "out"), num_examples=12, image_size=48, seed=5, progress=False)
    out = capsys.readouterr().out
    assert "Downloading" not in out and "downloaded and prepared" not in out  # nothing is downloaded
    recs, info = _records(path)
    assert len(recs) == 12 and info.metadata["templates"] == [[1.0, 0, 12]]
    for k, r in enumerate(recs):
        i = int(r["source"].decode().split(":")[1])
        assert i == k
        img, cap, spec = shapes.render(i, seed=5, size=48)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r["image"]))), img)
        assert r["long_caption"].decode() == cap and json.loads(r["spec"].decode()) == spec


def test_shapes_layout_is_built_and_recorded(tmp_path):
    from infinity_jax.data import shapes

    out = str(tmp_path / "out")
    path = sources.prepare("shapes", out, num_examples=4, image_size=32, seed=5, layout="slots", progress=False)
    recs, info = _records(path)
    assert info.metadata["prepare"]["layout"] == "slots"
    assert json.loads(recs[0]["spec"].decode()) == shapes.render(0, seed=5, size=32, layout="slots")[2]
    with pytest.raises(ValueError, match="already holds"):  # the same folder, another layout
        sources.prepare("shapes", out, num_examples=4, image_size=32, seed=5, progress=False)
    with pytest.raises(ValueError, match="layout='grid'"):
        sources.prepare("shapes", str(tmp_path / "x"), num_examples=4, layout="grid", progress=False)


def test_shapes_categories_subset_is_built_and_recorded(tmp_path, capsys):
    from infinity_jax.commands import main
    from infinity_jax.data import shapes

    out = str(tmp_path / "out")
    assert (
        main(
            [
                "data",
                "prepare",
                "--source",
                "shapes",
                "--num-examples",
                "6",
                "--image-size",
                "32",
                "--categories",
                "colors,position",
                "--out",
                out,
            ]
        )
        == 0
    )
    recs, info = _records(sources.find_dataset_dir(out))
    assert info.metadata["prepare"]["categories"] == ["colors", "position"]
    specs = [json.loads(r["spec"].decode()) for r in recs]
    assert [s["category"] for s in specs] == ["colors", "position"] * 3
    assert specs[3] == shapes.render(3, seed=0, size=32, categories=("colors", "position"))[2]
    with pytest.raises(ValueError, match="already holds"):  # the same folder, all categories
        sources.prepare("shapes", out, num_examples=6, image_size=32, progress=False)
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--source", "shapes", "--categories", "colors,shade", "--out", str(tmp_path / "x")])
    assert "'colors,shade'" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="each once"):
        shapes.check_categories(("colors", "colors"))


def test_cli_prepare_builds_shapes(tmp_path, capsys):
    from infinity_jax.commands import main

    assert (
        main(
            [
                "data",
                "prepare",
                "--source",
                "shapes",
                "--num-examples",
                "6",
                "--image-size",
                "32x48",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "shapes: 6 examples" in out and "[[0.666, 0, 6]]" in out


def test_missing_paths_and_empty_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sources.prepare("infinity_jsonl", str(tmp_path / "out"), source=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no built dataset"):
        sources.open_split(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sources.open_split(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    (empty / "splits").mkdir(parents=True)
    (empty / "splits" / "1.000_000000000.jsonl").write_text("")
    with pytest.raises(ValueError, match="lists no examples"):
        sources.prepare("infinity_jsonl", str(tmp_path / "out2"), source=str(empty), progress=False)
    # every image missing: nothing usable
    ds = write_official(tmp_path / "gone", sizes=[(40, 40)] * 2, missing=(0, 1))
    with pytest.raises(ValueError, match="lists no examples"):
        sources.prepare("infinity_jsonl", str(tmp_path / "out3"), source=ds, progress=False)
    ds = write_official(tmp_path / "bad", sizes=[(40, 40)] * 2, corrupt=(0, 1))
    with pytest.raises(ValueError, match="no usable example"):
        sources.prepare("infinity_jsonl", str(tmp_path / "out4"), source=ds, progress=False)
    path = sources.prepare("shapes", str(tmp_path / "out5"), num_examples=2, progress=False)
    with pytest.raises(KeyError, match="split 'test'"):
        sources.open_split(path, "test")
    # same options reuse the build; other options into the same folder are refused
    assert sources.prepare("shapes", str(tmp_path / "out5"), num_examples=2, progress=False) == path
    with pytest.raises(ValueError, match="already holds"):
        sources.prepare("shapes", str(tmp_path / "out5"), num_examples=3, progress=False)
    sources.prepare("shapes", str(tmp_path / "out5"), num_examples=3, progress=False, overwrite=True)
    assert len(sources.open_split(path)[0]) == 3


def write_captions_jsonl(root, lines: list[str], n_images: int = 3) -> str:
    """An image folder whose captions.jsonl holds `lines` as given (im<i>.png exist for i < n_images)."""
    folder = os.path.join(str(root), "captioned")
    os.makedirs(folder)
    for i in range(n_images):
        Image.fromarray(np.full((32, 40, 3), 40 * i, np.uint8)).save(os.path.join(folder, f"im{i}.png"))
    with open(os.path.join(folder, "captions.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return folder


def test_bad_caption_lines_are_skipped_naming_file_line_and_what_was_wrong(tmp_path, capsys):
    from infinity_jax.commands import main

    good = [json.dumps({"file_name": f"im{i}.png", "caption": f"caption {i}"}) for i in range(3)]
    folder = write_captions_jsonl(
        tmp_path,
        [
            good[0],
            '{"file_name": "im1.png", caption: 1}',
            good[1],
            "[1, 2]",
            json.dumps({"file_name": "gone.png", "caption": "x"}),
            good[2],
        ],
    )
    sidecar = os.path.join(folder, "captions.jsonl")
    assert main(["data", "prepare", "--source", folder, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "3 examples" in out and "skipped: 3 {'bad record': 2, 'missing image': 1}" in out
    assert f"bad record: {sidecar}:2 (not JSON: Expecting property name enclosed in double quotes at column 26)" in out
    assert f"bad record: {sidecar}:4 (expected a JSON object, got [1, 2])" in out
    assert f"missing image: {os.path.join(folder, 'gone.png')} (from {sidecar}:5)" in out
    _, info = _records(str(tmp_path / "out"))
    assert len(info.metadata["skipped_examples"]) == 3
    # nothing usable: one line that names every skipped line
    bad = write_captions_jsonl(tmp_path / "bad", ["{oops", json.dumps({"image": "im0.png"})], n_images=1)
    assert main(["data", "prepare", "--source", bad, "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("infinity-jax data prepare: error: image_folder: the source")
    assert "skipped 2 {'bad record': 2}" in err
    assert "captions.jsonl:1 (not JSON: " in err and "captions.jsonl:2 ({'image': 'im0.png'})" in err


def test_cli_prepare_lists_every_skipped_image(tmp_path, capsys):
    from infinity_jax.commands import main

    ds = write_official(tmp_path / "src", sizes=[(40, 40)] * 5, corrupt=(1, 3), missing=(2,))
    assert main(["data", "prepare", "--source", ds, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "2 examples" in out and "skipped: 3 " in out
    for i, reason in ((1, "corrupt"), (2, "missing image"), (3, "corrupt")):
        assert any(line.strip().startswith(f"{reason}: ") and f"{i}.jpg" in line for line in out.splitlines()), out
