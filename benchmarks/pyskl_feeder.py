"""How the custom dataset copes with a large pyskl file: load time, memory and feeder speed.

  python -m benchmarks.pyskl_feeder                  # 100,000 samples, a few minutes
  python -m benchmarks.pyskl_feeder --samples 20000  # smaller

Writes a deterministic 2-D COCO-17 annotation pickle (float16 keypoints and scores, as pyskl's
HRNet files store them; 2 persons, 60 to 140 frames, 60 classes) from a separate process, so
the numbers below are the loader's alone, then prints:
 1. the time to read the pickle and to check every annotation (`pyskl.read`, `pyskl.check`);
 2. the time of `load_dataset` (read and check again, splits built) and the peak resident
    memory of this process against the size of the keypoints (one copy expected);
 3. the training pipeline's samples per second: grain's train_dataset over the training split
    with the training transform (uniform sampling to 100 frames, flip, scale, shift, the joint
    stream), at batch 64, with the threads a run uses.
"""

import argparse
import multiprocessing
import pickle
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from configs import ctrgcn
from csre_jax.data import pyskl
from csre_jax.data.datasets import load_dataset
from csre_jax.data.pipeline import train_dataset
from csre_jax.layouts import BUILTIN_LAYOUTS

JOINTS = BUILTIN_LAYOUTS["coco"].num_joints
NUM_CLASSES = 60
IMG_SHAPE = (1080, 1920)


def write_file(path: Path, count: int, seed: int = 0) -> None:
    """count samples, one in five in split 'test', written with pickle as pyskl does."""
    rng = np.random.default_rng(seed)
    annotations = []
    for i in range(count):
        frames = int(rng.integers(60, 141))
        centre = rng.uniform(200, 800, (2, 1, 1, 2))
        keypoint = centre + rng.normal(0, 60, (2, frames, JOINTS, 2))
        annotations.append(
            {
                "frame_dir": f"sample{i:06d}",
                "label": i % NUM_CLASSES,
                "total_frames": frames,
                "img_shape": IMG_SHAPE,
                "keypoint": keypoint.astype(np.float16),
                "keypoint_score": rng.uniform(0, 1, (2, frames, JOINTS)).astype(np.float16),
            }
        )
    names = [a["frame_dir"] for a in annotations]
    splits = {"train": [n for i, n in enumerate(names) if i % 5], "test": names[::5]}
    with path.open("wb") as f:
        pickle.dump({"split": splits, "annotations": annotations}, f, pickle.HIGHEST_PROTOCOL)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=50, help="timed batches of 64")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "coco.pkl"
        tick = time.perf_counter()
        writer = multiprocessing.get_context("spawn").Process(
            target=write_file, args=(path, args.samples)
        )
        writer.start()
        writer.join()
        print(
            f"wrote {args.samples:,} samples ({path.stat().st_size / 2**30:.2f} GiB) in "
            f"{time.perf_counter() - tick:.0f} s"
        )

        tick = time.perf_counter()
        content = pyskl.read(path)
        read = time.perf_counter() - tick
        tick = time.perf_counter()
        pyskl.check(content, str(path), BUILTIN_LAYOUTS["coco"])
        check = time.perf_counter() - tick
        keypoint_bytes = sum(
            a["keypoint"].nbytes + a["keypoint_score"].nbytes for a in content["annotations"]
        )
        print(
            f"1. read {read:.1f} s, check {check:.1f} s "
            f"({check / args.samples * 1e6:.0f} us per sample)"
        )
        del content

        config = ctrgcn.get_config("custom")
        config.data.path = str(path)
        tick = time.perf_counter()
        dataset = load_dataset(config.data)
        print(
            f"2. load_dataset {time.perf_counter() - tick:.1f} s; peak RSS {peak_rss_gib():.2f} "
            f"GiB for {keypoint_bytes / 2**30:.2f} GiB of keypoints and scores"
        )

    batches = iter(
        train_dataset(
            dataset.train, global_batch_size=64, seed=0, transform=dataset.train_transform
        )
    )
    next(batches)  # threads started, first batch ready
    tick = time.perf_counter()
    for _ in range(args.batches):
        batch = next(batches)
    elapsed = time.perf_counter() - tick
    print(
        f"3. train pipeline: {args.batches * 64 / elapsed:.0f} samples/s "
        f"({args.batches * 64:,} samples, batches of {tuple(batch['x'].shape)}); "
        f"peak RSS {peak_rss_gib():.2f} GiB"
    )


if __name__ == "__main__":
    main()
