//! Data-parallel training on PyTorch's distributed engine (c10d): torchrun's environment, a process group, and
//! the collectives of a training step, bucketed into a few flat buffers. A single process needs none of it:
//! [`World::single`] makes every collective a no-op.

mod ffi;
mod group;

pub use group::{ProcessGroup, ReduceOp, Rendezvous};

use anyhow::{bail, ensure, Context, Result};
use std::time::Duration;
use tch::{Kind, Tensor};

/// Tensors are reduced in flat buffers of at most this many bytes (DDP's default bucket size).
const BUCKET_BYTES: usize = 25 << 20;

/// Where this process sits among a run's workers, as torchrun (and `poac launch`) describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    /// Global rank (`RANK`).
    pub rank: usize,
    /// Number of processes (`WORLD_SIZE`).
    pub world_size: usize,
    /// Rank on this node (`LOCAL_RANK`; the GPU a CUDA rank uses).
    pub local_rank: usize,
    /// Rank 0's host (`MASTER_ADDR`).
    pub master_addr: String,
    /// Rank 0's TCPStore port (`MASTER_PORT`).
    pub master_port: u16,
}

impl Topology {
    /// Reads torchrun's variables through `var`; `None` when `WORLD_SIZE` is unset or 1 (one process).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name).map(|v| v.trim().parse().with_context(|| format!("{name}={v:?} is not a non-negative integer"))).transpose()
        };
        let world_size = number("WORLD_SIZE")?.unwrap_or(1);
        if world_size <= 1 {
            return Ok(None);
        }
        let rank = number("RANK")?.context("WORLD_SIZE is set but RANK is not")?;
        ensure!(rank < world_size, "RANK {rank} must be below WORLD_SIZE {world_size}");
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = var("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let Ok(master_port) = port.trim().parse::<u16>() else { bail!("MASTER_PORT={port:?} is not a port number") };
        let local_rank = number("LOCAL_RANK")?.unwrap_or(rank);
        Ok(Some(Topology { rank, world_size, local_rank, master_addr, master_port }))
    }

    /// [`Topology::from_vars`] of the process environment.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

/// The ranks of a run and the collectives between them; for one process every collective returns at once.
pub struct World {
    group: Option<ProcessGroup>,
    rank: usize,
    size: usize,
    local_rank: usize,
}

impl World {
    /// One process: nothing to communicate.
    pub fn single() -> Self {
        World { group: None, rank: 0, size: 1, local_rank: 0 }
    }

    /// The world torchrun's environment describes (see [`Topology::from_env`]), connected with `timeout` per
    /// rendezvous and collective; [`World::single`] without one. `nccl` picks NCCL over Gloo.
    pub fn from_env(timeout: Duration, nccl: bool) -> Result<Self> {
        let Some(topology) = Topology::from_env()? else { return Ok(Self::single()) };
        let rendezvous = Rendezvous {
            master_addr: topology.master_addr,
            master_port: topology.master_port,
            rank: topology.rank,
            world_size: topology.world_size,
            timeout,
            nccl,
            interface: std::env::var("GLOO_SOCKET_IFNAME").ok().filter(|s| !s.is_empty()),
        };
        let group = ProcessGroup::connect(&rendezvous)?;
        Ok(World { group: Some(group), rank: topology.rank, size: topology.world_size, local_rank: topology.local_rank })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank on this node (the GPU of a CUDA rank).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0, which writes checkpoints and logs.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Sums each tensor over the ranks, in place.
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<()> {
        self.bucketed("all-reduce (sum)", tensors, |group, flat| group.all_reduce(flat, ReduceOp::Sum))
    }

    /// Averages each tensor over the ranks, in place (Gloo has no average: a sum divided by the world size).
    pub fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<()> {
        let size = self.size as f64;
        self.bucketed("all-reduce (mean)", tensors, |group, flat| {
            group.all_reduce(flat, ReduceOp::Sum)?;
            let _ = flat.g_div_scalar_(size);
            Ok(())
        })
    }

    /// The element-wise maximum of each tensor over the ranks, in place.
    pub fn all_reduce_max(&self, tensors: &[Tensor]) -> Result<()> {
        self.bucketed("all-reduce (max)", tensors, |group, flat| group.all_reduce(flat, ReduceOp::Max))
    }

    /// Overwrites each tensor with rank 0's.
    pub fn broadcast_from_root(&self, tensors: &[Tensor]) -> Result<()> {
        self.bucketed("broadcast", tensors, |group, flat| group.broadcast(flat, 0))
    }

    /// Every rank's `values` (all ranks pass as many), by rank.
    pub fn all_gather(&self, values: &[f64]) -> Result<Vec<Vec<f64>>> {
        let Some(group) = &self.group else { return Ok(vec![values.to_vec()]) };
        let input = Tensor::from_slice(values);
        let mut output = Tensor::zeros([(self.size * values.len()) as i64], (Kind::Double, tch::Device::Cpu));
        group.all_gather(&input, &mut output).with_context(|| self.failed("all-gather"))?;
        let flat = Vec::<f64>::try_from(&output)?;
        Ok(flat.chunks(values.len().max(1)).map(<[f64]>::to_vec).take(self.size).collect())
    }

    /// Returns when every rank has reached it.
    pub fn barrier(&self) -> Result<()> {
        let Some(group) = &self.group else { return Ok(()) };
        group.barrier().with_context(|| self.failed("barrier"))
    }

    /// What a failed collective says: which rank saw it, and the likely cause.
    fn failed(&self, what: &str) -> String {
        format!("rank {} of {}: {what} across ranks failed (another rank died or did not answer in time)", self.rank, self.size)
    }

    /// Runs `collective` on flat buffers holding `tensors` (grouped by kind and device, at most
    /// [`BUCKET_BYTES`] each) and copies the results back; a lone contiguous tensor is used as it is.
    fn bucketed(&self, what: &str, tensors: &[Tensor], collective: impl Fn(&ProcessGroup, &mut Tensor) -> Result<()>) -> Result<()> {
        let Some(group) = &self.group else { return Ok(()) };
        tch::no_grad(|| {
            for bucket in buckets(tensors) {
                if let [only] = bucket.as_slice() {
                    if only.is_contiguous() {
                        collective(group, &mut only.shallow_clone()).with_context(|| self.failed(what))?;
                        continue;
                    }
                }
                let flat: Vec<Tensor> = bucket.iter().map(|t| t.reshape([-1])).collect();
                let mut flat = Tensor::cat(&flat, 0);
                collective(group, &mut flat).with_context(|| self.failed(what))?;
                let mut offset = 0;
                for t in bucket {
                    let n = t.numel() as i64;
                    t.shallow_clone().copy_(&flat.narrow(0, offset, n).view_as(t));
                    offset += n;
                }
            }
            Ok(())
        })
    }
}

/// `tensors` in order, cut into runs of one kind and device of at most [`BUCKET_BYTES`] (a larger tensor is a
/// bucket of its own).
fn buckets(tensors: &[Tensor]) -> Vec<Vec<&Tensor>> {
    let mut out: Vec<Vec<&Tensor>> = Vec::new();
    let mut bytes = 0;
    for t in tensors.iter().filter(|t| t.defined() && t.numel() > 0) {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let fits = out.last().is_some_and(|last| {
            let first = last[0];
            first.kind() == t.kind() && first.device() == t.device() && bytes + size <= BUCKET_BYTES
        });
        if fits {
            out.last_mut().unwrap().push(t);
            bytes += size;
        } else {
            out.push(vec![t]);
            bytes = size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn torchrun_environment() {
        assert_eq!(Topology::from_vars(vars(&[])).unwrap(), None);
        assert_eq!(Topology::from_vars(vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(), None);
        let env = [("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29400")];
        let t = Topology::from_vars(vars(&env)).unwrap().unwrap();
        assert_eq!(t, Topology { rank: 3, world_size: 4, local_rank: 1, master_addr: "node0".into(), master_port: 29400 });
        let error = |env: &[(&str, &str)]| Topology::from_vars(vars(env)).unwrap_err().to_string();
        assert!(error(&[("WORLD_SIZE", "2")]).contains("RANK"));
        assert!(error(&[("WORLD_SIZE", "2"), ("RANK", "2")]).contains("below WORLD_SIZE"));
        assert!(error(&[("WORLD_SIZE", "two")]).contains("WORLD_SIZE=\"two\""));
        assert!(error(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")]).contains("MASTER_PORT"));
    }

    #[test]
    fn buckets_split_by_kind_and_keep_order() {
        let f = |n: i64| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
        let d = Tensor::zeros([3], (Kind::Double, tch::Device::Cpu));
        let tensors = [f(2), f(3), d, f(4)];
        let sizes: Vec<Vec<i64>> = buckets(&tensors).iter().map(|b| b.iter().map(|t| t.numel() as i64).collect()).collect();
        assert_eq!(sizes, vec![vec![2, 3], vec![3], vec![4]]);
    }
}
