"""Weights: the reference's MXNet ImageNet file, PyTorch state dicts and Flax variables.

- ``mxnet``: the NDArray-list reader (NumPy only) and the ResNet-38 MXNet -> PyTorch name map
  (``read_mxnet_params``, ``convert_mxnet_to_torch``, ``from_mxnet_params``).
- ``torch_names``: PyTorch names <-> Flax paths (``torch_name_to_flax``), the tensors a model
  expects (``expected_torch_shapes``) and its size read from a state dict (``infer_model_size``).
- ``conversion``: state dict <-> Flax variables (``from_torch``, ``to_torch``) and
  ``merge_variables`` for partial weights.
- ``files``: ONE loader for every weights file, by suffix (``load_weights_file``: ``.params``,
  ``.pth``/``.pt``, ``.npz``), its writer (``save_weights_file``, ``save_variables``) and
  ``load_pretrained`` (a file merged into initialised variables).
- ``seeded``: deterministic tensors from ``(seed, name)`` for parity fixtures.
- ``cli``: ``hfpl-jax convert-weights``.

What depends on the architecture (backbone prefix, classifier, size inference, tensors to drop)
comes from its ``hfpl_jax.models.ArchSpec``. torch is imported only to read or write ``.pth``
files (the ``torch`` extra). Checkpoints of training runs are ``hfpl_jax.checkpoint``'s business
(``checkpoint.load_variables(workdir)``), not this package's.
"""

from hfpl_jax.weights.cli import convert_weights_main
from hfpl_jax.weights.conversion import from_torch, merge_variables, to_torch
from hfpl_jax.weights.files import (
    FORMATS,
    load_pretrained,
    load_weights_file,
    read_torch_state_dict,
    save_variables,
    save_weights_file,
    weights_format,
)
from hfpl_jax.weights.mxnet import (
    LIST_MAGIC,
    MSHADOW_DTYPES,
    NDARRAY_V1_MAGIC,
    NDARRAY_V2_MAGIC,
    NDARRAY_V3_MAGIC,
    NUM_RESNET38_BACKBONE_TENSORS,
    MXNetFormatError,
    backbone_torch_names,
    convert_mxnet_to_torch,
    from_mxnet_params,
    mxnet_name_to_torch,
    read_mxnet_ndarray_list,
    read_mxnet_params,
)
from hfpl_jax.weights.seeded import seeded_array, seeded_state_dict
from hfpl_jax.weights.torch_names import (
    expected_torch_shapes,
    flax_path_to_torch,
    infer_model_size,
    torch_name_to_flax,
)

__all__ = [
    "FORMATS",
    "LIST_MAGIC",
    "MSHADOW_DTYPES",
    "NDARRAY_V1_MAGIC",
    "NDARRAY_V2_MAGIC",
    "NDARRAY_V3_MAGIC",
    "NUM_RESNET38_BACKBONE_TENSORS",
    "MXNetFormatError",
    "backbone_torch_names",
    "convert_mxnet_to_torch",
    "convert_weights_main",
    "expected_torch_shapes",
    "flax_path_to_torch",
    "from_mxnet_params",
    "from_torch",
    "infer_model_size",
    "load_pretrained",
    "load_weights_file",
    "merge_variables",
    "mxnet_name_to_torch",
    "read_mxnet_ndarray_list",
    "read_mxnet_params",
    "read_torch_state_dict",
    "save_variables",
    "save_weights_file",
    "seeded_array",
    "seeded_state_dict",
    "to_torch",
    "torch_name_to_flax",
    "weights_format",
]
