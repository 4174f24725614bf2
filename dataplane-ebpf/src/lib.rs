//! The kernel programs are in the `dataplane` binary target (`src/main.rs`); this empty library
//! lets `dataplane`'s build script depend on the crate so that cargo rebuilds it on changes.
#![no_std]
