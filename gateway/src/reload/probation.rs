//! `gateway.reload.probation`: after a reload that changed devices, the
//! devices that ran before and after it (kept and changed ones) are watched;
//! if fewer of them are online at the end of the probation than just before
//! the reload, the previous config comes back. [`judge`] is the decision,
//! free of I/O; the daemon takes the two pictures and acts on the verdict.

use std::collections::BTreeMap;

/// Whether each watched device is online (`fieldgate_device_up` = 1), by name.
pub(crate) type Online = BTreeMap<String, bool>;

/// How many names a rollback reason lists at most.
const NAMES_SHOWN: usize = 10;

/// The outcome of a probation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The new config stays.
    Keep,
    /// The previous config comes back, for `reason`.
    RollBack {
        /// Why, for the log and `G/$health`.
        reason: String,
    },
}

/// Judges a probation: `before` is the picture taken just before the reload
/// (the kept and changed devices), `after` the one at the end of the
/// probation (a device missing from `after` counts as offline). Rolls back
/// when fewer are online after than before.
pub(crate) fn judge(before: &Online, after: &Online) -> Verdict {
    let online_before = before.values().filter(|up| **up).count();
    let online_after = before
        .keys()
        .filter(|name| after.get(*name).copied().unwrap_or(false))
        .count();
    if online_after >= online_before {
        return Verdict::Keep;
    }
    let lost: Vec<&str> = before
        .iter()
        .filter(|(name, up)| **up && !after.get(*name).copied().unwrap_or(false))
        .map(|(name, _)| name.as_str())
        .collect();
    let mut names = lost
        .iter()
        .take(NAMES_SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if lost.len() > NAMES_SHOWN {
        names.push_str(&format!(" and {} more", lost.len() - NAMES_SHOWN));
    }
    Verdict::RollBack {
        reason: format!(
            "{online_after} of {} kept and changed devices online at the end of the probation, \
             {online_before} before the reload; offline now: {names}",
            before.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(pairs: &[(&str, bool)]) -> Online {
        pairs.iter().map(|(n, up)| (n.to_string(), *up)).collect()
    }

    #[test]
    fn as_many_online_keeps_the_new_config() {
        let before = online(&[("a", true), ("b", false)]);
        assert_eq!(judge(&before, &before), Verdict::Keep);
    }

    #[test]
    fn more_online_keeps_the_new_config() {
        let before = online(&[("a", true), ("b", false)]);
        let after = online(&[("a", true), ("b", true)]);
        assert_eq!(judge(&before, &after), Verdict::Keep);
    }

    #[test]
    fn one_fewer_online_rolls_back_and_names_it() {
        let before = online(&[("a", true), ("plc", true)]);
        let after = online(&[("a", true), ("plc", false)]);
        let Verdict::RollBack { reason } = judge(&before, &after) else {
            panic!("expected a rollback");
        };
        assert!(
            reason.starts_with("1 of 2 kept and changed devices online"),
            "{reason}"
        );
        assert!(reason.contains("2 before the reload"), "{reason}");
        assert!(reason.ends_with("offline now: plc"), "{reason}");
    }

    #[test]
    fn a_swap_of_which_device_is_online_keeps_the_count_and_the_config() {
        let before = online(&[("a", true), ("b", false)]);
        let after = online(&[("a", false), ("b", true)]);
        assert_eq!(judge(&before, &after), Verdict::Keep);
    }

    #[test]
    fn a_device_missing_at_the_end_counts_as_offline() {
        let before = online(&[("a", true)]);
        assert!(matches!(
            judge(&before, &Online::new()),
            Verdict::RollBack { .. }
        ));
    }

    #[test]
    fn devices_not_watched_do_not_count() {
        // A device added by the reload (not in `before`) coming online does
        // not make up for a kept one going offline.
        let before = online(&[("a", true)]);
        let after = online(&[("a", false), ("added", true)]);
        assert!(matches!(judge(&before, &after), Verdict::RollBack { .. }));
    }

    #[test]
    fn nothing_watched_keeps() {
        assert_eq!(judge(&Online::new(), &Online::new()), Verdict::Keep);
    }

    #[test]
    fn a_long_list_of_names_is_cut() {
        let names: Vec<String> = (0..15).map(|i| format!("d{i:02}")).collect();
        let before: Online = names.iter().map(|n| (n.clone(), true)).collect();
        let Verdict::RollBack { reason } = judge(&before, &Online::new()) else {
            panic!("expected a rollback");
        };
        assert!(reason.ends_with("d09 and 5 more"), "{reason}");
    }
}
