//! The spill store a task's guest writes runs to (the `task-host.spill-*` imports).
//!
//! A guest has no files: what its operators cannot hold within their memory budget goes
//! here, as runs of frames. Each run is one file under the task's own directory (in the
//! executor's work dir), each frame `u32 length, u32 crc32, bytes`; a frame that reads
//! back with another checksum fails the task. The directory goes when the store drops
//! (the task ended, however), and the executor removes what a crash left at its start.
//! Bytes written count against the task's cap and its tenant's (shared by every task of
//! the tenant on this executor).

use flint_protocol::wire::Limit;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// Largest frame (spill or output chunk) one call may carry.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Most runs a task may hold at once.
pub const MAX_RUNS: usize = 4096;
/// Most runs a task may create in all (ids are not reused, so this bounds the table).
pub const MAX_RUNS_CREATED: usize = 1 << 16;

#[derive(Debug, Error)]
pub enum SpillError {
    #[error("spill file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spill run {0} does not exist (never created, or dropped)")]
    NoRun(u32),
    #[error("spill run {0} was read from: it takes no more frames")]
    Sealed(u32),
    #[error("a spill frame of {0} bytes, over the {MAX_FRAME_BYTES} one call may carry")]
    FrameTooLarge(usize),
    #[error("spill file {path} is corrupt at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
    #[error(
        "the task holds {MAX_RUNS} spill runs or made {MAX_RUNS_CREATED}, the most one task may"
    )]
    TooManyRuns,
    #[error(
        "spill limit hit: the task would spill more than {max} bytes ({setting}); give it more disk or fewer rows per partition"
    )]
    Budget {
        max: u64,
        setting: String,
        /// The tenant's quota (shared with its other tasks), not the task's own.
        tenant: bool,
    },
    #[error("spilling is for tasks: a driver program has no spill store")]
    NotATask,
}

impl SpillError {
    /// The limit this error says was hit, if it is one.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            // A tenant's quota is shared with its other tasks: another attempt may fit.
            SpillError::Budget { tenant: true, .. } => None,
            SpillError::Budget { .. } | SpillError::TooManyRuns => Some(Limit::Spill),
            SpillError::FrameTooLarge(_) => Some(Limit::Output),
            _ => None,
        }
    }
}

/// Disk one tenant's tasks have spilled on this executor, against its quota.
#[derive(Debug)]
pub struct TenantDisk {
    pub tenant: String,
    pub max: u64,
    pub used: AtomicU64,
}

/// Where and how much a task may spill.
#[derive(Clone, Debug)]
pub struct SpillConfig {
    /// The task's own directory; created on the first run, removed with the store.
    pub dir: PathBuf,
    /// `task.max_spill_bytes`.
    pub max_bytes: u64,
    /// The tenant's quota on this executor, when it has one.
    pub tenant: Option<Arc<TenantDisk>>,
}

enum RunState {
    Writing(BufWriter<File>),
    Reading(BufReader<File>, u64),
}

struct Run {
    path: PathBuf,
    state: RunState,
    bytes: u64,
}

/// One task's spill runs.
pub struct SpillStore {
    config: SpillConfig,
    runs: Vec<Option<Run>>,
    /// Runs not dropped yet.
    live: usize,
    created_dir: bool,
    /// Bytes written now on disk (dropped runs subtracted).
    held: u64,
    /// Bytes written in all, for the task's metrics.
    pub written: u64,
    /// Runs created, for the task's metrics.
    pub count: u64,
}

impl SpillStore {
    pub fn new(config: SpillConfig) -> SpillStore {
        SpillStore {
            config,
            runs: Vec::new(),
            live: 0,
            created_dir: false,
            held: 0,
            written: 0,
            count: 0,
        }
    }

    fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SpillError + '_ {
        move |source| SpillError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn create(&mut self) -> Result<u32, SpillError> {
        if self.live >= MAX_RUNS || self.runs.len() >= MAX_RUNS_CREATED {
            return Err(SpillError::TooManyRuns);
        }
        if !self.created_dir {
            std::fs::create_dir_all(&self.config.dir).map_err(Self::io(&self.config.dir))?;
            self.created_dir = true;
        }
        let id = self.runs.len() as u32;
        let path = self.config.dir.join(format!("run-{id}"));
        let file = File::create(&path).map_err(Self::io(&path))?;
        self.runs.push(Some(Run {
            path,
            state: RunState::Writing(BufWriter::with_capacity(256 << 10, file)),
            bytes: 0,
        }));
        self.count += 1;
        self.live += 1;
        Ok(id)
    }

    fn run(&mut self, id: u32) -> Result<&mut Run, SpillError> {
        self.runs
            .get_mut(id as usize)
            .and_then(|r| r.as_mut())
            .ok_or(SpillError::NoRun(id))
    }

    pub fn append(&mut self, id: u32, frame: &[u8]) -> Result<(), SpillError> {
        if frame.len() > MAX_FRAME_BYTES {
            return Err(SpillError::FrameTooLarge(frame.len()));
        }
        let n = frame.len() as u64 + 8;
        if self.held + n > self.config.max_bytes {
            return Err(SpillError::Budget {
                max: self.config.max_bytes,
                setting: "task.max_spill_bytes".into(),
                tenant: false,
            });
        }
        if let Some(t) = &self.config.tenant {
            let before = t.used.fetch_add(n, Ordering::Relaxed);
            if before + n > t.max {
                t.used.fetch_sub(n, Ordering::Relaxed);
                return Err(SpillError::Budget {
                    max: t.max,
                    setting: format!(
                        "tenant {}'s max_executor_spill_bytes, in the tenants file (what its tasks may hold spilled on one executor at once)",
                        t.tenant
                    ),
                    tenant: true,
                });
            }
        }
        let run = self.run(id)?;
        let RunState::Writing(w) = &mut run.state else {
            return Err(SpillError::Sealed(id));
        };
        let crc = crc32fast::hash(frame);
        let r = w
            .write_all(&(frame.len() as u32).to_le_bytes())
            .and_then(|_| w.write_all(&crc.to_le_bytes()))
            .and_then(|_| w.write_all(frame));
        let path = run.path.clone();
        run.bytes += n;
        self.held += n;
        self.written += n;
        r.map_err(Self::io(&path))
    }

    pub fn read(&mut self, id: u32) -> Result<Option<Vec<u8>>, SpillError> {
        let run = self.run(id)?;
        if let RunState::Writing(w) = &mut run.state {
            w.flush().map_err(Self::io(&run.path))?;
            let file = File::open(&run.path).map_err(Self::io(&run.path))?;
            run.state = RunState::Reading(BufReader::with_capacity(256 << 10, file), 0);
        }
        let RunState::Reading(r, offset) = &mut run.state else {
            unreachable!("sealed just above")
        };
        let at = *offset;
        let corrupt = |what| SpillError::Corrupt {
            path: run.path.clone(),
            offset: at,
            what,
        };
        let mut head = [0u8; 8];
        match read_full(r, &mut head).map_err(Self::io(&run.path))? {
            0 => return Ok(None),
            8 => {}
            _ => return Err(corrupt("a frame header is cut short")),
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME_BYTES || at + 8 + len as u64 > run.bytes {
            return Err(corrupt("a frame length runs past what was written"));
        }
        let mut frame = vec![0u8; len];
        if read_full(r, &mut frame).map_err(Self::io(&run.path))? != len {
            return Err(corrupt("a frame is cut short"));
        }
        if crc32fast::hash(&frame) != crc {
            return Err(corrupt("a frame's checksum does not match"));
        }
        *offset = at + 8 + len as u64;
        Ok(Some(frame))
    }

    pub fn drop_run(&mut self, id: u32) {
        if let Some(run) = self.runs.get_mut(id as usize).and_then(Option::take) {
            self.live -= 1;
            self.release(run.bytes);
            let _ = std::fs::remove_file(&run.path);
        }
    }

    fn release(&mut self, bytes: u64) {
        self.held -= bytes;
        if let Some(t) = &self.config.tenant {
            t.used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

impl Drop for SpillStore {
    fn drop(&mut self) {
        let held: u64 = self.runs.iter().flatten().map(|r| r.bytes).sum();
        self.runs.clear();
        self.release(held);
        if self.created_dir {
            let _ = std::fs::remove_dir_all(&self.config.dir);
        }
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path, max: u64, tenant: Option<Arc<TenantDisk>>) -> SpillStore {
        SpillStore::new(SpillConfig {
            dir: dir.join("task"),
            max_bytes: max,
            tenant,
        })
    }

    #[test]
    fn runs_read_back_in_order_and_go_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path(), 1 << 20, None);
        let a = s.create().unwrap();
        let b = s.create().unwrap();
        s.append(a, b"one").unwrap();
        s.append(b, b"x").unwrap();
        s.append(a, b"").unwrap();
        s.append(a, b"three").unwrap();
        assert_eq!(s.read(a).unwrap().as_deref(), Some(&b"one"[..]));
        assert!(matches!(s.append(a, b"late"), Err(SpillError::Sealed(_))));
        assert_eq!(s.read(a).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(s.read(a).unwrap().as_deref(), Some(&b"three"[..]));
        assert_eq!(s.read(a).unwrap(), None);
        assert_eq!(s.read(b).unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!((s.count, s.written), (2, 4 * 8 + 9));
        s.drop_run(b);
        assert!(matches!(s.read(b), Err(SpillError::NoRun(_))));
        assert!(dir.path().join("task").exists());
        drop(s);
        assert!(!dir.path().join("task").exists());
    }

    #[test]
    fn a_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path(), 1 << 20, None);
        let a = s.create().unwrap();
        s.append(a, b"hello world").unwrap();
        let RunState::Writing(w) = &mut s.runs[0].as_mut().unwrap().state else {
            panic!()
        };
        w.flush().unwrap();
        let path = dir.path().join("task").join("run-0");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = s.read(a).unwrap_err().to_string();
        assert!(e.contains("checksum") && e.contains("run-0"), "{e}");
    }

    #[test]
    fn task_and_tenant_budgets_are_enforced_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(dir.path(), 100, None);
        let a = s.create().unwrap();
        s.append(a, &[0; 80]).unwrap();
        let e = s.append(a, &[0; 20]).unwrap_err();
        assert_eq!(e.limit(), Some(Limit::Spill));
        assert!(e.to_string().contains("task.max_spill_bytes"), "{e}");
        s.drop_run(a);
        let b = s.create().unwrap();
        s.append(b, &[0; 80]).unwrap();

        let tenant = Arc::new(TenantDisk {
            tenant: "alice".into(),
            max: 150,
            used: AtomicU64::new(0),
        });
        let mut t1 = store(&dir.path().join("1"), 1 << 20, Some(tenant.clone()));
        let mut t2 = store(&dir.path().join("2"), 1 << 20, Some(tenant.clone()));
        let (r1, r2) = (t1.create().unwrap(), t2.create().unwrap());
        t1.append(r1, &[0; 92]).unwrap();
        let e = t2.append(r2, &[0; 92]).unwrap_err().to_string();
        assert!(e.contains("alice"), "{e}");
        drop(t1);
        assert_eq!(tenant.used.load(Ordering::Relaxed), 0);
        t2.append(r2, &[0; 92]).unwrap();
        assert!(matches!(
            t2.append(r2, &vec![0; MAX_FRAME_BYTES + 1]),
            Err(SpillError::FrameTooLarge(_))
        ));
    }
}
