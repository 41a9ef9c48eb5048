//! Telling a misspelt configuration variable from an unrelated one, for
//! the start-up warnings of both services (which share this crate, as they
//! share [`crate::listen_addr`]). Each service keeps its own list of names
//! in its `config`, read off the code by [`names_asked`]; this compares.
//!
//! A name is taken for a misspelling of one of ours when it is not ours
//! but within a small Damerau-Levenshtein distance of one, case ignored:
//! 1 edit for names under 8 characters, 2 for longer ones. So `PATH`,
//! `HOME` or an unrelated `APP_MODE` never match, and `METRIC_ADDR`,
//! `DATABSE_URL` or `log_level` do.

/// The names `read` asks its lookup for, each once, in the order asked.
/// Given a lookup that finds nothing, a service's configuration reader asks
/// for every variable it reads, so its list of names is that code itself
/// and cannot drift from it.
pub fn names_asked(read: impl FnOnce(&dyn Fn(&str) -> Option<String>)) -> Vec<String> {
    let asked = std::cell::RefCell::new(Vec::<String>::new());
    read(&|name| {
        let mut asked = asked.borrow_mut();
        if !asked.iter().any(|seen| seen == name) {
            asked.push(name.to_owned());
        }
        None
    });
    asked.into_inner()
}

/// The name of `known` that `name` most likely misspells, if any; `None`
/// for a name that is one of `known` exactly.
pub fn meant<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    if known.contains(&name) {
        return None;
    }
    let upper = name.to_ascii_uppercase();
    known
        .iter()
        .map(|candidate| {
            (
                distance(&upper, &candidate.to_ascii_uppercase()),
                *candidate,
            )
        })
        .filter(|(edits, candidate)| *edits <= allowed_edits(candidate))
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, candidate)| candidate)
}

fn allowed_edits(name: &str) -> usize {
    if name.chars().count() < 8 {
        1
    } else {
        2
    }
}

/// Edits (insertion, deletion, substitution, swap of neighbours) from `a`
/// to `b`: the optimal string alignment distance.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: edits from a[..i] to b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &[&str] = &[
        "DATABASE_URL",
        "DB_HOST",
        "DB_PORT",
        "DB_USER",
        "DB_NAME",
        "DB_PASSWORD",
        "METRICS_ADDR",
        "SOURCE_SERVICE_URL",
        "SYNC_INTERVAL",
        "LOG_LEVEL",
        "WRITER_THREADS",
    ];

    #[test]
    fn distances_count_each_edit_once() {
        assert_eq!(distance("METRICS_ADDR", "METRICS_ADDR"), 0);
        assert_eq!(distance("METRIC_ADDR", "METRICS_ADDR"), 1);
        assert_eq!(distance("DATABSE_URL", "DATABASE_URL"), 1);
        assert_eq!(distance("DATABAES_URL", "DATABASE_URL"), 1, "a swap");
        assert_eq!(distance("DB_HSOT", "DB_HOST"), 1, "a swap");
        assert_eq!(distance("", "ABC"), 3);
        assert_eq!(distance("SYNC_INTREVALL", "SYNC_INTERVAL"), 2);
    }

    #[test]
    fn likely_misspellings_of_ours_are_found() {
        for (typo, ours) in [
            ("METRIC_ADDR", "METRICS_ADDR"),
            ("DATABSE_URL", "DATABASE_URL"),
            ("DATABASE_URI", "DATABASE_URL"),
            ("DB_HSOT", "DB_HOST"),
            ("DB_PORTS", "DB_PORT"),
            ("log_level", "LOG_LEVEL"),
            ("LOGLEVEL", "LOG_LEVEL"),
            ("SYNC_INTERVALS", "SYNC_INTERVAL"),
            ("SOURCE_SERVCE_URL", "SOURCE_SERVICE_URL"),
            ("WRITER_THREAD", "WRITER_THREADS"),
        ] {
            assert_eq!(meant(typo, OURS), Some(ours), "{typo}");
        }
    }

    #[test]
    fn our_own_names_and_unrelated_ones_are_left_alone() {
        for name in [
            "DATABASE_URL",
            "PATH",
            "HOME",
            "USER",
            "SHELL",
            "TERM",
            "LANG",
            "PWD",
            "HOSTNAME",
            "LOGNAME",
            "RUST_LOG",
            "PGHOST",
            "PGPORT",
            "TEST_DATABASE_URL",
            "APP_MODE",
            "DB",
        ] {
            assert_eq!(meant(name, OURS), None, "{name}");
        }
    }
}
