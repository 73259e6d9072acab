//! The Redis read side (CQRS): pages of a user's orders, cache-aside.
//!
//! A page is stored under the user's current *generation*. Invalidating a user bumps the
//! generation (`INCR`), so every page stored before becomes unreachable at once — no
//! `KEYS`, no scan — and expires by its TTL. A refill is fenced: a reader remembers the
//! generation it missed under, and the script that stores the page refuses if the
//! generation moved meanwhile. So a reader that queried PostgreSQL before a saga
//! transition committed, and tries to store its (now stale) page after the worker
//! invalidated, stores nothing.

use std::time::Duration;

use redis::{AsyncCommands, Client, Script, aio::ConnectionManager, aio::ConnectionManagerConfig};
use uuid::Uuid;

use crate::http::pagination::{Page, SortOrder};

#[derive(Clone)]
pub struct OrderCache {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

/// The generation a read found, to fence the refill of a miss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation(String);

/// What a read found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Vec<u8>),
    Miss(Generation),
}

// One round trip each. KEYS[1] is the user's key base; pages live under
// `<base>:page:<generation>:<limit>:<offset>:<order>`.
const READ: &str = r"
local generation = redis.call('GET', KEYS[1] .. ':gen') or '0'
return {generation, redis.call('GET', KEYS[1] .. ':page:' .. generation .. ':' .. ARGV[1])}
";

const FILL: &str = r"
local generation = redis.call('GET', KEYS[1] .. ':gen') or '0'
if generation ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[1] .. ':page:' .. generation .. ':' .. ARGV[2], ARGV[3], 'EX', ARGV[4])
return 1
";

impl OrderCache {
    /// Connects lazily: the api starts, and answers from PostgreSQL, while Redis is down.
    pub fn new(redis_url: &str, prefix: &str, ttl: Duration) -> redis::RedisResult<Self> {
        let client = Client::open(redis_url)?;
        // Fail fast: a cache that answers late is worse than none.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(OrderCache { redis, prefix: prefix.to_owned(), ttl })
    }

    fn user_key(&self, user_id: Uuid) -> String {
        format!("{}:user:{user_id}", self.prefix)
    }

    fn page_key(page: &Page) -> String {
        let order = match page.order {
            SortOrder::Asc => "asc",
            SortOrder::Desc => "desc",
        };
        format!("{}:{}:{order}", page.limit, page.offset)
    }

    pub async fn read(&self, user_id: Uuid, page: &Page) -> redis::RedisResult<Lookup> {
        let (generation, body): (String, Option<Vec<u8>>) = Script::new(READ)
            .key(self.user_key(user_id))
            .arg(Self::page_key(page))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match body {
            Some(body) => Lookup::Hit(body),
            None => Lookup::Miss(Generation(generation)),
        })
    }

    /// Stores a page read after a miss, unless the user was invalidated since.
    /// Returns whether it was stored.
    pub async fn fill(&self, user_id: Uuid, page: &Page, seen: &Generation, body: &[u8]) -> redis::RedisResult<bool> {
        let stored: i32 = Script::new(FILL)
            .key(self.user_key(user_id))
            .arg(&seen.0)
            .arg(Self::page_key(page))
            .arg(body)
            .arg(self.ttl.as_secs().max(1))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(stored == 1)
    }

    /// Makes every cached page of the user unreachable.
    pub async fn invalidate(&self, user_id: Uuid) -> redis::RedisResult<()> {
        let _: i64 = self.redis.clone().incr(format!("{}:gen", self.user_key(user_id)), 1).await?;
        Ok(())
    }

    /// Invalidates after a commit: at once, so the next read sees the change, and if
    /// Redis does not answer, again in the background a few times — a committed change
    /// must not leave a stale page behind because Redis blinked. Counted either way.
    pub async fn invalidate_after_commit(&self, user_id: Uuid) {
        if self.invalidate(user_id).await.is_ok() {
            metrics::counter!("cache_invalidations_total", "result" => "ok").increment(1);
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            for attempt in 2..=6 {
                tokio::time::sleep(delay).await;
                delay *= 2;
                match cache.invalidate(user_id).await {
                    Ok(()) => {
                        metrics::counter!("cache_invalidations_total", "result" => "ok").increment(1);
                        return;
                    }
                    Err(e) if attempt < 6 => {
                        tracing::debug!(user.id = %user_id, error.cause = %e, attempt, "cache invalidation failed, retrying");
                    }
                    Err(e) => {
                        metrics::counter!("cache_invalidations_total", "result" => "error").increment(1);
                        tracing::warn!(user.id = %user_id, error.cause = %e, "cache invalidation failed; pages expire by their TTL");
                    }
                }
            }
        });
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING").query_async::<String>(&mut self.redis.clone()).await.map(|_| ())
    }
}
