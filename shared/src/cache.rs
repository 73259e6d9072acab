//! The Redis read side (CQRS): pages of a user's orders, cache-aside.
//!
//! A page is stored tagged with the user's current *generation*. Invalidating a user
//! bumps the generation (`INCR`), so every page stored before stops matching at once —
//! no `KEYS`, no scan — and expires by its TTL. A refill is fenced: a reader remembers
//! the generation it missed under, and the script that stores the page refuses if the
//! generation moved meanwhile. So a reader that queried PostgreSQL before a saga
//! transition committed, and tries to store its (now stale) page after the worker
//! invalidated, stores nothing.

use std::time::Duration;

use redis::{AsyncCommands, Client, Script, aio::ConnectionManager, aio::ConnectionManagerConfig};
use uuid::Uuid;

use crate::{
    http::pagination::{Page, SortOrder},
    retry::Policy,
};

#[derive(Clone)]
pub struct OrderCache {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

/// The generation a read found (empty: none yet), to fence the refill of a miss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation(String);

/// What a read found.
#[derive(Debug)]
pub enum Lookup {
    Hit(bytes::Bytes),
    Miss(Generation),
}

// A page is stored as `<generation>|<body>` under a key without the generation, so a
// read is a plain MGET of the generation and the page — one round trip, no script —
// and a hit is a page whose prefix is the current generation.
//
// A user's generation starts from the server's clock, not 0 or 1: should the key ever
// be lost (evicted, flushed), no page stored under an old generation can match again.
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
redis.call('SET', KEYS[2], generation .. '|' .. ARGV[2], 'EX', ARGV[3])
return 1
";

const INVALIDATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
    local now = redis.call('TIME')
    redis.call('SET', KEYS[1], now[1] .. string.format('%06d', now[2]))
end
return redis.call('INCR', KEYS[1])
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

    fn generation_key(&self, user_id: Uuid) -> String {
        format!("{}:user:{user_id}:gen", self.prefix)
    }

    fn page_key(&self, user_id: Uuid, page: &Page) -> String {
        let order = match page.order {
            SortOrder::Asc => "asc",
            SortOrder::Desc => "desc",
        };
        format!("{}:user:{user_id}:page:{}:{}:{order}", self.prefix, page.limit, page.offset)
    }

    pub async fn read(&self, user_id: Uuid, page: &Page) -> redis::RedisResult<Lookup> {
        let (generation, stored): (Option<String>, Option<Vec<u8>>) =
            self.redis.clone().mget(&[self.generation_key(user_id), self.page_key(user_id, page)]).await?;
        if let (Some(generation), Some(stored)) = (&generation, stored) {
            let prefix = generation.len();
            if stored.len() > prefix && stored.starts_with(generation.as_bytes()) && stored[prefix] == b'|' {
                // A view past the tag, not a copy of the page.
                return Ok(Lookup::Hit(bytes::Bytes::from(stored).slice(prefix + 1..)));
            }
        }
        Ok(Lookup::Miss(Generation(generation.unwrap_or_default())))
    }

    /// Stores a page read after a miss, unless the user was invalidated since.
    /// Returns whether it was stored.
    pub async fn fill(&self, user_id: Uuid, page: &Page, seen: &Generation, body: &[u8]) -> redis::RedisResult<bool> {
        let stored: i32 = Script::new(FILL)
            .key(self.generation_key(user_id))
            .key(self.page_key(user_id, page))
            .arg(&seen.0)
            .arg(body)
            .arg(self.ttl.as_secs().max(1))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(stored == 1)
    }

    /// Makes every cached page of the user unreachable.
    pub async fn invalidate(&self, user_id: Uuid) -> redis::RedisResult<()> {
        let _: i64 =
            Script::new(INVALIDATE).key(self.generation_key(user_id)).invoke_async(&mut self.redis.clone()).await?;
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
            let mut backoff = Policy::INVALIDATE.backoff();
            for attempt in 2..=6 {
                tokio::time::sleep(backoff.next_delay()).await;
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
