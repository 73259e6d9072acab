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
//! than a committed change is gone within [`staleness_bound`] of the users owed; only if
//! the process that committed dies during the outage does such a page live on, until its
//! TTL.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{AsyncCommands, Client, Script, aio::ConnectionManager, aio::ConnectionManagerConfig};
use uuid::Uuid;

use crate::telemetry::names;
use crate::{
    pagination::{Page, SortOrder},
    retry::Policy,
};

/// How long after Redis answers again a page older than a committed change can still be
/// served by another process: the longest retry delay of [`Policy::INVALIDATE`] (1 s,
/// up to 2 s with its jitter), one 500 ms timeout, and a reconnect. The README states
/// it; `cache::a_redis_outage_longer_than_the_retry_window_leaves_no_stale_page` checks it.
pub const STALENESS_BOUND: Duration = Duration::from_secs(5);

/// Invalidations a process settles per second once Redis answers again, at the least
/// (measured on this 2-core machine: 50,000 owed users settled 1.4 s after Redis
/// answered, retry delay included; one round trip each, as before, 37,544 in 21 s).
const SETTLE_RATE: u32 = 25_000;

/// How long after Redis answers again a page older than a committed change can still be
/// served by another process, when this process owes `owed` users an invalidation (or,
/// past [`Limits::unsettled_users`], when `owed` users have pages in Redis): the
/// [`STALENESS_BOUND`] plus the time to send them, [`SETTLE_BATCH`] a round trip. The
/// README states it; `cache::fifty_thousand_owed_invalidations_land_within_the_stated_bound`
/// checks it.
pub fn staleness_bound(owed: usize) -> Duration {
    STALENESS_BOUND + Duration::from_secs_f64(owed as f64 / f64::from(SETTLE_RATE))
}

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
    owed: Mutex<Owed>,
    /// More users than [`Limits::unsettled_users`] failed: every user is owed one.
    everyone: AtomicBool,
    /// Any user is owed one: lets every read skip the lock while nothing is owed.
    any: AtomicBool,
    /// Times `everyone` was set, so a scan that started before the last one does not clear it.
    overflows: std::sync::atomic::AtomicU64,
    /// A task is retrying them.
    retrying: AtomicBool,
}

/// Each user owed, with the epoch of its latest failure: an invalidation (or a scan) that
/// began at epoch `e` settles only failures of epoch `e` or before. Without it, a user
/// whose second invalidation failed while a scan that had already passed it ran was
/// settled by that scan, and forgotten (`a_failure_during_a_scan_that_passed_its_user_is_not_forgotten`).
#[derive(Default)]
struct Owed {
    users: HashMap<Uuid, u64>,
    epoch: u64,
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
const FILL_SCRIPT: &str = r"
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
const INVALIDATE_SCRIPT: &str = r"
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

/// Users invalidated per round trip when settling what is owed, and keys asked per
/// `SCAN` step. One at a time, 100,000 owed users took tens of seconds.
const SETTLE_BATCH: usize = 500;

/// A scan of every user in progress: where it is, and what it settles once done.
struct Scan {
    cursor: u64,
    began: (u64, u64),
}

static INVALIDATE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(INVALIDATE_SCRIPT));
static FILL: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(FILL_SCRIPT));

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
        let stored = FILL
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
        let done = self.invalidation(user_id).invoke_async::<i64>(&mut redis).await;
        self.redis.checked(link, done).map(|_| ())
    }

    fn invalidation(&self, user_id: Uuid) -> redis::ScriptInvocation<'static> {
        let mut invocation = INVALIDATE.key(self.user_key(user_id, "gen"));
        invocation.key(self.user_key(user_id, "pages")).arg(self.ttl.as_secs().max(1));
        invocation
    }

    /// Invalidates `users` in one round trip (a pipeline of the script).
    async fn invalidate_all(&self, users: &[Uuid]) -> redis::RedisResult<()> {
        if users.is_empty() {
            return Ok(());
        }
        let invocations: Vec<_> = users.iter().map(|user_id| self.invalidation(*user_id)).collect();
        let mut pipe = redis::pipe();
        pipe.load_script(&INVALIDATE).ignore();
        for invocation in &invocations {
            pipe.invoke_script(invocation).ignore();
        }
        let (link, mut redis) = self.redis.get();
        let done = pipe.query_async::<()>(&mut redis).await;
        self.redis.checked(link, done)
    }

    /// Invalidates after a commit, from the task that committed: at once, so the next
    /// read sees the change; and if Redis does not take it, the user is owed one,
    /// retried in the background until Redis does (see the module's doc). Counted
    /// either way.
    pub async fn invalidate_after_commit(&self, user_id: Uuid) {
        let mark = self.unsettled.mark();
        match self.invalidate(user_id).await {
            Ok(()) => {
                metrics::counter!(names::CACHE_INVALIDATIONS, "result" => "ok").increment(1);
                self.unsettled.settled(&[user_id], mark);
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

    /// Users this process owes an invalidation (0 once Redis took them all); with
    /// `everyone` owed, the users remembered besides.
    pub fn owed(&self) -> (usize, bool) {
        (self.unsettled.len(), self.unsettled.everyone.load(Ordering::Acquire))
    }

    /// Retries what this process owes until nothing is left; one task at a time. A scan
    /// of every user interrupted by an error starts over (keeping what it settles): its
    /// cursor means nothing to the server a failover leads to, and a resumed scan could
    /// skip users for good.
    async fn settle(self) {
        let mut backoff = Policy::INVALIDATE.backoff();
        let mut scan = None;
        loop {
            let done = match self.settle_once(&mut scan).await {
                Ok(done) => done,
                Err(e) => {
                    if let Some(scan) = scan.as_mut() {
                        scan.cursor = 0;
                    }
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

    /// One pass over what is owed, [`SETTLE_BATCH`] users a round trip; true if nothing
    /// is left.
    async fn settle_once(&self, scan: &mut Option<Scan>) -> redis::RedisResult<bool> {
        if self.unsettled.everyone.load(Ordering::Acquire) {
            // Which users were lost is unknown: every user this cache has a generation for.
            // Only what was owed before the scan began is settled by it.
            let state = scan.get_or_insert_with(|| Scan { cursor: 0, began: self.unsettled.before_scan() });
            loop {
                let (next, users) = self.users_with_pages(state.cursor).await?;
                self.invalidate_all(&users).await?;
                state.cursor = next;
                if next == 0 {
                    break;
                }
            }
            let began = state.began;
            *scan = None;
            tracing::warn!("every user's cached pages invalidated after too many failures");
            self.unsettled.scanned(began);
        }
        let mark = self.unsettled.mark();
        for users in self.unsettled.snapshot().chunks(SETTLE_BATCH) {
            self.invalidate_all(users).await?;
            metrics::counter!(names::CACHE_INVALIDATIONS, "result" => "ok").increment(users.len() as u64);
            self.unsettled.settled(users, mark);
        }
        Ok(self.unsettled.is_empty())
    }

    /// One step of a `SCAN` over the users' generations: the next cursor (0: done) and
    /// the users found.
    async fn users_with_pages(&self, cursor: u64) -> redis::RedisResult<(u64, Vec<Uuid>)> {
        let prefix = format!("{}:user:", self.prefix);
        let (link, mut redis) = self.redis.get();
        let step = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*:gen"))
            .arg("COUNT")
            .arg(SETTLE_BATCH)
            .query_async::<(u64, Vec<String>)>(&mut redis)
            .await;
        let (next, keys) = self.redis.checked(link, step)?;
        let users = keys
            .iter()
            .filter_map(|key| key.strip_prefix(&prefix)?.strip_suffix(":gen"))
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        Ok((next, users))
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
            && (self.everyone.load(Ordering::Acquire) || self.lock().users.contains_key(&user_id))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Owed> {
        self.owed.lock().expect("never poisoned")
    }

    fn owe(&self, user_id: Uuid, limit: usize) {
        let mut owed = self.lock();
        owed.epoch += 1;
        let epoch = owed.epoch;
        if owed.users.len() < limit || owed.users.contains_key(&user_id) {
            owed.users.insert(user_id, epoch);
        } else {
            // Under the lock, so that a scan that began before cannot clear it.
            self.everyone.store(true, Ordering::Release);
            self.overflows.fetch_add(1, Ordering::AcqRel);
        }
        self.any.store(true, Ordering::Release);
    }

    /// The epoch now: take it before sending an invalidation, settle with it after.
    fn mark(&self) -> u64 {
        self.lock().epoch
    }

    /// Where a scan of every user starts: the epoch, and how many overflows so far.
    fn before_scan(&self) -> (u64, u64) {
        let owed = self.lock();
        (owed.epoch, self.overflows.load(Ordering::Acquire))
    }

    /// A scan of every user that began at `before_scan` succeeded: what failed before
    /// it began is settled, and so is "everyone", unless another overflow came meanwhile.
    fn scanned(&self, (epoch, overflows): (u64, u64)) {
        let mut owed = self.lock();
        owed.users.retain(|_, failed| *failed > epoch);
        if self.overflows.load(Ordering::Acquire) == overflows {
            self.everyone.store(false, Ordering::Release);
        }
        self.clear_any_if_done(&owed);
    }

    /// Invalidations of `users` sent after `mark` succeeded.
    fn settled(&self, users: &[Uuid], mark: u64) {
        let mut owed = self.lock();
        for user_id in users {
            if owed.users.get(user_id).is_some_and(|failed| *failed <= mark) {
                owed.users.remove(user_id);
            }
        }
        self.clear_any_if_done(&owed);
    }

    fn clear_any_if_done(&self, owed: &Owed) {
        if owed.users.is_empty() && !self.everyone.load(Ordering::Acquire) {
            self.any.store(false, Ordering::Release);
        }
    }

    fn snapshot(&self) -> Vec<Uuid> {
        self.lock().users.keys().copied().collect()
    }

    fn is_empty(&self) -> bool {
        !self.everyone.load(Ordering::Acquire) && self.lock().users.is_empty()
    }

    fn len(&self) -> usize {
        self.lock().users.len()
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
        let scan = owed.before_scan();
        // Another user is lost while the scan runs: the scan does not settle it.
        owed.owe(c, 1);
        owed.scanned(scan);
        assert!(owed.owes(c) && !owed.is_empty());
        let scan = owed.before_scan();
        owed.scanned(scan);
        assert!(owed.is_empty() && !owed.owes(a) && !owed.owes(c));
    }

    #[test]
    fn a_failure_during_a_scan_that_passed_its_user_is_not_forgotten() {
        let owed = Unsettled::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        owed.owe(a, 1);
        owed.owe(b, 1);
        let scan = owed.before_scan();
        // The scan invalidated `a`; then a's next change fails to invalidate.
        owed.owe(a, 1);
        owed.scanned(scan);
        assert!(owed.owes(a), "a's second failure was settled by a scan that began before it");
        assert!(!owed.is_empty());
    }

    #[test]
    fn an_invalidation_settles_only_the_failures_before_it_was_sent() {
        let owed = Unsettled::default();
        let a = Uuid::new_v4();
        owed.owe(a, 10);
        let mark = owed.mark();
        // While the retry of `a` is in flight, another change of a's fails to invalidate.
        owed.owe(a, 10);
        owed.settled(&[a], mark);
        assert!(owed.owes(a));
        let mark = owed.mark();
        owed.settled(&[a], mark);
        assert!(!owed.owes(a));
    }

    #[test]
    fn settling_the_last_user_lets_reads_skip_the_lock_again() {
        let owed = Unsettled::default();
        let a = Uuid::new_v4();
        owed.owe(a, 10);
        assert!(owed.any.load(Ordering::Acquire));
        owed.settled(&[a], owed.mark());
        assert!(!owed.any.load(Ordering::Acquire) && owed.is_empty());
    }
}
