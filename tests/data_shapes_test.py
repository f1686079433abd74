"""hfpl_shapes: the generator, the TFDS build, ensure_built and the CAM-training iterator."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hfpl_jax import data
from hfpl_jax.data import fake_data, input_pipeline, shapes
from hfpl_jax.data.cli import main as build_dataset_main

TINY = dict(image_size=64, num_train=24, num_val=6, seed=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfds")
    data.ensure_built("hfpl_shapes", directory, **TINY)
    return str(directory)


def _cam_config(data_dir, **overrides):
    tiny = dict(global_batch_size=4, crop_size=48, resize_long=(48, 80), worker_count=0)
    return fake_data.cam_train_input_config(
        "hfpl_shapes", data_dir, "train", builder_kwargs=TINY, **{**tiny, **overrides}
    )


def test_generator_is_deterministic_and_labels_match_mask():
    params = shapes.ShapesParams(**TINY)
    for index in range(6):
        image, mask, labels = shapes.generate_example(params, "train", index)
        again = shapes.generate_example(params, "train", index)
        np.testing.assert_array_equal(image, again[0])
        np.testing.assert_array_equal(mask, again[1])
        assert image.dtype == np.uint8 and image.shape == mask.shape + (3,)
        assert max(image.shape[:2]) == 64
        assert labels.shape == (shapes.NUM_CLASSES,) and labels.any()
        present = set(np.unique(mask).tolist()) - {0}
        assert present == {k + 1 for k in np.flatnonzero(labels)}
    other_seed = shapes.generate_example(shapes.ShapesParams(**{**TINY, "seed": 4}), "train", 0)
    assert not np.array_equal(other_seed[0], shapes.generate_example(params, "train", 0)[0])


def test_generator_statistics_make_a_nontrivial_task():
    """Over 200 default-size images: often several objects per image, every class regularly, and
    objects covering a minority of the image."""
    params = shapes.ShapesParams()
    counts, classes, fg_fraction = [], np.zeros(shapes.NUM_CLASSES), []
    for index in range(200):
        _, mask, labels = shapes.generate_example(params, "val", index)
        counts.append(labels.sum())
        classes += labels
        fg_fraction.append((mask > 0).mean())
    counts = np.array(counts)
    assert (counts == 1).mean() > 0.35 and (counts >= 2).mean() > 0.3
    assert classes.min() > 20  # every class appears regularly
    assert 0.1 < np.mean(fg_fraction) < 0.5


def test_boundaries_are_mostly_colour_edges_some_weak_and_the_background_is_cluttered():
    """Over 200 default-size images. Boundary contrast: the mean absolute RGB difference of the
    7x7-box-smoothed image (smoothing averages the textures out) between pixels 3 apart across a
    mask boundary. Clutter: Sobel gradient magnitude > 0.5 (image in [0, 1]) away from objects."""
    from scipy import ndimage

    params = shapes.ShapesParams()
    contrasts, background_edges = [], []
    for index in range(200):
        image, mask, _ = shapes.generate_example(params, "val", index)
        x = image.astype(np.float64) / 255.0
        smooth = np.stack([ndimage.uniform_filter(x[..., c], 7) for c in range(3)], -1)
        across = mask[:, :-3] != mask[:, 3:]
        contrasts.append(np.abs(smooth[:, :-3] - smooth[:, 3:]).mean(-1)[across])
        gray = x.mean(-1)
        gradient = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
        background = ndimage.binary_erosion(mask == 0, iterations=3)
        background_edges.append((gradient[background] > 0.5).mean())
    contrasts = np.concatenate(contrasts)
    assert np.median(contrasts) > 0.05  # most boundaries sit on a colour edge ...
    assert (contrasts < 0.03).mean() > 0.08  # ... but a good share are weak (measured: 18%)
    assert np.mean(background_edges) > 0.01  # distractor bars/blobs (measured: 2.5% of pixels)


def test_void_band_marks_boundaries_only():
    params = shapes.ShapesParams(**{**TINY, "void_band": 2})
    _, mask, labels = shapes.generate_example(params, "train", 1)
    _, plain_mask, plain_labels = shapes.generate_example(shapes.ShapesParams(**TINY), "train", 1)
    np.testing.assert_array_equal(labels, plain_labels)
    void = mask == 255
    assert void.any()
    np.testing.assert_array_equal(mask[~void], plain_mask[~void])
    # Every void pixel lies within 2 pixels of a change in the plain mask.
    edge = np.zeros_like(void)
    edge[1:] |= plain_mask[1:] != plain_mask[:-1]
    edge[:-1] |= plain_mask[1:] != plain_mask[:-1]
    edge[:, 1:] |= plain_mask[:, 1:] != plain_mask[:, :-1]
    edge[:, :-1] |= plain_mask[:, 1:] != plain_mask[:, :-1]
    ys, xs = np.nonzero(void)
    ey, ex = np.nonzero(edge)
    chebyshev = np.maximum(np.abs(ys[:, None] - ey[None]), np.abs(xs[:, None] - ex[None])).min(1)
    assert chebyshev.max() <= 1


def test_bad_params_are_rejected():
    with pytest.raises(ValueError, match="image_size"):
        shapes.ShapesParams(image_size=8)
    with pytest.raises(ValueError, match="unknown hfpl_shapes parameters"):
        data.dataset_dir("hfpl_shapes", "/tmp", image_sise=64)
    with pytest.raises(ValueError, match="index"):
        shapes.generate_example(shapes.ShapesParams(**TINY), "val", 6)


def test_built_dataset_matches_generator(data_dir):
    params = shapes.ShapesParams(**TINY)
    assert data.num_classes("hfpl_shapes", data_dir, **TINY) == shapes.NUM_CLASSES
    assert data.num_examples("hfpl_shapes", data_dir, "train", **TINY) == 24
    source = data.open_split("hfpl_shapes", data_dir, "val", **TINY)
    assert len(source) == 6
    for index in (0, 5):
        example = source[index]
        image, mask, labels = shapes.generate_example(params, "val", index)
        np.testing.assert_array_equal(example["image"], image)
        np.testing.assert_array_equal(example["mask"], mask)
        np.testing.assert_array_equal(example["labels"], labels)
        assert example["name"] == f"val_{index:06d}"


def test_ensure_built_is_idempotent_and_manual_datasets_explain(data_dir, tmp_path):
    directory = data.dataset_dir("hfpl_shapes", data_dir, **TINY)
    stamp = os.path.getmtime(os.path.join(directory, "dataset_info.json"))
    assert data.ensure_built("hfpl_shapes", data_dir, **TINY) == directory
    assert os.path.getmtime(os.path.join(directory, "dataset_info.json")) == stamp
    with pytest.raises(FileNotFoundError, match="hfpl-jax build-dataset voc2012_wsss"):
        data.ensure_built("voc2012_wsss", tmp_path)
    with pytest.raises(FileNotFoundError, match="build-dataset coco2014_wsss"):
        data.raw_source("coco2014_wsss", tmp_path, "val2014")


def test_cli_builds_and_reports(tmp_path, capsys):
    code = build_dataset_main(
        ["hfpl_shapes", "--data-dir", str(tmp_path), "--image-size", "48", "--num-train", "5",
         "--num-val", "2"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "train: 5 examples" in out and "No bad examples." in out
    directory = data.dataset_dir("hfpl_shapes", tmp_path, image_size=48, num_train=5, num_val=2)
    with open(os.path.join(directory, "build_report.json")) as f:
        report = json.load(f)
    assert report["splits"] == {"train": 5, "val": 2} and report["skipped"] == []
    assert build_dataset_main(["voc2012_wsss", "--data-dir", str(tmp_path)]) == 2


def test_cam_iterator_batches_and_determinism(data_dir):
    config = _cam_config(data_dir)
    iterator = input_pipeline.make_cam_train_iterator(config, seed=7)
    batches = [next(iterator) for _ in range(7)]  # 6 steps per epoch: crosses an epoch boundary
    first = batches[0]
    assert set(first) == {"image", "labels"}
    assert first["image"].shape == (4, 48, 48, 3) and first["image"].dtype == np.float32
    assert first["labels"].shape == (4, shapes.NUM_CLASSES)
    again = input_pipeline.make_cam_train_iterator(config, seed=7)
    for batch in batches:
        other = next(again)
        np.testing.assert_array_equal(batch["image"], other["image"])
        np.testing.assert_array_equal(batch["labels"], other["labels"])
    different = next(input_pipeline.make_cam_train_iterator(config, seed=8))
    assert not np.array_equal(different["image"], first["image"])


def test_bad_iterator_states_are_rejected(data_dir):
    iterator = input_pipeline.make_cam_train_iterator(_cam_config(data_dir, num_epochs=1), seed=1)
    with pytest.raises(ValueError, match="not a hfpl_jax.data.BatchIterator"):
        iterator.set_state({"next_index": 3})
    with pytest.raises(ValueError, match="outside"):
        iterator.set_state({"format": iterator.STATE_FORMAT, "next_batch": 7})
    iterator.set_state(json.dumps({"format": iterator.STATE_FORMAT, "next_batch": 6}))
    assert list(iterator) == []


def test_cam_iterator_resumes_from_state(data_dir):
    config = _cam_config(data_dir, num_epochs=2)
    iterator = input_pipeline.make_cam_train_iterator(config, seed=1)
    next(iterator), next(iterator)
    state = iterator.get_state()
    rest = list(iterator)
    assert len(rest) == 12 - 2  # 2 epochs x 6 steps, drop remainder
    resumed = input_pipeline.make_cam_train_iterator(config, seed=1)
    resumed.set_state(state)
    resumed_rest = list(resumed)
    assert len(resumed_rest) == len(rest)
    for a, b in zip(rest, resumed_rest, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_epoch_order_shards_are_disjoint_and_process_count_invariant():
    kwargs = dict(num_records=103, global_batch_size=12, seed=5)
    single = input_pipeline.EpochOrder(**kwargs)
    per_epoch = single.examples_per_epoch
    assert single.steps_per_epoch == 8 and per_epoch == 96
    for process_count in (2, 3, 4):
        orders = [
            input_pipeline.EpochOrder(**kwargs, process_index=p, process_count=process_count)
            for p in range(process_count)
        ]
        local = 12 // process_count
        for epoch in (0, 1):
            seen = []
            for step in range(8):
                global_batch = []
                for order in orders:
                    base = epoch * order.examples_per_epoch + step * local
                    global_batch += [order.locate(base + k)[1] for k in range(local)]
                single_batch = [
                    single.locate(epoch * per_epoch + step * 12 + k)[1] for k in range(12)
                ]
                assert global_batch == single_batch
                seen += global_batch
            assert len(set(seen)) == len(seen) == 96  # disjoint, no repeats within an epoch
    assert [single.locate(i)[1] for i in range(96)] != [single.locate(96 + i)[1] for i in range(96)]
    with pytest.raises(ValueError, match="multiple of the process count"):
        input_pipeline.EpochOrder(**kwargs, process_index=0, process_count=5)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        input_pipeline.EpochOrder(num_records=5, global_batch_size=8, seed=0)


def test_cam_iterator_process_shards_form_the_global_batch(data_dir):
    config = _cam_config(data_dir, global_batch_size=6, color_jitter=None, hflip=False)
    whole = next(input_pipeline.make_cam_train_iterator(config, seed=2))
    parts = [
        next(
            input_pipeline.make_cam_train_iterator(config, seed=2, process_index=p, process_count=3)
        )
        for p in range(3)
    ]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
    np.testing.assert_array_equal(np.concatenate([p["labels"] for p in parts]), whole["labels"])


@pytest.mark.slow
def test_training_process_never_imports_tensorflow_and_workers_agree(data_dir):
    """A fresh interpreter builds the iterator with 0 and 2 worker processes: identical batches,
    and ``tensorflow`` never enters ``sys.modules``."""
    script = textwrap.dedent(
        f"""
        import json
        import sys
        import numpy as np
        from hfpl_jax.data import input_pipeline

        def main():
            config = {_cam_config(data_dir)!r}
            batches = {{}}
            for workers in (0, 2):
                config["worker_count"] = workers
                iterator = input_pipeline.make_cam_train_iterator(config, seed=4)
                batches[workers] = [next(iterator) for _ in range(3)]
                iterator.close()
            for a, b in zip(batches[0], batches[2]):
                assert np.array_equal(a["image"], b["image"])
            # A state saved (as JSON) from 2 workers resumes exactly in-process, and vice versa.
            config["worker_count"] = 2
            iterator = input_pipeline.make_cam_train_iterator(config, seed=4)
            next(iterator), next(iterator)
            state = json.loads(json.dumps(iterator.get_state()))
            expected = next(iterator)
            iterator.close()
            config["worker_count"] = 0
            resumed = input_pipeline.make_cam_train_iterator(config, seed=4)
            resumed.set_state(state)
            assert np.array_equal(next(resumed)["image"], expected["image"])
            assert "tensorflow" not in sys.modules, "tensorflow was imported"
            print("OK")

        if __name__ == "__main__":
            main()
        """
    )
    path = os.path.join(data_dir, "no_tf_check.py")
    with open(path, "w") as f:
        f.write(script)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, path], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_first_reads_from_many_threads_open_the_source_once(data_dir):
    """A fresh interpreter (tensorflow_datasets not imported yet, as in a spawned grain worker)
    reads one split from 8 threads at once: all finish, on one shared data source."""
    script = textwrap.dedent(
        f"""
        import threading
        from hfpl_jax.data import sources

        source = sources.RawSource(
            sources.dataset_dir("hfpl_shapes", {data_dir!r}, **{TINY!r}), "train"
        )
        seen, start = [], threading.Barrier(8)

        def read(i):
            start.wait()
            example = source[i]
            seen.append((id(source._source), len(example["image"]) > 0))

        threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a reader hung"
        assert len(seen) == 8 and len({{s for s, _ in seen}}) == 1 and all(ok for _, ok in seen)
        print("OK")
        """
    )
    path = os.path.join(data_dir, "threads_open_check.py")
    with open(path, "w") as f:
        f.write(script)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, path], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def _ensure_built_in_subprocess(directory):
    from hfpl_jax import data as data_module

    path = data_module.ensure_built("hfpl_shapes", directory, image_size=40, num_train=9, num_val=2)
    with open(os.path.join(path, "dataset_info.json")) as f:
        return path, os.path.getmtime(f.name)


@pytest.mark.slow
def test_concurrent_ensure_built_builds_once(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_ensure_built_in_subprocess, [str(tmp_path)] * 2)
    assert results[0] == results[1]  # same directory, same (single) build: same file time
    entries = os.listdir(os.path.join(str(tmp_path), "hfpl_shapes"))
    assert [e for e in entries if not e.startswith(".")] == [
        os.path.basename(os.path.dirname(results[0][0]))
    ]
