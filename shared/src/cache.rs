//! The Redis read side (CQRS): pages of a user's orders, cache-aside.
//!
//! A page is stored tagged with the user's current *generation*. Invalidating a user
//! bumps the generation (`INCR`) and unlinks the user's pages, so every page stored
//! before stops matching at once — no `KEYS`, no scan. A refill is fenced: a reader
//! remembers the generation it missed under, and the script that stores the page refuses
//! if the generation moved meanwhile. So a reader that queried PostgreSQL before a saga
//! transition committed, and tries to store its (now stale) page after the worker
//! invalidated, stores nothing.
//!
//! Bounded whatever clients ask: at most [`Limits::pages_per_user`] pages per user (an
//! index set per user counts them), none larger than [`Limits::entry_bytes`] (a larger
//! page is served from PostgreSQL every time).
//!
//! An invalidation Redis did not take is not given up: the user is remembered as
//! *unsettled* and retried every second or two until Redis takes it, and meanwhile this
//! process serves that user from PostgreSQL. So once Redis answers again, a page older
//! than a committed change is gone within [`STALENESS_BOUND`]; only if the process that
//! committed dies during the outage does such a page live on, until its TTL.

use crate::telemetry::names;
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{AsyncCommands, Client, Script, aio::ConnectionManager, aio::ConnectionManagerConfig};
use uuid::Uuid;

use crate::{
    pagination::{Page, SortOrder},
    retry::Policy,
};

/// How long after Redis answers again a page older than a committed change can still be
/// served by another process: the longest retry delay of [`Policy::INVALIDATE`] (1 s,
/// up to 2 s with its jitter), one 500 ms timeout, and a reconnect. The README states
/// it; `cache::a_redis_outage_longer_than_the_retry_window_leaves_no_stale_page` checks it.
pub const STALENESS_BOUND: Duration = Duration::from_secs(5);

/// What one user, one page and one process may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Pages cached per user; past it, a new page takes the place of one of them.
    /// Reproduced without it: one client walking 300 offsets left 301 keys.
    pub pages_per_user: u32,
    /// The largest page stored. 1,000 orders of 1,000 lines make a page of ~100 MB.
    pub entry_bytes: usize,
    /// Users whose invalidation Redis has not taken yet, remembered one by one; past it,
    /// every user's pages are invalidated once Redis answers, and until then this process
    /// does not read the cache at all.
    pub unsettled_users: usize,
    /// `REDIS_TIMEOUT`: for a connection and for each answer. Past it a read falls back
    /// to PostgreSQL and the connection is replaced (a cache that answers late is worse
    /// than none).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pages_per_user: 16,
            entry_bytes: 1024 * 1024,
            unsettled_users: 100_000,
            timeout: Duration::from_millis(500),
        }
    }
}

#[derive(Clone)]
pub struct OrderCache {
    redis: Arc<Link>,
    prefix: String,
    ttl: Duration,
    limits: Limits,
    unsettled: Arc<Unsettled>,
}

/// The connection to Redis, replaced when a command gets no answer in time.
///
/// redis-rs's `ConnectionManager` reconnects when a connection is dropped, not when it
/// falls silent: a response timeout is "retry immediately" to it (redis 1.8.1,
/// `RedisError::retry_method`), so a connection frozen for good (its host gone without a
/// word) kept every command timing out until the process restarted; the chaos run's
/// Redis failover counted 1,216 "cache unavailable" to its end.
/// `the_cache_reconnects_after_redis_froze_for_good` reproduces it.
struct Link {
    client: Client,
    config: ConnectionManagerConfig,
    /// The manager in use, and how many times it was replaced. Read by every command,
    /// written once per silent connection.
    current: RwLock<(u64, ConnectionManager)>,
}

impl Link {
    /// The manager in use, and its number.
    fn get(&self) -> (u64, ConnectionManager) {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Passes `result` on; a timeout on manager `number` replaces it by a new one (once:
    /// the commands that timed out on it together replace it once).
    fn checked<T>(&self, number: u64, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result
            && e.is_timeout()
        {
            let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.0 == number {
                match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
                    Ok(fresh) => {
                        *current = (number + 1, fresh);
                        tracing::warn!("Redis did not answer in time; the cache goes on with a new connection");
                    }
                    Err(e) => tracing::warn!(error.cause = %e, "cannot make a new Redis connection"),
                }
            }
        }
        result
    }
}

/// The invalidations this process owes Redis (shared by the clones of one cache).
#[derive(Default)]
struct Unsettled {
    users: Mutex<HashSet<Uuid>>,
    /// More users than [`Limits::unsettled_users`] failed: every user is owed one.
    everyone: AtomicBool,
    /// Any user is owed one: lets every read skip the lock while nothing is owed.
    any: AtomicBool,
    /// Times `everyone` was set, so a scan that started before the last one does not clear it.
    overflows: std::sync::atomic::AtomicU64,
    /// A task is retrying them.
    retrying: AtomicBool,
}

/// The generation a read found (empty: none yet), to fence the refill of a miss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation(String);

/// What a read found.
#[derive(Debug)]
pub enum Lookup {
    Hit(bytes::Bytes),
    Miss(Generation),
    /// This process owes the user an invalidation Redis has not taken: whatever the cache
    /// holds may predate a change. Read PostgreSQL, and store nothing.
    Unsettled,
}

/// What a fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    Stored,
    /// The user was invalidated since the read: the page may be stale.
    Raced,
    /// Stored, in place of another page of the user's: they had
    /// [`Limits::pages_per_user`] already.
    StoredEvicting,
    /// The page is larger than [`Limits::entry_bytes`].
    TooLarge,
}

// A page is stored as `<generation>|<body>` under a key without the generation, so a
// read is a plain MGET of the generation and the page — one round trip, no script —
// and a hit is a page whose prefix is the current generation.
//
// A user's generation starts from the server's clock, not 0 or 1: should the key ever
// be lost (evicted, flushed), no page stored under an old generation can match again.
//
// KEYS: generation, page, the user's page index. ARGV: the generation seen, the body,
// the TTL, the most pages a user may have. Returns 0 raced, 1 stored, 2 stored in place
// of a page evicted at random (which is as good as LRU against a client walking pages,
// and needs no bookkeeping per read).
const FILL: &str = r"
local generation = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
    if generation then
        return 0
    end
    local now = redis.call('TIME')
    generation = now[1] .. string.format('%06d', now[2])
    redis.call('SET', KEYS[1], generation)
elseif generation ~= ARGV[1] then
    return 0
end
local stored = 1
if redis.call('SISMEMBER', KEYS[3], KEYS[2]) == 0 then
    if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[4]) then
        for _, page in ipairs(redis.call('SMEMBERS', KEYS[3])) do
            if redis.call('EXISTS', page) == 0 then
                redis.call('SREM', KEYS[3], page)
            end
        end
        if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[4]) then
            redis.call('UNLINK', redis.call('SPOP', KEYS[3]))
            stored = 2
        end
    end
    redis.call('SADD', KEYS[3], KEYS[2])
end
redis.call('SET', KEYS[2], generation .. '|' .. ARGV[2], 'EX', ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return stored
";

// KEYS: generation, the user's page index; ARGV: the TTL. The pages go at once (their
// memory with them), the index with them, and the generation moves on for any page in
// flight.
//
// A generation lives as long as the user's last page could (each fill and invalidation
// renews its TTL), so a user nobody reads leaves no key behind; one that expired is
// started again from the clock, which no page left can match.
const INVALIDATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
    local now = redis.call('TIME')
    redis.call('SET', KEYS[1], now[1] .. string.format('%06d', now[2]))
end
local pages = redis.call('SMEMBERS', KEYS[2])
if #pages > 0 then
    redis.call('UNLINK', unpack(pages))
end
redis.call('DEL', KEYS[2])
local generation = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return generation
";

impl OrderCache {
    /// Connects lazily: the api starts, and answers from PostgreSQL, while Redis is down.
    pub fn new(redis_url: &str, prefix: &str, ttl: Duration) -> redis::RedisResult<Self> {
        Self::with_limits(redis_url, prefix, ttl, Limits::default())
    }

    pub fn with_limits(redis_url: &str, prefix: &str, ttl: Duration, limits: Limits) -> redis::RedisResult<Self> {
        let client = Client::open(redis_url)?;
        // Fail fast: a cache that answers late is worse than none.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(limits.timeout))
            .set_response_timeout(Some(limits.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let redis = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        let redis = Arc::new(Link { client, config, current: RwLock::new((0, redis)) });
        Ok(OrderCache { redis, prefix: prefix.to_owned(), ttl, limits, unsettled: Arc::default() })
    }

    fn user_key(&self, user_id: Uuid, what: &str) -> String {
        format!("{}:user:{user_id}:{what}", self.prefix)
    }

    fn page_key(&self, user_id: Uuid, page: &Page) -> String {
        let order = match page.order {
            SortOrder::Asc => "asc",
            SortOrder::Desc => "desc",
        };
        self.user_key(user_id, &format!("page:{}:{}:{order}", page.limit, page.offset))
    }

    #[tracing::instrument(level = "debug", name = "cache.read", skip_all, fields(
        otel.name = "MGET", otel.kind = "client", db.system.name = "redis", db.operation.name = "MGET",
    ))]
    pub async fn read(&self, user_id: Uuid, page: &Page) -> redis::RedisResult<Lookup> {
        if self.unsettled.owes(user_id) {
            return Ok(Lookup::Unsettled);
        }
        let (link, mut redis) = self.redis.get();
        let read = redis.mget(&[self.user_key(user_id, "gen"), self.page_key(user_id, page)]).await;
        let (generation, stored): (Option<String>, Option<Vec<u8>>) = self.redis.checked(link, read)?;
        if let (Some(generation), Some(stored)) = (&generation, stored) {
            let prefix = generation.len();
            if stored.len() > prefix && stored.starts_with(generation.as_bytes()) && stored[prefix] == b'|' {
                // A view past the tag, not a copy of the page.
                return Ok(Lookup::Hit(bytes::Bytes::from(stored).slice(prefix + 1..)));
            }
        }
        Ok(Lookup::Miss(Generation(generation.unwrap_or_default())))
    }

    /// Stores a page read after a miss, unless the user was invalidated since or the
    /// page is too large.
    #[tracing::instrument(level = "debug", name = "cache.fill", skip_all, fields(
        otel.name = "EVALSHA fill", otel.kind = "client", db.system.name = "redis", db.operation.name = "EVALSHA",
    ))]
    pub async fn fill(&self, user_id: Uuid, page: &Page, seen: &Generation, body: &[u8]) -> redis::RedisResult<Filled> {
        if body.len() > self.limits.entry_bytes {
            return Ok(Filled::TooLarge);
        }
        let (link, mut redis) = self.redis.get();
        let stored = Script::new(FILL)
            .key(self.user_key(user_id, "gen"))
            .key(self.page_key(user_id, page))
            .key(self.user_key(user_id, "pages"))
            .arg(&seen.0)
            .arg(body)
            .arg(self.ttl.as_secs().max(1))
            .arg(self.limits.pages_per_user)
            .invoke_async(&mut redis)
            .await;
        let stored: i32 = self.redis.checked(link, stored)?;
        Ok(match stored {
            1 => Filled::Stored,
            2 => Filled::StoredEvicting,
            _ => Filled::Raced,
        })
    }

    /// Makes every cached page of the user unreachable, and frees them.
    #[tracing::instrument(level = "debug", name = "cache.invalidate", skip_all, fields(
        otel.name = "EVALSHA invalidate", otel.kind = "client", db.system.name = "redis", db.operation.name = "EVALSHA",
    ))]
    pub async fn invalidate(&self, user_id: Uuid) -> redis::RedisResult<()> {
        let (link, mut redis) = self.redis.get();
        let done = Script::new(INVALIDATE)
            .key(self.user_key(user_id, "gen"))
            .key(self.user_key(user_id, "pages"))
            .arg(self.ttl.as_secs().max(1))
            .invoke_async::<i64>(&mut redis)
            .await;
        self.redis.checked(link, done).map(|_| ())
    }

    /// Invalidates after a commit, from the task that committed: at once, so the next
    /// read sees the change; and if Redis does not take it, the user is owed one,
    /// retried in the background until Redis does (see the module's doc). Counted
    /// either way.
    pub async fn invalidate_after_commit(&self, user_id: Uuid) {
        match self.invalidate(user_id).await {
            Ok(()) => {
                metrics::counter!(names::CACHE_INVALIDATIONS, "result" => "ok").increment(1);
                self.unsettled.settled(user_id);
            }
            Err(e) => {
                metrics::counter!(names::CACHE_INVALIDATIONS, "result" => "error").increment(1);
                tracing::warn!(user.id = %user_id, error.cause = %e, "cache invalidation failed; retrying until Redis takes it");
                self.unsettled.owe(user_id, self.limits.unsettled_users);
                if !self.unsettled.retrying.swap(true, Ordering::AcqRel) {
                    tokio::spawn(self.clone().settle());
                }
            }
        }
    }

    /// Retries what this process owes until nothing is left; one task at a time.
    async fn settle(self) {
        let mut backoff = Policy::INVALIDATE.backoff();
        loop {
            let done = match self.settle_once().await {
                Ok(done) => done,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(error.cause = %e, retry_in_ms = delay.as_millis() as u64, "cache still unreachable");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            if done {
                self.unsettled.retrying.store(false, Ordering::Release);
                // An invalidation that failed after the last look, but saw this task
                // still running, started none: take it.
                if self.unsettled.is_empty() || self.unsettled.retrying.swap(true, Ordering::AcqRel) {
                    tracing::info!("every failed cache invalidation is settled");
                    return;
                }
            }
            backoff.reset();
        }
    }

    /// One pass over what is owed; true if nothing is left.
    async fn settle_once(&self) -> redis::RedisResult<bool> {
        if self.unsettled.everyone.load(Ordering::Acquire) {
            // Which users were lost is unknown: every user this cache has a generation for.
            // Only what was owed before the scan is settled by it.
            let (before, overflows) = self.unsettled.before_scan();
            for user_id in self.users_with_pages().await? {
                self.invalidate(user_id).await?;
            }
            tracing::warn!(owed = before.len(), "every user's cached pages invalidated after too many failures");
            self.unsettled.scanned(&before, overflows);
        }
        for user_id in self.unsettled.snapshot() {
            self.invalidate(user_id).await?;
            metrics::counter!(names::CACHE_INVALIDATIONS, "result" => "ok").increment(1);
            self.unsettled.settled(user_id);
        }
        Ok(self.unsettled.is_empty())
    }

    async fn users_with_pages(&self) -> redis::RedisResult<Vec<Uuid>> {
        let pattern = format!("{}:user:*:gen", self.prefix);
        let (link, mut redis) = self.redis.get();
        let keys = redis.scan_match(&pattern).await;
        let mut keys: redis::AsyncIter<String> = self.redis.checked(link, keys)?;
        let mut users = Vec::new();
        while let Some(key) = keys.next_item().await {
            let key = self.redis.checked(link, key)?;
            let user = key.strip_prefix(&format!("{}:user:", self.prefix)).and_then(|rest| rest.strip_suffix(":gen"));
            if let Some(user) = user.and_then(|id| Uuid::parse_str(id).ok()) {
                users.push(user);
            }
        }
        Ok(users)
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let (link, mut redis) = self.redis.get();
        let pong = redis::cmd("PING").query_async::<String>(&mut redis).await;
        self.redis.checked(link, pong).map(|_| ())
    }
}

impl Filled {
    /// The label of `cache_fills_total`.
    pub fn label(self) -> &'static str {
        match self {
            Filled::Stored => "stored",
            Filled::Raced => "raced",
            Filled::StoredEvicting => "stored_evicting",
            Filled::TooLarge => "too_large",
        }
    }
}

impl Unsettled {
    fn owes(&self, user_id: Uuid) -> bool {
        self.any.load(Ordering::Acquire)
            && (self.everyone.load(Ordering::Acquire) || self.users.lock().expect("never poisoned").contains(&user_id))
    }

    fn owe(&self, user_id: Uuid, limit: usize) {
        let mut users = self.users.lock().expect("never poisoned");
        if users.len() < limit {
            users.insert(user_id);
        } else if !users.contains(&user_id) {
            // Under the lock, so that a scan that began before cannot clear it.
            self.everyone.store(true, Ordering::Release);
            self.overflows.fetch_add(1, Ordering::AcqRel);
        }
        self.any.store(true, Ordering::Release);
    }

    /// What is owed as a scan of every user starts, and how many overflows so far.
    fn before_scan(&self) -> (Vec<Uuid>, u64) {
        let users = self.users.lock().expect("never poisoned");
        (users.iter().copied().collect(), self.overflows.load(Ordering::Acquire))
    }

    /// A scan of every user succeeded: what was owed before it is settled, and so is
    /// "everyone", unless another overflow came meanwhile.
    fn scanned(&self, before: &[Uuid], overflows: u64) {
        let mut users = self.users.lock().expect("never poisoned");
        for user_id in before {
            users.remove(user_id);
        }
        if self.overflows.load(Ordering::Acquire) == overflows {
            self.everyone.store(false, Ordering::Release);
        }
        if users.is_empty() && !self.everyone.load(Ordering::Acquire) {
            self.any.store(false, Ordering::Release);
        }
    }

    fn settled(&self, user_id: Uuid) {
        let mut users = self.users.lock().expect("never poisoned");
        users.remove(&user_id);
        if users.is_empty() && !self.everyone.load(Ordering::Acquire) {
            self.any.store(false, Ordering::Release);
        }
    }

    fn snapshot(&self) -> Vec<Uuid> {
        self.users.lock().expect("never poisoned").iter().copied().collect()
    }

    fn is_empty(&self) -> bool {
        !self.everyone.load(Ordering::Acquire) && self.users.lock().expect("never poisoned").is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflow_during_a_scan_outlives_the_scan() {
        let owed = Unsettled::default();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(!owed.owes(a));
        owed.owe(a, 1);
        assert!(owed.owes(a) && !owed.owes(b));
        // Past the limit: every user is owed an invalidation.
        owed.owe(b, 1);
        assert!(owed.owes(b) && owed.owes(c));
        let (before, overflows) = owed.before_scan();
        assert_eq!(before, [a]);
        // Another user is lost while the scan runs: the scan does not settle it.
        owed.owe(c, 1);
        owed.scanned(&before, overflows);
        assert!(owed.owes(c) && !owed.is_empty());
        let (before, overflows) = owed.before_scan();
        owed.scanned(&before, overflows);
        assert!(owed.is_empty() && !owed.owes(a) && !owed.owes(c));
    }

    #[test]
    fn settling_the_last_user_lets_reads_skip_the_lock_again() {
        let owed = Unsettled::default();
        let a = Uuid::new_v4();
        owed.owe(a, 10);
        assert!(owed.any.load(Ordering::Acquire));
        owed.settled(a);
        assert!(!owed.any.load(Ordering::Acquire) && owed.is_empty());
    }
}
