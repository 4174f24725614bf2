//! Integration tests of the dataplane live in `tests/`: they need root and network namespaces.
