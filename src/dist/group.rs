//! A safe handle on one c10d process group (TCPStore rendezvous + Gloo, or NCCL with the `cuda` feature): the
//! only place poac calls into the shim.

use super::ffi;
use anyhow::{anyhow, Context, Result};
use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;
use tch::Tensor;

/// How the ranks find each other and which backend carries their collectives.
#[derive(Clone, Debug)]
pub struct Rendezvous {
    /// Host of rank 0's TCPStore.
    pub master_addr: String,
    /// Port of rank 0's TCPStore.
    pub master_port: u16,
    /// This process's rank.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// How long the rendezvous and each collective may wait for the other ranks.
    pub timeout: Duration,
    /// NCCL instead of Gloo (GPU tensors; needs the `cuda` feature).
    pub nccl: bool,
    /// The network interface Gloo binds (torch's `GLOO_SOCKET_IFNAME`); by default the address `master_addr`
    /// resolves to when that is a loopback address (a single machine), else this machine's hostname's.
    pub interface: Option<String>,
}

/// A reduction over ranks.
#[derive(Clone, Copy, Debug)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise maximum.
    Max,
}

/// A connected process group; destroyed on drop.
pub struct ProcessGroup {
    raw: NonNull<ffi::Group>,
}

// SAFETY: the group is only used through `&self` from one thread at a time in poac; c10d's backends are
// themselves thread-safe, and nothing in the handle is tied to the creating thread.
unsafe impl Send for ProcessGroup {}

/// Turns the shim's return value into a `Result`, releasing the message.
fn check(error: *mut std::ffi::c_char) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'ed by the shim, released exactly once here.
    let text = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { ffi::poac_dist_free_error(error) };
    Err(anyhow!(text.trim().to_string()))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl ProcessGroup {
    /// Joins the group: rank 0 serves the TCPStore on `master_port`, the others connect to it; returns once
    /// all `world_size` ranks are in, or an error naming the address after `timeout`.
    pub fn connect(rv: &Rendezvous) -> Result<Self> {
        let where_ = format!("{}:{}", rv.master_addr, rv.master_port);
        let (kind, device) = match &rv.interface {
            Some(name) => (ffi::DEVICE_INTERFACE, name.clone()),
            None if is_loopback(&rv.master_addr) => (ffi::DEVICE_HOSTNAME, rv.master_addr.clone()),
            None => (ffi::DEVICE_DEFAULT, String::new()),
        };
        let addr = CString::new(rv.master_addr.as_str()).context("MASTER_ADDR holds a NUL byte")?;
        let device = CString::new(device).context("GLOO_SOCKET_IFNAME holds a NUL byte")?;
        let timeout_ms = i64::try_from(rv.timeout.as_millis()).unwrap_or(i64::MAX);
        let mut raw = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; `raw` receives a group owned by the returned handle.
        check(unsafe {
            ffi::poac_dist_init(
                addr.as_ptr(),
                rv.master_port,
                rv.rank as i32,
                rv.world_size as i32,
                timeout_ms,
                rv.nccl as i32,
                kind,
                device.as_ptr(),
                &mut raw,
            )
        })
        .with_context(|| {
            let role = if rv.rank == 0 { "serving" } else { "reaching" };
            format!("rank {} of {}: rendezvous failed {role} the master at {where_}", rv.rank, rv.world_size)
        })?;
        let raw = NonNull::new(raw).context("the c10d shim returned no group")?;
        Ok(ProcessGroup { raw })
    }

    /// Reduces `tensor` over all ranks, in place.
    pub fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<()> {
        let op = match op {
            ReduceOp::Sum => ffi::REDUCE_SUM,
            ReduceOp::Max => ffi::REDUCE_MAX,
        };
        // SAFETY: `tensor` is a live at::Tensor for the duration of the call.
        check(unsafe { ffi::poac_dist_all_reduce(self.raw.as_ptr(), tensor.as_mut_ptr(), op) })
    }

    /// Overwrites `tensor` on every rank with rank `root`'s.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        // SAFETY: as in `all_reduce`.
        check(unsafe { ffi::poac_dist_broadcast(self.raw.as_ptr(), tensor.as_mut_ptr(), root as i32) })
    }

    /// Writes every rank's `input` into `output` (world size × its elements, rank-major).
    pub fn all_gather(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        // SAFETY: both tensors are live for the duration of the call; the shim checks the sizes.
        check(unsafe { ffi::poac_dist_all_gather(self.raw.as_ptr(), input.as_ptr(), output.as_mut_ptr()) })
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: the group is live.
        check(unsafe { ffi::poac_dist_barrier(self.raw.as_ptr()) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the group was created by `poac_dist_init` and is destroyed once.
        unsafe { ffi::poac_dist_destroy(self.raw.as_ptr()) }
    }
}
