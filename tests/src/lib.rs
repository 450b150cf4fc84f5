//! End-to-end tests of the `extract` and `train` binaries; see `tests/tests/`.
