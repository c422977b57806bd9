"""Data sets, partitioners, model builders and ``evaluate``, shared by ``train`` and ``simulate``.

One factory contract for both commands: a data set or a model is named by ``name`` (a built-in, or
``"package.module:function"``) with ``kwargs``. A data factory is called as ``function(**kwargs)`` and
returns a map-style dataset of ``(features, label)``, a pair ``(train, test)`` of them, or
``(x_train, y_train, x_test, y_test)`` arrays; a model factory is called as
``function(input_shape=(...), num_classes=K, **kwargs)`` and returns a ``torch.nn.Module``.

Built in: ``digits``, ``synthetic`` and ``stdlib_text`` (next-byte prediction on the interpreter's standard
library, task ``"lm"``: targets ``(B, T)``); ``mlp``, ``cnn`` and ``gpt``. One loss for both tasks:
:func:`token_cross_entropy`.
"""

from distsched.data.batches import ShardBatches, examples_in
from distsched.data.datasets import (
    ArrayData,
    DataBundle,
    arrays_from_factory,
    blobs,
    bundle_from_factory,
    digits,
    digits_arrays,
    digits_flat,
    leaf_synthetic,
    load_arrays,
    load_bundle,
    stdlib_text,
    stdlib_text_arrays,
)
from distsched.data.evaluate import bits_per_token, evaluate, evaluate_tensors, token_cross_entropy
from distsched.data.gpt import GPT, gpt
from distsched.data.models import BUILTIN_MODELS, build_model, cnn, flat_params, mlp
from distsched.data.partitions import (
    SCHEMES,
    Partition,
    PartitionStats,
    dirichlet,
    iid,
    iid_shards,
    label_counts,
    label_skew_shards,
    make_partition,
    make_shards,
    partition_stats,
    plot_partition,
    power_law,
    shards,
)

__all__ = [
    "BUILTIN_MODELS",
    "GPT",
    "SCHEMES",
    "ArrayData",
    "DataBundle",
    "Partition",
    "PartitionStats",
    "ShardBatches",
    "arrays_from_factory",
    "bits_per_token",
    "blobs",
    "build_model",
    "bundle_from_factory",
    "cnn",
    "digits",
    "digits_arrays",
    "digits_flat",
    "dirichlet",
    "evaluate",
    "evaluate_tensors",
    "examples_in",
    "flat_params",
    "gpt",
    "iid",
    "iid_shards",
    "label_counts",
    "label_skew_shards",
    "leaf_synthetic",
    "load_arrays",
    "load_bundle",
    "make_partition",
    "make_shards",
    "mlp",
    "partition_stats",
    "plot_partition",
    "power_law",
    "shards",
    "stdlib_text",
    "stdlib_text_arrays",
    "token_cross_entropy",
]
