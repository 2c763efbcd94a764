//! SQLite's own page cache, with one cost taken out of every commit.
//!
//! When SQLite rebalances a B-tree it swaps page numbers through a temporary one, the
//! page that holds the 1 GiB lock byte (`balance_nonroot`: 262,145 with 4 KiB pages).
//! The page cache then remembers that number as the largest it has seen, and the commit
//! that follows asks it to drop every page past the end of the database: from that
//! largest number, a walk of its whole hash table. With a 64 MiB cache that walk was the
//! store thread's largest cost at 10,000 tasks a second (6.5% of the master's core).
//!
//! This wrapper keeps SQLite's cache (`pcache1`) and passes every call through, but tracks
//! the largest page number actually cached, the temporary one aside, and skips a
//! truncation that can drop nothing. [`install`] must run before any connection is
//! opened; if it cannot, SQLite's cache is used as it is.

use std::ffi::{c_int, c_uint};
use std::sync::OnceLock;

use rusqlite::ffi;

/// What a truncation needs to know of one cache: which page numbers it may hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keys {
    /// The largest page number cached since the last truncation, the temporary one aside.
    max: c_uint,
    /// The lock-byte page's number, which holds no data and is only ever a page's number
    /// for the moment of a swap.
    temp: c_uint,
    /// Whether a page may be cached under `temp` (it was fetched or renumbered to it and
    /// not renumbered away or truncated since).
    temp_cached: bool,
}

/// SQLite's lock byte (`PENDING_BYTE`, not changed in this build).
const PENDING_BYTE: u64 = 0x4000_0000;

impl Keys {
    pub fn new(page_size: u32) -> Keys {
        Keys {
            max: 0,
            temp: (PENDING_BYTE / u64::from(page_size.max(512))) as c_uint + 1,
            temp_cached: false,
        }
    }

    /// A page is cached under `key`.
    pub fn cached(&mut self, key: c_uint) {
        if key == self.temp {
            self.temp_cached = true;
        } else {
            self.max = self.max.max(key);
        }
    }

    /// A page was renumbered from `old` to `new`.
    pub fn renumbered(&mut self, old: c_uint, new: c_uint) {
        if old == self.temp {
            self.temp_cached = false;
        }
        self.cached(new);
    }

    /// Whether dropping every page numbered `limit` or more can drop anything; if so the
    /// truncation happens and the cache holds nothing from `limit` on.
    pub fn truncate(&mut self, limit: c_uint) -> bool {
        let temp_dropped = self.temp >= limit;
        if limit > self.max && !(self.temp_cached && temp_dropped) {
            return false;
        }
        self.max = self.max.min(limit.saturating_sub(1));
        self.temp_cached &= !temp_dropped;
        true
    }
}

/// SQLite's cache methods, called through.
struct Inner {
    create: unsafe extern "C" fn(c_int, c_int, c_int) -> *mut ffi::sqlite3_pcache,
    cachesize: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_int),
    pagecount: unsafe extern "C" fn(*mut ffi::sqlite3_pcache) -> c_int,
    fetch: unsafe extern "C" fn(
        *mut ffi::sqlite3_pcache,
        c_uint,
        c_int,
    ) -> *mut ffi::sqlite3_pcache_page,
    unpin: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, *mut ffi::sqlite3_pcache_page, c_int),
    rekey: unsafe extern "C" fn(
        *mut ffi::sqlite3_pcache,
        *mut ffi::sqlite3_pcache_page,
        c_uint,
        c_uint,
    ),
    truncate: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_uint),
    destroy: unsafe extern "C" fn(*mut ffi::sqlite3_pcache),
    shrink: unsafe extern "C" fn(*mut ffi::sqlite3_pcache),
}

static INNER: OnceLock<Inner> = OnceLock::new();

/// One cache: SQLite's, and the page numbers it may hold. SQLite calls a cache's methods
/// from one connection at a time, so `keys` needs no lock of its own.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    keys: Keys,
}

fn inner() -> &'static Inner {
    INNER.get().expect("installed before any cache is created")
}

/// # Safety
/// `p` is a cache made by [`create`] and not yet destroyed.
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a mut Cache {
    unsafe { &mut *(p as *mut Cache) }
}

unsafe extern "C" fn create(
    page: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let inner = unsafe { (self::inner().create)(page, extra, purgeable) };
    if inner.is_null() {
        return inner;
    }
    let keys = Keys::new(u32::try_from(page).unwrap_or(4096));
    Box::into_raw(Box::new(Cache { inner, keys })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn cachesize(p: *mut ffi::sqlite3_pcache, n: c_int) {
    unsafe { (inner().cachesize)(cache(p).inner, n) }
}

unsafe extern "C" fn pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    unsafe { (inner().pagecount)(cache(p).inner) }
}

unsafe extern "C" fn fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let c = unsafe { cache(p) };
    let page = unsafe { (inner().fetch)(c.inner, key, create) };
    if !page.is_null() {
        c.keys.cached(key);
    }
    page
}

unsafe extern "C" fn unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    unsafe { (inner().unpin)(cache(p).inner, page, discard) }
}

unsafe extern "C" fn rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let c = unsafe { cache(p) };
    unsafe { (inner().rekey)(c.inner, page, old, new) };
    c.keys.renumbered(old, new);
}

unsafe extern "C" fn truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let c = unsafe { cache(p) };
    if c.keys.truncate(limit) {
        unsafe { (inner().truncate)(c.inner, limit) }
    }
}

unsafe extern "C" fn destroy(p: *mut ffi::sqlite3_pcache) {
    let c = unsafe { Box::from_raw(p as *mut Cache) };
    unsafe { (inner().destroy)(c.inner) }
}

unsafe extern "C" fn shrink(p: *mut ffi::sqlite3_pcache) {
    unsafe { (inner().shrink)(cache(p).inner) }
}

/// Puts the wrapper in front of SQLite's page cache, for every connection opened after
/// it. Returns why not if SQLite is already in use (it then keeps its own cache).
pub fn install() -> Result<(), herd::error::Error> {
    let mut methods = std::mem::MaybeUninit::<ffi::sqlite3_pcache_methods2>::zeroed();
    // SAFETY: SQLITE_CONFIG_GETPCACHE2 fills the struct it is given.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, methods.as_mut_ptr()) };
    if rc != ffi::SQLITE_OK {
        return Err(herd::error::Error::Setup(format!(
            "SQLite is already in use (sqlite3_config: {rc})"
        )));
    }
    // SAFETY: filled by SQLite above.
    let mut methods = unsafe { methods.assume_init() };
    let missing = || herd::error::Error::Setup("SQLite's page cache lacks a method".into());
    let inner = Inner {
        create: methods.xCreate.ok_or_else(missing)?,
        cachesize: methods.xCachesize.ok_or_else(missing)?,
        pagecount: methods.xPagecount.ok_or_else(missing)?,
        fetch: methods.xFetch.ok_or_else(missing)?,
        unpin: methods.xUnpin.ok_or_else(missing)?,
        rekey: methods.xRekey.ok_or_else(missing)?,
        truncate: methods.xTruncate.ok_or_else(missing)?,
        destroy: methods.xDestroy.ok_or_else(missing)?,
        shrink: methods.xShrink.ok_or_else(missing)?,
    };
    if INNER.set(inner).is_err() {
        return Ok(());
    }
    methods.xCreate = Some(create);
    methods.xCachesize = Some(cachesize);
    methods.xPagecount = Some(pagecount);
    methods.xFetch = Some(fetch);
    methods.xUnpin = Some(unpin);
    methods.xRekey = Some(rekey);
    methods.xTruncate = Some(truncate);
    methods.xDestroy = Some(destroy);
    methods.xShrink = Some(shrink);
    // SAFETY: SQLite copies the struct; the functions above stay valid for the process.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE2, &methods as *const _) };
    if rc != ffi::SQLITE_OK {
        return Err(herd::error::Error::Setup(format!(
            "SQLite refused the page cache (sqlite3_config: {rc})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rebalance's swap through the lock-byte page leaves nothing to drop past the end
    /// of the database: the truncation that follows is skipped.
    #[test]
    fn a_swap_through_the_lock_byte_page_leaves_nothing_to_truncate() {
        let mut keys = Keys::new(4096);
        assert_eq!(keys.temp, 262_145);
        for page in 1..=1_000 {
            keys.cached(page);
        }
        // balance_nonroot: A -> temp, B -> A, temp -> B.
        keys.renumbered(700, 262_145);
        keys.renumbered(300, 700);
        keys.renumbered(262_145, 300);
        assert!(!keys.truncate(1_001), "nothing is cached past page 1,000");
        // Pages past the end (grown, then rolled back) are dropped.
        keys.cached(1_002);
        assert!(keys.truncate(1_001));
        assert!(!keys.truncate(1_001), "dropped already");
        // Everything (a reset), then nothing is left.
        assert!(keys.truncate(1));
        assert!(!keys.truncate(1));
    }

    /// A page still cached under the lock-byte number (a fetch of it) is dropped by any
    /// truncation below it, however small the rest of the cache.
    #[test]
    fn a_page_left_under_the_lock_byte_number_is_truncated() {
        let mut keys = Keys::new(4096);
        keys.cached(10);
        keys.cached(262_145);
        assert!(keys.truncate(11));
        assert!(!keys.truncate(11));
        keys.renumbered(10, 262_145);
        assert!(!keys.truncate(300_000), "past the lock-byte page: nothing");
        assert!(keys.truncate(5));
        // 64 KiB pages: the lock byte is page 16,385.
        assert_eq!(Keys::new(65_536).temp, 16_385);
    }
}
