//! Seeded demo case databases (schema/cases.sql), made with the library's
//! generator.

use case_export::seed::{SeedOptions, seed_demo};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// Small enough to seed in a fraction of a second, big enough that every
/// table of every case has rows and some evidence links cross cases.
pub fn small_seed() -> SeedOptions {
    SeedOptions {
        cases: 4,
        rows_per_case: 60,
        seed: 7,
        tenants: vec!["north".into(), "south".into()],
    }
}

/// [`small_seed`] with `cases` cases of `rows_per_case` transactions.
pub fn seed_of(cases: u32, rows_per_case: u32) -> SeedOptions {
    SeedOptions {
        cases,
        rows_per_case,
        ..small_seed()
    }
}

/// A seeded demo case database, `cases.db` in its own temporary directory
/// (which the test may use for anything else: configs, trails, exports).
pub struct SeededDb {
    pub dir: TempDir,
    pub path: PathBuf,
    /// Case ids in generation order (which the seed fixes).
    pub case_ids: Vec<String>,
    /// The tenant of each case of `case_ids`.
    pub tenants: Vec<String>,
}

impl SeededDb {
    /// The first case of tenant `t`.
    #[track_caller]
    pub fn case_of_tenant(&self, t: &str) -> String {
        self.tenants
            .iter()
            .position(|tenant| tenant == t)
            .map(|i| self.case_ids[i].clone())
            .unwrap_or_else(|| panic!("the seed gives no case of tenant {t}: {:?}", self.tenants))
    }
}

/// Seeds `cases.db` in a fresh temporary directory.
#[track_caller]
pub fn seeded_db(opts: &SeedOptions) -> SeededDb {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("cases.db");
    let report = seed_demo(&path, opts).expect("seed demo database");
    assert_eq!(report.case_ids.len(), opts.cases as usize);
    let stored = cases_of(&path);
    let tenants = report
        .case_ids
        .iter()
        .map(|id| {
            stored
                .iter()
                .find(|(stored_id, _)| stored_id == id)
                .map(|(_, tenant)| tenant.clone())
                .unwrap_or_else(|| panic!("case {id} is not in the seeded database"))
        })
        .collect();
    SeededDb {
        dir,
        path,
        case_ids: report.case_ids,
        tenants,
    }
}

/// `(id, tenant)` of every case of a demo database, by case number.
#[track_caller]
pub fn cases_of(db: &Path) -> Vec<(String, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    conn.prepare("SELECT id, tenant FROM cases ORDER BY case_number")
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap_or_else(|e| panic!("read the cases of {}: {e}", db.display()))
}

/// Cases of ~360 KiB: about 90 chunks of 4 KiB, far more than a 64 KiB
/// window and a short channel hold, so a reader that stops stalls the
/// server's producer (with [`super::stall_prone`]).
pub fn big_seed() -> SeedOptions {
    SeedOptions {
        rows_per_case: 400,
        ..small_seed()
    }
}
