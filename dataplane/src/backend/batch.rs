//! Many map entries in one system call: `BPF_MAP_UPDATE_BATCH` (Linux 5.6+).
//!
//! aya 0.14 has no batch API, so this issues the bpf(2) command itself on the map's descriptor.
//! Hash maps have had batches since 5.6; other map types (the LPM trie of routes, on some
//! kernels) answer that the command is not supported, and the caller then writes one entry at
//! a time. A program reads a map while it is written either way: a batch is no transaction.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya::Pod;

/// `BPF_MAP_UPDATE_BATCH` in `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// `ENOTSUPP`, the kernel's own "not supported" (not in libc: it never reaches most callers),
/// which bpf(2) returns for a map type without batch operations.
const ENOTSUPP: i32 = 524;
/// Entries per system call: the kernel walks them one by one and reschedules between them, so
/// this only bounds the arrays handed over.
pub const CHUNK: usize = 16_384;

/// The `batch` member of `union bpf_attr`, as bpf(2) reads it for the batch commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batch was not (wholly) written.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The kernel has no batch update for this map type: write the entries one by one.
    #[error("this kernel has no batch update for the map")]
    Unsupported,
    /// The kernel refused after writing `written` entries.
    #[error("batch update failed after {written} entries: {error}")]
    Failed {
        /// Entries written before the failure, in order.
        written: usize,
        /// What the kernel said.
        error: std::io::Error,
    },
}

/// Writes `keys[i] -> values[i]` into the map behind `map`, [`CHUNK`] entries per call.
/// `keys` and `values` must have the same length (the shorter one decides otherwise).
pub fn update<K: Pod, V: Pod>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> Result<(), BatchError> {
    let total = keys.len().min(values.len());
    let mut written = 0;
    while written < total {
        let end = (written + CHUNK).min(total);
        let (chunk_keys, chunk_values) = (&keys[written..end], &values[written..end]);
        let mut attr = BatchAttr {
            keys: chunk_keys.as_ptr() as u64,
            values: chunk_values.as_ptr() as u64,
            // At most CHUNK: fits.
            count: (end - written) as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at `count` keys and values of the map's own sizes (the caller's
        // Pod types are the map's key and value, as aya checked when it opened the map), which
        // live until the call returns; the kernel writes back only `count`, inside `attr`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        if result < 0 {
            let error = std::io::Error::last_os_error();
            let code = error.raw_os_error().unwrap_or_default();
            let unsupported = code == libc::EINVAL || code == ENOTSUPP || code == libc::EOPNOTSUPP;
            if unsupported && written == 0 && attr.count == 0 {
                return Err(BatchError::Unsupported);
            }
            // The kernel says in `count` how many of this chunk it wrote.
            return Err(BatchError::Failed { written: written + attr.count as usize, error });
        }
        written = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attribute_has_the_kernels_layout() {
        // Eight-byte members and two four-byte ones: no padding, as in union bpf_attr.
        assert_eq!(std::mem::size_of::<BatchAttr>(), 56);
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(std::mem::offset_of!(BatchAttr, elem_flags), 40);
    }
}
