//! A shared credentials cache in front of any provider.
//!
//! Invariants:
//! - Credentials are served from the cache until their refresh point: `refresh_before` ahead of
//!   expiry, or half their lifetime ahead of expiry when they were issued for less than twice
//!   `refresh_before` (so short-lived credentials do not trigger a fetch on every call).
//! - At most one fetch runs at a time; callers that arrive during it wait and share its result.
//! - When a refresh fails but the cached credentials have not yet expired, they are served and
//!   the failure is logged; after [`CredentialsCache::invalidate`] (a 401/403) they are not.
//! - The clock is injectable ([`CredentialsCache::with_clock`]), typically the skew-corrected
//!   clock, since expiry times come from AWS's clock.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::clock::format_rfc3339;
use super::credentials::{Credentials, CredentialsError, ProvideCredentials};

/// The default margin before expiry at which credentials are refreshed.
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A cheap-to-clone cache of credentials from one provider.
#[derive(Clone)]
pub struct CredentialsCache {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<dyn ProvideCredentials>,
    refresh_before: Duration,
    clock: Clock,
    cached: Mutex<Option<Cached>>,
    fetch_lock: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Cached {
    credentials: Credentials,
    /// `None`: never refresh (long-term keys).
    refresh_at: Option<SystemTime>,
}

impl CredentialsCache {
    /// A cache over `provider` that refreshes `refresh_before` ahead of expiry
    /// ([`DEFAULT_REFRESH_BEFORE`] is the usual choice), using the system clock.
    pub fn new(provider: Arc<dyn ProvideCredentials>, refresh_before: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                provider,
                refresh_before,
                clock: Arc::new(SystemTime::now),
                cached: Mutex::new(None),
                fetch_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The same cache reading time from `clock` (e.g. `move || skew.now()`, or a test clock).
    /// A builder step: clones taken before this call keep the old clock and cache.
    pub fn with_clock(self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        let inner = Inner {
            provider: Arc::clone(&self.inner.provider),
            refresh_before: self.inner.refresh_before,
            clock: Arc::new(clock),
            cached: Mutex::new(self.lock_cached().clone()),
            fetch_lock: tokio::sync::Mutex::new(()),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Valid credentials: cached ones, or freshly fetched when the cache is empty or due.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        if let Some(fresh) = self.fresh((self.inner.clock)()) {
            return Ok(fresh);
        }
        let _fetching = self.inner.fetch_lock.lock().await;
        // Another caller may have refreshed while this one waited.
        let now = (self.inner.clock)();
        if let Some(fresh) = self.fresh(now) {
            return Ok(fresh);
        }
        match self.inner.provider.provide().await {
            Ok(credentials) => {
                if let Some(expires_at) = credentials.expires_at
                    && expires_at <= now
                {
                    return Err(CredentialsError::Expired {
                        provider: self.inner.provider.name(),
                        expired_at: format_rfc3339(expires_at),
                    });
                }
                let refresh_at = credentials
                    .expires_at
                    .map(|expires_at| self.refresh_point(now, expires_at));
                *self.lock_cached() = Some(Cached {
                    credentials: credentials.clone(),
                    refresh_at,
                });
                Ok(credentials)
            }
            Err(error) => {
                let still_valid = self
                    .lock_cached()
                    .as_ref()
                    .filter(|c| !c.credentials.is_expired_at(now))
                    .map(|c| c.credentials.clone());
                match still_valid {
                    Some(credentials) => {
                        tracing::warn!(
                            provider = self.inner.provider.name(),
                            %error,
                            "credential refresh failed; using cached credentials until they expire"
                        );
                        Ok(credentials)
                    }
                    None => Err(error),
                }
            }
        }
    }

    /// Drops the cached credentials so the next [`get`](Self::get) fetches (after a 401/403).
    pub fn invalidate(&self) {
        *self.lock_cached() = None;
    }

    /// Expiry of the cached credentials (`None` when nothing is cached or they never expire).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.lock_cached()
            .as_ref()
            .and_then(|c| c.credentials.expires_at)
    }

    /// The name of the provider behind the cache.
    pub fn provider_name(&self) -> &'static str {
        self.inner.provider.name()
    }

    fn fresh(&self, now: SystemTime) -> Option<Credentials> {
        self.lock_cached()
            .as_ref()
            .filter(|c| c.refresh_at.is_none_or(|at| now < at))
            .map(|c| c.credentials.clone())
    }

    fn refresh_point(&self, now: SystemTime, expires_at: SystemTime) -> SystemTime {
        let lifetime = expires_at.duration_since(now).unwrap_or_default();
        let margin = self.inner.refresh_before.min(lifetime / 2);
        expires_at.checked_sub(margin).unwrap_or(now)
    }

    fn lock_cached(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        // The guarded value is a plain Option that is always consistent, so a panic elsewhere
        // while holding the lock leaves nothing to repair.
        self.inner
            .cached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for CredentialsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsCache")
            .field("provider", &self.inner.provider.name())
            .field("refresh_before", &self.inner.refresh_before)
            .field("expires_at", &self.expires_at().map(format_rfc3339))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::credentials::{ProvideFuture, Secret};
    use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
    use std::time::UNIX_EPOCH;

    /// Hands out `AKID<n>` expiring `lifetime` after the test clock's now; counts calls;
    /// fails while `failing` is set.
    struct CountingProvider {
        calls: AtomicU32,
        lifetime: Option<Duration>,
        clock: Arc<AtomicI64>,
        failing: std::sync::atomic::AtomicBool,
        delay: Duration,
    }

    impl ProvideCredentials for CountingProvider {
        fn provide(&self) -> ProvideFuture<'_> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if self.failing.load(Ordering::SeqCst) {
                    return Err(CredentialsError::IotRequest {
                        url: "https://iot.test/".into(),
                        reason: "connection refused".into(),
                    });
                }
                let now = test_now(&self.clock);
                Ok(Credentials::new(
                    format!("AKID{n}"),
                    Secret::new("secret"),
                    None,
                    self.lifetime.map(|l| now + l),
                ))
            })
        }

        fn name(&self) -> &'static str {
            "counting"
        }
    }

    fn test_now(clock: &AtomicI64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::SeqCst).unsigned_abs())
    }

    fn setup(
        lifetime: Option<Duration>,
    ) -> (Arc<CountingProvider>, Arc<AtomicI64>, CredentialsCache) {
        let clock = Arc::new(AtomicI64::new(1_000_000));
        let provider = Arc::new(CountingProvider {
            calls: AtomicU32::new(0),
            lifetime,
            clock: Arc::clone(&clock),
            failing: false.into(),
            delay: Duration::ZERO,
        });
        let test_clock = Arc::clone(&clock);
        let cache = CredentialsCache::new(provider.clone(), DEFAULT_REFRESH_BEFORE)
            .with_clock(move || test_now(&test_clock));
        (provider, clock, cache)
    }

    #[tokio::test]
    async fn refreshes_before_expiry_not_earlier() {
        let (provider, clock, cache) = setup(Some(Duration::from_secs(3600)));
        assert_eq!(cache.get().await.unwrap().access_key_id, "AKID1");
        assert_eq!(
            cache.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1_000_000 + 3600))
        );
        // 54 minutes later: still more than 5 minutes left → cached.
        clock.fetch_add(54 * 60, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().access_key_id, "AKID1");
        // 55 minutes: inside the refresh margin → fetched again.
        clock.fetch_add(60, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().access_key_id, "AKID2");
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn long_term_keys_are_fetched_once() {
        let (provider, clock, cache) = setup(None);
        cache.get().await.unwrap();
        clock.fetch_add(365 * 24 * 3600, Ordering::SeqCst);
        cache.get().await.unwrap();
        assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.expires_at(), None);
    }

    #[tokio::test]
    async fn short_lived_credentials_refresh_at_half_life() {
        let (provider, clock, cache) = setup(Some(Duration::from_secs(120)));
        cache.get().await.unwrap();
        clock.fetch_add(59, Ordering::SeqCst);
        cache.get().await.unwrap();
        assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
        clock.fetch_add(1, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().access_key_id, "AKID2");
    }

    #[tokio::test]
    async fn invalidate_forces_a_fetch() {
        let (provider, _clock, cache) = setup(Some(Duration::from_secs(3600)));
        cache.get().await.unwrap();
        cache.invalidate();
        assert_eq!(cache.expires_at(), None);
        assert_eq!(cache.get().await.unwrap().access_key_id, "AKID2");
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failed_refresh_serves_unexpired_credentials_only() {
        let (provider, clock, cache) = setup(Some(Duration::from_secs(3600)));
        cache.get().await.unwrap();
        provider.failing.store(true, Ordering::SeqCst);
        clock.fetch_add(58 * 60, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().access_key_id, "AKID1");
        clock.fetch_add(2 * 60, Ordering::SeqCst);
        let err = cache.get().await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        cache.invalidate();
        provider.failing.store(false, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().access_key_id, "AKID4");
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let clock = Arc::new(AtomicI64::new(1_000_000));
        let provider = Arc::new(CountingProvider {
            calls: AtomicU32::new(0),
            lifetime: Some(Duration::from_secs(3600)),
            clock: Arc::clone(&clock),
            failing: false.into(),
            delay: Duration::from_millis(50),
        });
        let test_clock = Arc::clone(&clock);
        let cache = CredentialsCache::new(provider.clone(), DEFAULT_REFRESH_BEFORE)
            .with_clock(move || test_now(&test_clock));
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get().await.map(|c| c.access_key_id) })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap(), "AKID1");
        }
        assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn already_expired_credentials_are_an_error() {
        let (_provider, _clock, cache) = setup(Some(Duration::ZERO));
        let err = cache.get().await.unwrap_err();
        assert!(
            matches!(
                err,
                CredentialsError::Expired {
                    provider: "counting",
                    ..
                }
            ),
            "{err}"
        );
    }
}
