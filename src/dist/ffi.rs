//! The C ABI of shim.cpp. Every function but `poac_dist_destroy` / `poac_dist_free_error` returns null on
//! success or an error message the caller releases with `poac_dist_free_error`.

use std::ffi::{c_char, c_int};
use torch_sys::C_tensor;

/// A TCPStore and the process group built on it (opaque).
#[repr(C)]
pub struct Group {
    _private: [u8; 0],
}

/// Gloo binds the address `MASTER_ADDR`-style hostname resolves to.
pub const DEVICE_HOSTNAME: c_int = 0;
/// Gloo binds a named network interface (`GLOO_SOCKET_IFNAME`).
pub const DEVICE_INTERFACE: c_int = 1;
/// Gloo binds the address this machine's hostname resolves to, else loopback.
pub const DEVICE_DEFAULT: c_int = 2;

/// Element-wise sum over ranks.
pub const REDUCE_SUM: c_int = 0;
/// Element-wise maximum over ranks.
pub const REDUCE_MAX: c_int = 1;

extern "C" {
    pub fn poac_dist_init(
        master_addr: *const c_char,
        master_port: u16,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        nccl: c_int,
        device_kind: c_int,
        device_name: *const c_char,
        out: *mut *mut Group,
    ) -> *mut c_char;
    pub fn poac_dist_all_reduce(group: *mut Group, tensor: *mut C_tensor, op: c_int) -> *mut c_char;
    pub fn poac_dist_broadcast(group: *mut Group, tensor: *mut C_tensor, root: c_int) -> *mut c_char;
    pub fn poac_dist_all_gather(group: *mut Group, input: *const C_tensor, output: *mut C_tensor) -> *mut c_char;
    pub fn poac_dist_barrier(group: *mut Group) -> *mut c_char;
    pub fn poac_dist_destroy(group: *mut Group);
    pub fn poac_dist_free_error(error: *mut c_char);
}
