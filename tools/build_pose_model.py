"""Builds csre_jax/video/pose_landmarker_full.task, the BlazePose model that
`csre_jax.video.extract_pose` runs, from the two Apache-2.0 models in the mediapipe 0.10.21
wheel, once, so that extraction needs no download.

mediapipe 1.2.3 (requirements-video.txt) runs BlazePose only from a `.task` bundle whose
models carry their input normalisation as TFLite metadata; the wheel's raw models have none,
and only 0.10.21 can write it. 0.10.21 pins protobuf<5, which conflicts with grain, so it
runs in a throwaway virtual environment (Python 3.11):

    python3 -m venv /tmp/mp01021 && /tmp/mp01021/bin/pip install mediapipe==0.10.21
    cd <repository root> && /tmp/mp01021/bin/python -m tools.build_pose_model

What it writes (the models' weights and graphs are unchanged): pose_detector.tflite =
modules/pose_detection/pose_detection.tflite with metadata saying its RGB input is normalised
to [-1, 1] (mean 127.5, std 127.5), pose_landmarks_detector.tflite =
modules/pose_landmark/pose_landmark_full.tflite with its input normalised to [0, 1] (mean 0,
std 255), both stored uncompressed (4-byte aligned, fixed dates: the same wheel gives the same
bytes) as the Tasks API reads them; csre_jax/video/NOTICE records this. `--out` writes
elsewhere.
"""

import argparse
import hashlib
import zipfile
from pathlib import Path

from csre_jax.fileio import atomic_write

WHEEL_VERSION = "0.10.21"
try:
    import mediapipe
    from mediapipe.tasks.python.metadata.metadata_writers import (
        metadata_writer,
        model_asset_bundle_utils,
        writer_utils,
    )
except ImportError as e:
    raise SystemExit(
        f"error: {e}; run this with the python of a venv holding mediapipe=={WHEEL_VERSION} "
        "(see the docstring of tools/build_pose_model.py)"
    ) from None

OUT = Path(__file__).resolve().parents[1] / "csre_jax" / "video" / "pose_landmarker_full.task"
# (name in the bundle, model in the wheel, normalisation mean, std, what it is)
MODELS = (
    (
        "pose_detector.tflite",
        "modules/pose_detection/pose_detection.tflite",
        127.5,
        127.5,
        "BlazePose person detector (224x224 RGB in [-1, 1])",
    ),
    (
        "pose_landmarks_detector.tflite",
        "modules/pose_landmark/pose_landmark_full.tflite",
        0.0,
        255.0,
        "BlazePose full landmark model (256x256 RGB in [0, 1])",
    ),
)


def with_normalisation(model: bytes, name: str, mean: float, std: float, what: str) -> bytes:
    """The model with metadata naming its image input's normalisation and its outputs."""
    writer = metadata_writer.MetadataWriter.create(bytearray(model))
    writer.add_general_info(Path(name).stem, what).add_image_input([mean], [std])
    for output in writer_utils.get_output_tensor_names(bytearray(model)):
        writer.add_feature_output(name=output)
    content, _ = writer.populate()
    return bytes(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="the .task file to write")
    args = parser.parse_args()
    if mediapipe.__version__ != WHEEL_VERSION:
        raise SystemExit(
            f"error: mediapipe {mediapipe.__version__} found, the models come from "
            f"{WHEEL_VERSION}: run this with a venv holding mediapipe=={WHEEL_VERSION}"
        )
    wheel = Path(mediapipe.__file__).parent
    bundle = {
        name: with_normalisation((wheel / source).read_bytes(), name, mean, std, what)
        for name, source, mean, std, what in MODELS
    }
    with (
        atomic_write(args.out) as tmp,
        model_asset_bundle_utils.AlignZipFile(tmp, mode="w", alignment=4) as zf,
    ):
        for name, content in bundle.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest})")


if __name__ == "__main__":
    main()
