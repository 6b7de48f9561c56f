//! Password hashing (argon2id) on a fixed pool of threads with a bounded queue.
//!
//! Why not `spawn_blocking`: every argon2 computation needs 19 MiB of working memory. Allocated
//! per call on whichever of tokio's (up to 512) blocking threads runs it, that memory stays in
//! each thread's allocator arena after it is freed, and a login flood grows the process by
//! 19 MiB per thread it touched. Here a fixed number of threads each allocate their working
//! memory once and reuse it, so hashing holds `threads × 19 MiB`, whatever the load.
//!
//! Why a bounded queue: hashing is deliberately slow (tens of milliseconds). A flood beyond what
//! the threads can do would otherwise queue without bound and stall every real sign-in behind
//! it; here a job that finds the queue full is refused at once ([`PasswordError::Busy`]), and a
//! queued job whose caller went away is skipped.
//!
//! A login for an unknown account runs [`PasswordPool::verify`] with no stored hash: the same
//! argon2 computation against a fixed salt, so it costs what a wrong password costs and the
//! answer's timing does not tell whether the account exists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

/// The salt of the stand-in computation for unknown accounts.
const STAND_IN_SALT: &[u8] = b"commerce-unknown-account";
/// Length of the hashes this pool writes (argon2's default, 32 bytes).
const OUTPUT_LEN: usize = 32;

/// Why a password job was not done.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The queue is full: the caller should be told to retry shortly.
    #[error("password hashing is saturated")]
    Busy,
    #[error("hashing a password: {0}")]
    Failed(String),
}

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, PasswordError>>,
    },
    Verify {
        password: String,
        /// `None` for an unknown account: the stand-in computation.
        hash: Option<String>,
        reply: oneshot::Sender<bool>,
    },
}

/// The hashing threads and their queue.
pub struct PasswordPool {
    jobs: SyncSender<Job>,
    computed: Arc<AtomicU64>,
}

impl PasswordPool {
    /// `threads` hashing threads (each holding `params`' working memory) and room for `queue`
    /// waiting jobs.
    pub fn new(params: Params, threads: usize, queue: usize) -> Self {
        let (jobs, rx) = std::sync::mpsc::sync_channel(queue);
        let rx = Arc::new(Mutex::new(rx));
        let computed = Arc::new(AtomicU64::new(0));
        for i in 0..threads.max(1) {
            let (rx, params, computed) = (rx.clone(), params.clone(), computed.clone());
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&rx, &params, &computed))
                .expect("spawning a hashing thread");
        }
        Self { jobs, computed }
    }

    /// Hashes `password` with a random salt into a PHC string.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        answer
            .await
            .unwrap_or_else(|_| Err(PasswordError::Failed("the hashing thread stopped".into())))
    }

    /// Whether `password` matches `hash`; with `hash` `None`, the same work and `false`.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify {
            password,
            hash,
            reply,
        })?;
        Ok(answer.await.unwrap_or(false))
    }

    /// How many argon2 computations the pool has run.
    pub fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }

    fn submit(&self, job: Job) -> Result<(), PasswordError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => {
                metrics::counter!("auth_hashing_refused_total").increment(1);
                PasswordError::Busy
            }
            TrySendError::Disconnected(_) => {
                PasswordError::Failed("the hashing threads stopped".into())
            }
        })
    }
}

/// One hashing thread: takes jobs until the pool is dropped, reusing one block of memory
/// (allocated at its first job, so an idle pool holds none).
fn work(rx: &Mutex<Receiver<Job>>, params: &Params, computed: &AtomicU64) {
    let mut memory = Vec::new();
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        match job {
            Job::Hash { password, reply } => {
                if reply.is_closed() {
                    continue;
                }
                fit(&mut memory, params);
                let result = hash(params, &password, &mut memory);
                computed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("auth_password_hashes_total", "op" => "hash").increment(1);
                let _ = reply.send(result);
            }
            Job::Verify {
                password,
                hash,
                reply,
            } => {
                if reply.is_closed() {
                    continue;
                }
                let ok = match hash {
                    Some(hash) => verify(&password, &hash, &mut memory),
                    None => {
                        fit(&mut memory, params);
                        let mut out = [0u8; OUTPUT_LEN];
                        let _ = argon2id(params.clone(), Version::V0x13)
                            .hash_password_into_with_memory(
                                password.as_bytes(),
                                STAND_IN_SALT,
                                &mut out,
                                &mut memory[..],
                            );
                        false
                    }
                };
                computed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("auth_password_hashes_total", "op" => "verify").increment(1);
                let _ = reply.send(ok);
            }
        }
    }
}

/// Grows `memory` to what `params` need.
fn fit(memory: &mut Vec<Block>, params: &Params) {
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
}

fn argon2id(params: Params, version: Version) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, version, params)
}

fn hash(params: &Params, password: &str, memory: &mut [Block]) -> Result<String, PasswordError> {
    let failed = |e: &dyn std::fmt::Display| PasswordError::Failed(e.to_string());
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|e| failed(&e))?;
    let mut out = [0u8; OUTPUT_LEN];
    argon2id(params.clone(), Version::V0x13)
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, memory)
        .map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// Checks `password` against the PHC string `hash` (argon2id, any parameters: a hash written
/// with other parameters than today's still verifies; its memory is grown to fit if needed).
fn verify(password: &str, hash: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return false;
    }
    let (Ok(params), Some(salt), Some(expected)) =
        (Params::try_from(&parsed), parsed.salt, parsed.hash)
    else {
        return false;
    };
    let Ok(version) = parsed
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    fit(memory, &params);
    let mut out = vec![0u8; expected.len()];
    if argon2id(params, version)
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, &mut memory[..])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    Output::new(&out).is_ok_and(|out| out == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Params {
        Params::new(1024, 1, 1, None).unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_the_stand_in_costs_one_computation() {
        let pool = PasswordPool::new(small(), 1, 4);
        let hash = pool.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
        assert!(
            pool.verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!pool.verify("wrong horse".into(), Some(hash)).await.unwrap());
        assert!(!pool.verify("anything".into(), None).await.unwrap());
        assert_eq!(
            pool.computed(),
            4,
            "the unknown account cost one argon2 run too"
        );
    }

    #[tokio::test]
    async fn hashes_written_by_the_argon2_crate_with_other_parameters_verify() {
        use argon2::password_hash::PasswordHasher;
        let other = Params::new(2048, 2, 1, None).unwrap();
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let hash = argon2id(other, Version::V0x13)
            .hash_password(b"s3cret-pass", &salt)
            .unwrap()
            .to_string();
        let pool = PasswordPool::new(small(), 1, 4);
        assert!(
            pool.verify("s3cret-pass".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!pool.verify("s3cret-pasS".into(), Some(hash)).await.unwrap());
        assert!(
            !pool
                .verify("x".into(), Some("not a hash".into()))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        // One slow thread, room for one waiting job: of many submitted at once, most are refused
        // immediately instead of waiting.
        let pool = Arc::new(PasswordPool::new(
            Params::new(64 * 1024, 4, 1, None).unwrap(),
            1,
            1,
        ));
        let attempts: Vec<_> = (0..20)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.verify("pw".into(), None).await })
            })
            .collect();
        let mut busy = 0;
        for a in attempts {
            if matches!(a.await.unwrap(), Err(PasswordError::Busy)) {
                busy += 1;
            }
        }
        assert!(
            busy >= 18,
            "only {busy} of 20 refused with one thread and one queue slot"
        );
    }
}
