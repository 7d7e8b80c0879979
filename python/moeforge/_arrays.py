"""Array arguments: NumPy arrays and DLPack producers pass through to the engine as they are (zero
copy); lists and other array-likes become NumPy arrays."""
import numpy as np


def as_array(value, name, ndim=2):
    """`value` as something the engine reads: a 2-D integer array, or None."""
    if value is None:
        return None
    if not isinstance(value, np.ndarray) and hasattr(value, "__dlpack__"):
        return value  # torch, jax, cupy, ...: read through DLPack without a copy
    try:
        array = np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{name} must be a rectangular array of integers: {e}") from None
    if array.dtype == object or array.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be [batch, sequence], got shape {array.shape}")
    return np.ascontiguousarray(array)
