//! One demo case exported from SQLite and from PostgreSQL, both seeded with
//! the same options: the two snapshots hold the same tables, the same row
//! counts, the same tenant and the same rows, value by value (type
//! included), through the type mapping of docs/SNAPSHOT.md.

use crate::support::{PgDb, query_rows, seeded_db, small_seed, within};
use case_export::db::PgUrl;
use case_export::seal::ExportId;
use case_export::snapshot::{
    CaseRequest, PgSource, PgSourceOptions, ScopeConfig, Snapshot, SnapshotView, build_snapshot,
};
use std::time::Duration;

fn view(snap: &mut Snapshot) -> SnapshotView {
    snap.with_bytes(SnapshotView::open)
        .expect("serialize")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_case_from_sqlite_and_from_postgres_holds_the_same_rows() {
    let Some(db) = PgDb::create("compare").await else {
        return;
    };
    let opts = small_seed();
    let seeded = seeded_db(&opts);
    let connector = PgUrl::parse(&db.url)
        .expect("url")
        .connector(None, Duration::from_secs(10), "case-export-test")
        .expect("connector");
    case_export::seed::seed_postgres(&connector, &opts)
        .await
        .expect("seed PostgreSQL");
    // The least privilege the docs give the service: SELECT on the tables.
    // Every table but the excluded `users`.
    let tables: Vec<&str> = case_export::seed::TABLES
        .into_iter()
        .filter(|t| *t != "users")
        .collect();
    let reader = db.reader("reader", &tables).await;
    let source = PgSource::new(
        &PgUrl::parse(&reader)
            .expect("url")
            .connector(None, Duration::from_secs(10), "case-export-test")
            .expect("connector"),
        1,
        PgSourceOptions {
            schema: "public".into(),
            statement_timeout: Duration::from_secs(60),
        },
    );
    for case_id in &seeded.case_ids[..3] {
        let req = CaseRequest {
            case_id: case_id.clone(),
            scope: ScopeConfig::default(),
            export_id: ExportId([9; 16]),
            created_at: "2025-03-14T09:26:53Z".into(),
            max_bytes: 1 << 30,
            busy_timeout: Duration::from_secs(5),
            tenant_column: Some("tenant".into()),
            allowed_tenants: None,
        };
        let path = seeded.path.clone();
        let r = req.clone();
        let mut lite = tokio::task::spawn_blocking(move || build_snapshot(&path, &r.borrowed()))
            .await
            .expect("join")
            .expect("SQLite build");
        let mut pg = within(
            "a PostgreSQL build",
            Duration::from_secs(60),
            source.build(&req.borrowed()),
        )
        .await
        .expect("PostgreSQL build");
        assert_eq!(lite.row_counts, pg.row_counts, "case {case_id}");
        assert_eq!(lite.tenant, pg.tenant, "case {case_id}");
        assert!(lite.row_counts.iter().all(|(_, n)| *n > 0));
        let (lv, pv) = (view(&mut lite), view(&mut pg));
        for (table, n) in &lite.row_counts {
            // Every demo table's first column is its key.
            let q = format!("SELECT * FROM \"{table}\" ORDER BY 1");
            let a = query_rows(lv.connection(), &q, []);
            let b = query_rows(pv.connection(), &q, []);
            assert_eq!(a.len() as u64, *n, "{table}");
            assert_eq!(a, b, "table {table} of case {case_id}");
        }
    }
}
