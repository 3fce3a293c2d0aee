//! Connecting: the DSN, TLS through rustls, and errors that say what to fix, each provoked
//! against the real server.

use flopmeter_pg::test_support::{SUPERUSER_PASSWORD, shared};
use flopmeter_pg::{CertificateProblem, Database, Dsn, DsnError, PgError, SslMode};

use crate::{fresh, options};

fn connect_err(dsn: &str) -> PgError {
    Database::connect(options(dsn)).expect_err("the connection must be refused")
}

fn is_tls(db: &Database) -> bool {
    db.run(|conn| async move {
        let row = conn
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok::<bool, PgError>(row.get(0))
    })
    .unwrap()
}

#[test]
fn dsn_as_operators_write_it_and_never_shown_with_its_password() {
    let dsn = Dsn::parse(
        "postgres://flop:s3cr%3Ft@db.example:6432/ledger?sslmode=verify-full\
         &sslrootcert=/etc/flopmeter/pg-ca.pem&application_name=collector-a",
    )
    .unwrap();
    assert_eq!(dsn.ssl_mode(), SslMode::VerifyFull);
    assert_eq!(dsn.user(), "flop");
    assert_eq!(dsn.database(), "ledger");
    assert_eq!(dsn.target(), "db.example:6432");
    assert_eq!(dsn.config().get_password(), Some(&b"s3cr?t"[..]));
    let shown = format!("{dsn} {dsn:?}");
    assert!(!shown.contains("s3cr"), "{shown}");
    assert!(shown.contains("postgres://flop:***@db.example:6432/ledger?sslmode=verify-full"));
    // libpq: require with a CA file checks the chain.
    let d = Dsn::parse("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
    assert_eq!(d.ssl_mode(), SslMode::VerifyCa);

    let err = |s: &str| Dsn::parse(s).unwrap_err();
    assert!(matches!(err("host=db user=u"), DsnError::NotUrl));
    assert!(matches!(
        err("postgres://u:pw@h/db?sslmode=verify_full"),
        DsnError::SslMode { .. }
    ));
    assert!(matches!(
        err("postgres://u:pw@h/db?sslcert=/c.pem"),
        DsnError::Unsupported { .. }
    ));
    assert!(matches!(err("postgres:///db"), DsnError::NoHost));
    // An unencoded `?` in the password: the message explains, and shows no part of it.
    let e = err("postgres://u:pa?ss@h/db");
    assert!(matches!(e, DsnError::Parameter), "{e:?}");
    assert!(!e.to_string().contains("ss@h"), "{e}");
}

#[test]
fn wrong_password_missing_database_and_unreachable_host_say_what_to_fix() {
    let db = fresh();
    let port = shared().port();

    let dsn = format!(
        "postgres://postgres:wrong-pw@localhost:{port}/{}?sslmode=disable",
        db.name
    );
    let e = connect_err(&dsn);
    assert!(matches!(e, PgError::Authentication { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("Check the user and password"), "{msg}");
    assert!(
        !msg.contains("wrong-pw"),
        "the password must not be shown: {msg}"
    );
    assert!(
        std::error::Error::source(&e).is_some(),
        "the source is kept"
    );

    let dsn = format!(
        "postgres://postgres:{SUPERUSER_PASSWORD}@localhost:{port}/no_such_db?sslmode=disable"
    );
    let e = connect_err(&dsn);
    assert!(matches!(e, PgError::NoDatabase { .. }), "{e:?}");
    assert!(
        e.to_string().contains("\"no_such_db\" does not exist"),
        "{e}"
    );

    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap().port();
    drop(free);
    let e = connect_err(&format!(
        "postgres://postgres:pw@127.0.0.1:{dead}/x?sslmode=disable"
    ));
    assert!(matches!(e, PgError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{dead}")), "{e}");
    assert!(e.is_transient());
}

#[test]
fn no_connection_slot_left_is_named() {
    let db = fresh();
    let server = shared();
    let role = format!("limited_{}", db.name);
    server.admin(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw' CONNECTION LIMIT 1; \
         GRANT ALL ON DATABASE {} TO {role}",
        db.name
    ));
    let dsn = format!(
        "postgres://{role}:pw@localhost:{}/{}?sslmode=disable",
        server.port(),
        db.name
    );
    // The first keeps its connection in its pool; the second finds no slot.
    let first = Database::connect(options(&dsn)).unwrap();
    let e = connect_err(&dsn);
    assert!(matches!(e, PgError::TooManyConnections { .. }), "{e:?}");
    assert!(e.to_string().contains("CONNECTION LIMIT"), "{e}");
    drop(first);
}

#[test]
fn verify_full_connects_over_tls_with_the_servers_ca() {
    let db = fresh();
    let conn = Database::connect(options(&db.tcp_dsn("localhost", "verify-full"))).unwrap();
    assert!(is_tls(&conn), "the session must be encrypted");
    // verify-ca checks the chain only: connecting by address, which the certificate does not
    // name, is accepted.
    let conn = Database::connect(options(&db.tcp_dsn("127.0.0.1", "verify-ca"))).unwrap();
    assert!(is_tls(&conn));
}

#[test]
fn verify_full_refuses_an_untrusted_certificate_and_a_wrong_name() {
    let db = fresh();
    // Another CA than the one that signed the server's certificate.
    let other = flopmeter_tls::dev::DevCa::generate(30).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, &other.cert_pem).unwrap();
    let mut o = options(&db.tcp_dsn("localhost", "verify-full"));
    o.ca_file = Some(other_ca);
    let e = Database::connect(o).unwrap_err();
    assert!(
        matches!(
            e,
            PgError::CertificateNotTrusted {
                problem: CertificateProblem::UnknownIssuer,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("not signed by a CA this client trusts"),
        "{e}"
    );

    // The right CA, but the certificate names `localhost`, not 127.0.0.1.
    let e = connect_err(&db.tcp_dsn("127.0.0.1", "verify-full"));
    assert!(
        matches!(
            e,
            PgError::CertificateNotTrusted {
                problem: CertificateProblem::WrongName,
                ..
            }
        ),
        "{e:?}"
    );
    // A CA file that does not exist is a setup error that names the option.
    let mut o = options(&db.tcp_dsn("localhost", "verify-full"));
    o.ca_file = Some(dir.path().join("missing.pem"));
    let e = Database::connect(o).unwrap_err();
    assert!(matches!(e, PgError::TlsSetup(_)), "{e:?}");
    assert!(e.to_string().contains("sslrootcert"), "{e}");
}

#[test]
fn tls_required_where_the_server_offers_none_is_refused() {
    // PostgreSQL never offers TLS on a Unix socket: the server itself answers "no".
    let db = fresh();
    let dsn = format!("{}?sslmode=require", db.socket_dsn());
    let e = connect_err(&dsn);
    assert!(matches!(e, PgError::TlsRefused { .. }), "{e:?}");
    assert!(e.to_string().contains("does not offer TLS"), "{e}");
    // prefer falls back to plaintext there, as libpq does.
    let conn = Database::connect(options(&format!("{}?sslmode=prefer", db.socket_dsn()))).unwrap();
    assert!(!is_tls(&conn));
}
