//! The cluster's bootstrap tokens, on a PostgreSQL store. Each master has its own admin and
//! join tokens (given, or made in its data dir); the store names the cluster's (as SHA-256
//! hashes, setting [`crate::store::CLUSTER_TOKENS`]: `v1 ADMIN JOIN`, each in hex), and every master that leads accepts those besides its own.
//! So herdctl, the dashboard and workers holding the tokens of the master they first met
//! keep working after a fail-over to a master that was given, or made, other ones.
//!
//! The first master to lead stores its tokens as the cluster's. A token given explicitly
//! (`--token`, `--join-token`, their variables or the config file) replaces the cluster's
//! when its master leads: that is how they are rotated. One read from the data dir or made
//! there never replaces the cluster's; its master accepts both, and says so.

use tracing::{info, warn};

use herd::auth::hex;

use crate::records::SecretHash;
use crate::store::{CLUSTER_TOKENS, Change, Store};

/// A master's bootstrap tokens, as hashes, and whether each was given explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bootstrap {
    pub admin: SecretHash,
    pub join: SecretHash,
    pub admin_given: bool,
    pub join_given: bool,
}

/// What a master that takes the lead does with the cluster's tokens.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    /// The cluster's admin token, accepted besides this master's own (when they differ).
    pub admin: Option<SecretHash>,
    /// The cluster's join token, likewise.
    pub join: Option<SecretHash>,
    /// The value to store as the setting, when it changes.
    pub store: Option<String>,
    /// What the operator should hear about.
    pub notes: Vec<String>,
}

/// What the master with tokens `own` does, finding `stored` in the store.
pub fn adopt(own: Bootstrap, stored: Option<&str>) -> Adopted {
    let stored = stored.and_then(parse);
    let mut out = Adopted::default();
    let (admin, admin_kept) = pick(own.admin, own.admin_given, stored.map(|s| s.0));
    let (join, join_kept) = pick(own.join, own.join_given, stored.map(|s| s.1));
    if admin_kept {
        out.admin = Some(admin);
        out.notes
            .push(not_the_clusters("admin token", "token", "--token"));
    }
    if join_kept {
        out.join = Some(join);
        out.notes
            .push(not_the_clusters("join token", "join-token", "--join-token"));
    }
    if stored != Some((admin, join)) {
        out.store = Some(render(admin, join));
        if stored.is_some() {
            out.notes.push(
                "the tokens given to this master replace the cluster's: clients and workers \
                 holding the old ones must be given these"
                    .into(),
            );
        }
    }
    out
}

/// What a master that takes the lead with tokens `own` does, finding `stored` in the
/// store: says what the operator should hear, stores the cluster's tokens when they change,
/// and returns the cluster's tokens it accepts besides its own. A store that cannot take
/// the change now leaves the cluster's as they were (the next leader tries again).
pub async fn share(own: Bootstrap, stored: Option<&str>, store: &Store) -> Adopted {
    let adopted = adopt(own, stored);
    for note in &adopted.notes {
        warn!("{note}");
    }
    if let Some(value) = &adopted.store {
        let change = Change::Setting {
            key: CLUSTER_TOKENS.into(),
            value: value.clone(),
        };
        match store.commit(change).await {
            Ok(()) => info!("this master's bootstrap tokens are the cluster's now"),
            Err(err) => warn!(%err, "cannot store the cluster's bootstrap tokens"),
        }
    }
    adopted
}

/// What a master hears when its own `what` (from `<data-dir>/<file>`) is not the cluster's.
fn not_the_clusters(what: &str, file: &str, flag: &str) -> String {
    format!(
        "this master's {what} (<data-dir>/{file}) is not the cluster's: both are accepted \
         here, but only the cluster's on every master; give every master the same {flag}, or \
         {flag} here to make it the cluster's"
    )
}

/// The cluster's token of one kind, and whether it stays one this master does not hold.
fn pick(own: SecretHash, given: bool, stored: Option<SecretHash>) -> (SecretHash, bool) {
    match stored {
        Some(stored) if stored != own && !given => (stored, true),
        _ => (own, false),
    }
}

fn render(admin: SecretHash, join: SecretHash) -> String {
    format!("v1 {} {}", hex(&admin), hex(&join))
}

/// The two hashes of a stored value; `None` for one this master cannot read (it is
/// replaced).
fn parse(value: &str) -> Option<(SecretHash, SecretHash)> {
    let mut words = value.split_whitespace();
    if words.next()? != "v1" {
        return None;
    }
    let admin = unhex(words.next()?)?;
    let join = unhex(words.next()?)?;
    words.next().is_none().then_some((admin, join))
}

fn unhex(text: &str) -> Option<SecretHash> {
    let mut out = SecretHash::default();
    if text.len() != 2 * out.len() || !text.is_ascii() {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::digest;

    fn own(admin: &str, join: &str, given: bool) -> Bootstrap {
        Bootstrap {
            admin: digest(admin),
            join: digest(join),
            admin_given: given,
            join_given: given,
        }
    }

    #[test]
    fn the_first_leader_stores_its_tokens_and_accepts_nothing_else() {
        let adopted = adopt(own("a", "j", false), None);
        assert_eq!(adopted.admin, None);
        assert_eq!(adopted.join, None);
        let stored = adopted.store.expect("stored");
        assert_eq!(parse(&stored), Some((digest("a"), digest("j"))));
        assert!(adopted.notes.is_empty());
        // The next leader with the same tokens changes nothing.
        assert_eq!(
            adopt(own("a", "j", true), Some(&stored)),
            Adopted::default()
        );
    }

    #[test]
    fn a_leader_with_tokens_of_its_own_data_dir_accepts_the_clusters_too_and_keeps_them() {
        let stored = render(digest("a"), digest("j"));
        let adopted = adopt(own("b", "k", false), Some(&stored));
        assert_eq!(adopted.admin, Some(digest("a")));
        assert_eq!(adopted.join, Some(digest("j")));
        assert_eq!(adopted.store, None, "the cluster's stay");
        assert_eq!(adopted.notes.len(), 2, "{:?}", adopted.notes);
    }

    #[test]
    fn tokens_given_explicitly_replace_the_clusters() {
        let stored = render(digest("a"), digest("j"));
        let adopted = adopt(own("b", "k", true), Some(&stored));
        assert_eq!((adopted.admin, adopted.join), (None, None));
        assert_eq!(
            adopted.store.as_deref().and_then(parse),
            Some((digest("b"), digest("k")))
        );
        assert!(adopted.notes[0].contains("replace the cluster's"));
    }

    #[test]
    fn a_value_this_master_cannot_read_is_replaced() {
        for bad in [
            "",
            "v2 00 11",
            "v1 zz 11",
            "v1 00",
            &format!("{} x", render(digest("a"), digest("j"))),
        ] {
            let adopted = adopt(own("a", "j", false), Some(bad));
            assert_eq!(adopted.admin, None, "{bad}");
            assert!(adopted.store.is_some(), "{bad}");
        }
    }
}
