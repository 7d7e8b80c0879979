"""The compiled engine: `moeforge/_moeforge*.so` when installed by pip, else `_moeforge` found on
PYTHONPATH (a build tree: <build>/python/bindings, as the test suite sets it)."""
try:
    from . import _moeforge as native
except ImportError:
    import _moeforge as native

__all__ = ["native"]
