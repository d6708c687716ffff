"""Skeleton data: one reader per source, per-sample transforms, and the dataset they make.

Imports run one way, down the layers: LAYERS below lists what each layer may import, and no
module imports one of its own layer, so readers and transforms know nothing of each other.

    commands         ntu_prepare, convert          python -m csre_jax.data.<command>
                           |
    assembly            datasets                   config.data -> Dataset
                 .----------'----------.
    readers      ntu_raw, ntu_splits,  |           a source's files -> samples, labels
                 ucla, pyskl,          |
                 synthetic             |
    pyskl transform             pyskl_transform
    transforms                     transforms      one sample -> model inputs
    batching                        pipeline       Split, Transform; grain batches

    files --reader--> samples, labels --datasets--> Split + Transform --pipeline--> batches

A reader gives each split as its samples and their 0-based int32 labels, in the source's
order (pyskl also names each sample by its frame_dir); a sample is as the source stores it:

    ntu_splits   a (T, 150) float32 row of a memory-mapped split file; ntu_row_to_sample views
                 it as (3, T, 25, 2)
    ucla         a raw (F, 20, 3) float32 clip
    synthetic    a (3, T, 25, M) float32 array ({'x': samples, 'label': labels})
    pyskl        an annotation dict: keypoint (M, T, V, C), optionally keypoint_score
                 (M, T, V) and img_shape (h, w)
    ntu_raw      one .skeleton file's bodies, which ntu_prepare writes into split files

datasets.py puts the samples of the config's source into `Split`s beside the transform that
takes them (pyskl annotations go through pyskl_transform.Packed, packed when drawn).
"""

LAYERS = (
    # (layer, its modules, the layers beneath it that they may import), bottom up
    ("batching", ("pipeline",), ()),
    ("readers", ("ntu_raw", "ntu_splits", "pyskl", "synthetic", "ucla"), ()),
    ("transforms", ("transforms",), ("batching",)),
    ("pyskl transform", ("pyskl_transform",), ("batching", "transforms")),
    ("assembly", ("datasets",), ("batching", "readers", "transforms", "pyskl transform")),
    (
        "commands",
        ("convert", "ntu_prepare"),
        ("batching", "readers", "transforms", "pyskl transform", "assembly"),
    ),
)
