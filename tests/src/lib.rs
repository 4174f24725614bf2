//! Helpers shared by the integration tests in `tests/`, which need root and network namespaces.
#![deny(missing_docs)]

pub mod packet;
pub mod program;
