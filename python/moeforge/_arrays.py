"""Array arguments: NumPy arrays and DLPack producers pass through to the engine as they are (zero
copy); lists and other array-likes become NumPy arrays. Results come back as NumPy arrays, or as
torch tensors on the inputs' device when the inputs were torch tensors (as Transformers users expect)."""
import numpy as np


def _torch_module_of(value):
    """torch, when `value` is a torch.Tensor (torch is then already imported), else None."""
    if not type(value).__module__.startswith("torch"):
        return None
    import torch

    return torch if isinstance(value, torch.Tensor) else None


def as_array(value, name, ndim=2):
    """`value` as something the engine reads: a 2-D integer array, or None."""
    if value is None:
        return None
    if _torch_module_of(value) is not None:
        # Token ids, masks and labels are prepared on the host whatever the model's device, so a CUDA
        # tensor comes over once here; a CPU tensor is read in place through DLPack.
        return value.detach().cpu()
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


def like_input(result, reference):
    """`result` (a NumPy array or a float) as a torch tensor on `reference`'s device when `reference`
    is a torch tensor; otherwise unchanged."""
    torch = _torch_module_of(reference)
    if torch is None or result is None:
        return result
    if isinstance(result, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(result)).to(reference.device)
    return torch.tensor(result, device=reference.device)
